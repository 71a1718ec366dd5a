//! The metrics endpoint: `GET /metrics` in the Prometheus text format and
//! `GET /health` (200 while the server serves), over HTTP/1.1 with hyper.
//!
//! A scrape asks the registry's writer for its status, like `signpost
//! status` does, and folds the query counters: nothing is kept up to date
//! for the endpoint's sake.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::metrics::{self, Scrape};
use crate::net::forward::Forwarder;
use crate::registry::writer::{Command, WriterHandle};

/// Longest wait for the registry's status: a writer busy with a large zone
/// still lets the query counters be scraped.
const STATUS_TIMEOUT: Duration = Duration::from_secs(5);

/// A scraper that sends nothing for this long is disconnected.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The endpoint's listener, bound before anything is loaded so that a busy
/// address stops the start.
pub struct MetricsListener {
    listener: std::net::TcpListener,
    /// The address actually bound (port 0 resolved).
    pub addr: SocketAddr,
}

/// Binds the endpoint's address.
pub fn bind(addr: SocketAddr) -> io::Result<MetricsListener> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    Ok(MetricsListener { listener, addr })
}

/// What a scrape reads.
#[derive(Clone)]
pub struct Sources {
    /// The registry's writer, asked for its status.
    pub writer: WriterHandle,
    /// The forwarder, for its cache size.
    pub forwarder: Option<Arc<Forwarder>>,
}

/// Serves the endpoint until `shutdown`.
pub async fn run(
    listener: MetricsListener,
    sources: Sources,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let listener = TcpListener::from_std(listener.listener)?;
    info!(addr = %listener.local_addr()?, "serving metrics on HTTP");
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(error) => {
                    warn!(%error, "metrics endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => return Ok(()),
        };
        let sources = sources.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let sources = sources.clone();
                async move { Ok::<_, Infallible>(handle(request, &sources).await) }
            });
            let connection = http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                result = connection => {
                    if let Err(error) = result {
                        debug!(%error, %peer, "metrics connection ended");
                    }
                }
                () = shutdown.cancelled() => {}
            }
        });
    }
}

async fn handle(request: Request<Incoming>, sources: &Sources) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, body: String, content_type: &'static str| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        response
    };
    const PLAIN: &str = "text/plain; charset=utf-8";
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into(), PLAIN);
    }
    match request.uri().path() {
        "/metrics" => {
            let scrape = Scrape {
                status: status(&sources.writer).await,
                forward_cache_entries: sources.forwarder.as_ref().map(|f| f.cache_entries()),
            };
            let body = metrics::render(scrape);
            text(
                StatusCode::OK,
                body,
                prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            )
        }
        // Served only while the DNS sockets are: the endpoint stops with them.
        "/health" => text(StatusCode::OK, "ok\n".into(), PLAIN),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics or /health\n".into(),
            PLAIN,
        ),
    }
}

async fn status(writer: &WriterHandle) -> Option<crate::registry::writer::Status> {
    let (reply, rx) = oneshot::channel();
    writer.send(Command::Status { reply }).ok()?;
    tokio::time::timeout(STATUS_TIMEOUT, rx).await.ok()?.ok()
}
