//! The `signpost` command: parse the command line, run, map errors to exit codes.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::info;
use tracing_subscriber::EnvFilter;

use signpost::api::client;
use signpost::app;
use signpost::config::{Cli, Command, Config};
use signpost::sources::zone_file as zone;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            init_logging();
            let config = match Config::for_serve(&args) {
                Ok(c) => c,
                Err(e) => return fail(&e),
            };
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(config.threads)
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => return fail(&e),
            };
            match runtime.block_on(serve(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&e),
            }
        }
        Command::Check(args) => {
            let dir = match Config::zones_for_check(&args) {
                Ok(d) => d,
                Err(e) => return fail(&e),
            };
            check(&dir)
        }
        Command::Register(args) => client::register(args),
        Command::Deregister(args) => client::deregister(args),
        Command::Heartbeat(args) => client::heartbeat(args),
        Command::List(args) => client::list(args),
        Command::Status(args) => client::status(args),
        Command::Run(args) => signpost::api::run::run(args),
    }
}

async fn serve(config: Config) -> Result<(), app::ServeError> {
    let shutdown = CancellationToken::new();
    // Handlers are installed before anything is bound, so a signal sent as
    // soon as the server listens is never met by the default action.
    let term = signal(SignalKind::terminate()).map_err(app::ServeError::Io)?;
    let int = signal(SignalKind::interrupt()).map_err(app::ServeError::Io)?;
    tokio::spawn(stop_on_signal(term, int, shutdown.clone()));
    app::serve(config, shutdown).await?;
    info!("stopped");
    Ok(())
}

/// Cancels `shutdown` on SIGINT or SIGTERM.
async fn stop_on_signal(mut term: Signal, mut int: Signal, shutdown: CancellationToken) {
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    info!("shutting down");
    shutdown.cancel();
}

/// `signpost check`: every problem on its own line, like named-checkzone.
fn check(dir: &std::path::Path) -> ExitCode {
    let loaded = match zone::load_dir(dir) {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "signpost: cannot read zones directory {}: {e}",
                dir.display()
            );
            return ExitCode::from(2);
        }
    };
    // Every file listed gives a zone or an error: with neither, a misnamed
    // file or a wrong --zones would otherwise pass as a clean check.
    if loaded.zones.is_empty() && loaded.errors.is_empty() {
        eprintln!(
            "signpost: no zone file found in {} (zone files end in .toml)",
            dir.display()
        );
        return ExitCode::FAILURE;
    }
    for problem in &loaded.errors {
        eprintln!("{problem}");
    }
    for (path, zone) in &loaded.zones {
        println!("{}: zone {} OK", path.display(), zone.apex.to_ascii());
    }
    if loaded.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

fn fail(error: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("signpost: {error}");
    ExitCode::from(2)
}
