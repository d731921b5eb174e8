//! Serving a router over HTTP/1.1 with the limits an edge facing hostile clients needs: a listen
//! backlog deep enough for a flash sale's burst of connects; a cap on open connections below the
//! file limit (past it a new connection is closed at once and counted, and `accept` never
//! stalls); a time limit on each request's head, from the connection's start or the head's first
//! byte; an idle timeout between requests; a size limit on the head (431 past it); and the
//! requests hyper itself refuses (400, 414, 431) counted like every other answer.
//!
//! hyper's own header-read timeout also runs while a keep-alive connection waits for its next
//! request, so one setting would close idle connections as soon as slow heads: each connection
//! has a watchdog instead, which knows which of the two it is waiting for.

use std::{
    convert::Infallible,
    io,
    net::SocketAddr,
    pin::{Pin, pin},
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU8, AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use axum::{Router, body::Body, extract::Request};
use hyper::{body::Incoming, server::conn::http1};
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics::{counter, gauge};
use pin_project_lite::pin_project;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tower::ServiceExt;

use crate::telemetry::metrics::{
    HTTP_CONNECTIONS_CLOSED, HTTP_CONNECTIONS_OPEN, HTTP_CONNECTIONS_REFUSED, HTTP_REQUESTS,
};

/// The edge's limits.
#[derive(Debug, Clone, Copy)]
pub struct EdgeSettings {
    /// Connections the kernel queues for `accept`.
    pub backlog: u32,
    /// Connections open at once; past it new ones are closed at once.
    pub max_connections: usize,
    /// Longest wait for a request's head: from the connection's start for the first request,
    /// from the head's first byte for the next ones.
    pub header_read_timeout: Duration,
    /// Longest wait between a response and the next request's first byte.
    pub idle_timeout: Duration,
    /// Largest request head (request line and headers).
    pub max_head_bytes: usize,
}

/// Binds `address` with a listen backlog of `backlog` (the kernel caps it at `somaxconn`).
pub fn bind(address: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(address),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    TcpListener::from_std(socket.into())
}

/// Raises the soft limit on open files to the hard limit; returns both as they are then.
pub fn raise_file_limit() -> io::Result<(u64, u64)> {
    let (soft, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE)?;
    if soft < hard {
        rlimit::setrlimit(rlimit::Resource::NOFILE, hard, hard)?;
    }
    rlimit::getrlimit(rlimit::Resource::NOFILE)
}

/// Serves `router` on `listener` until `stop`; then stops accepting, lets every connection
/// finish the request it is on, and returns when all have closed.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    settings: EdgeSettings,
    stop: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(settings.max_connections));
    let connections = TaskTracker::new();
    loop {
        let stream = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                // A connection reset or aborted while queued: only that one is lost.
                Err(error) if !is_exhaustion(&error) => continue,
                Err(error) => {
                    // Out of file descriptors or memory: pause rather than spin.
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            counter!(HTTP_CONNECTIONS_REFUSED).increment(1);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let connection = Connection {
            router: router.clone(),
            settings,
            stop: stop.clone(),
            _permit: permit,
        };
        connections.spawn(connection.run(stream));
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// Whether an `accept` error is the process or the system out of something (EMFILE, ENFILE,
/// ENOBUFS, ENOMEM), rather than about the one connection.
fn is_exhaustion(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// One accepted connection and what it needs.
struct Connection {
    router: Router,
    settings: EdgeSettings,
    stop: CancellationToken,
    /// Its place under the connection cap, given back when it ends.
    _permit: OwnedSemaphorePermit,
}

impl Connection {
    async fn run(self, stream: TcpStream) {
        let _open = Open::counted();
        let activity = Arc::new(Activity::default());
        let io = TokioIo::new(Watched {
            inner: stream,
            activity: activity.clone(),
        });
        let (router, watched) = (self.router, activity.clone());
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            watched.busy();
            let response = router.clone().oneshot(request.map(Body::new));
            let watched = watched.clone();
            async move {
                let response: Result<_, Infallible> = response.await;
                watched.wait_from_now(IDLE);
                response
            }
        });
        let mut conn = pin!(
            http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(None)
                .max_header_size(self.settings.max_head_bytes)
                // What a slow head can make hyper buffer, on top of the head limit itself.
                .max_buf_size(self.settings.max_head_bytes.max(8192))
                .serve_connection(io, service)
        );
        let mut draining = false;
        let ended = loop {
            tokio::select! {
                ended = conn.as_mut() => break ended,
                () = self.stop.cancelled(), if !draining => {
                    // Only a connection the router is working for has a request to finish.
                    if !activity.is_busy() {
                        break Ok(());
                    }
                    conn.as_mut().graceful_shutdown();
                    draining = true;
                }
                reason = activity.expired(&self.settings) => {
                    counter!(HTTP_CONNECTIONS_CLOSED, "reason" => reason).increment(1);
                    break Ok(());
                }
            }
        };
        if let Err(error) = ended {
            count_refused_request(&error);
        }
    }
}

/// A connection counted in `vg_http_connections_open` while it lives, however its task ends.
struct Open;

impl Open {
    fn counted() -> Self {
        gauge!(HTTP_CONNECTIONS_OPEN).increment(1.0);
        Self
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        gauge!(HTTP_CONNECTIONS_OPEN).decrement(1.0);
    }
}

/// A request hyper refused before it reached the router: it answered 400, 414 or 431 itself
/// (414 only for a URI over hyper's own limit that still fits the head limit). An HTTP/2 preface
/// gets no answer, so it is not counted as one.
fn count_refused_request(error: &hyper::Error) {
    let (status, outcome) = if error.is_parse_version_h2() {
        return;
    } else if error.is_parse_too_large() {
        if error.to_string().contains("URI") {
            ("414", "uri_too_long")
        } else {
            ("431", "head_too_large")
        }
    } else if error.is_parse() {
        ("400", "unparsable_request")
    } else {
        return;
    };
    counter!(
        HTTP_REQUESTS,
        "route" => "unparsed",
        "method" => "other",
        "status" => status,
        "outcome" => outcome,
    )
    .increment(1);
}

/// What a connection waits for: a request's head, the router's answer, or the next request.
const HEAD: u8 = 0;
const BUSY: u8 = 1;
const IDLE: u8 = 2;

/// A connection's state and since when (milliseconds on this process's clock), shared by the
/// reads that see a head begin, the service that sees a request start and end, and the watchdog.
struct Activity {
    state: AtomicU8,
    since: AtomicU64,
}

impl Default for Activity {
    /// A new connection waits for its first head.
    fn default() -> Self {
        Self {
            state: AtomicU8::new(HEAD),
            since: AtomicU64::new(now_ms()),
        }
    }
}

impl Activity {
    /// Now waiting for a head, or for the next request, from now.
    fn wait_from_now(&self, state: u8) {
        self.since.store(now_ms(), Ordering::Relaxed);
        self.state.store(state, Ordering::Release);
    }

    /// The router has the request: no deadline of this connection's runs meanwhile.
    fn busy(&self) {
        self.state.store(BUSY, Ordering::Release);
    }

    fn is_busy(&self) -> bool {
        self.state.load(Ordering::Acquire) == BUSY
    }

    /// Bytes arrived: an idle connection now waits for the rest of a head.
    fn read(&self) {
        if self.state.load(Ordering::Relaxed) == IDLE {
            self.wait_from_now(HEAD);
        }
    }

    /// Resolves when the connection has waited too long for a head or for its next request;
    /// says which. Nothing wakes it when the state changes (that would cost every request a
    /// wake-up): it looks again at least every half header timeout, so a head that begins while
    /// it sleeps is seen before its deadline, and the connection closed on it.
    async fn expired(&self, settings: &EdgeSettings) -> &'static str {
        let look_again = settings.header_read_timeout.as_millis() as u64 / 2;
        loop {
            let state = self.state.load(Ordering::Acquire);
            let since = self.since.load(Ordering::Relaxed);
            let (limit, reason) = match state {
                HEAD => (settings.header_read_timeout, "header_timeout"),
                IDLE => (settings.idle_timeout, "idle_timeout"),
                // Busy: the request timeout bounds the router.
                _ => (Duration::MAX, ""),
            };
            let limit = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX);
            let deadline = since.saturating_add(limit);
            let left = deadline.saturating_sub(now_ms());
            if left == 0 {
                return reason;
            }
            tokio::time::sleep(Duration::from_millis(left.min(look_again).max(1))).await;
        }
    }
}

/// Milliseconds since this process first asked.
fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

pin_project! {
    /// A connection's socket, telling its `Activity` when bytes arrive.
    struct Watched {
        #[pin]
        inner: TcpStream,
        activity: Arc<Activity>,
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let read = this.inner.poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.read();
        }
        read
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}
