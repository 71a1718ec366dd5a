//! Readiness for service managers: systemd's notify protocol (`Type=notify`).
//!
//! READY=1 is sent once the zones are loaded and every socket is bound, so
//! units ordered after signpost start when names resolve; STATUS= lines say
//! what the server is doing; WATCHDOG=1 pings come from the runtime that
//! answers queries, so a wedged runtime stops them and systemd restarts the
//! server. Without NOTIFY_SOCKET in the environment each call does nothing.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;
use tracing::debug;

/// Sends `states`; a failure is logged and otherwise ignored: a service
/// manager that cannot be told is no reason to stop serving.
fn notify(states: &[NotifyState]) {
    if let Err(error) = sd_notify::notify(states) {
        debug!(%error, "cannot notify the service manager");
    }
}

/// Tells the service manager what the server is doing.
pub fn status(text: &str) {
    notify(&[NotifyState::Status(text)]);
}

/// Tells the service manager the server is ready, with a status line.
pub fn ready(text: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(text)]);
}

/// Tells the service manager the server is stopping.
pub fn stopping() {
    notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// The watchdog interval the service manager asks for (`WatchdogSec=`), if any.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().filter(|d| !d.is_zero())
}

/// Pings the watchdog at half its interval until `shutdown`.
pub async fn watchdog(interval: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(interval / 2);
    loop {
        tokio::select! {
            _ = tick.tick() => notify(&[NotifyState::Watchdog]),
            () = shutdown.cancelled() => return,
        }
    }
}
