//! The accept loop: one task per connection, served by hyper's HTTP/1 with the daemon's
//! limits, at most `max_connections` at once ([`ConnectionTable`] decides who makes room), each
//! request handed to the [`Receiver`]. Shutdown stops accepting; `graceful` lets the
//! connections finish.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use super::connections::{Admission, ConnectionTable};
use super::{Listener, Receiver};
use crate::config::ServerConfig;

/// The connection limits of a listener (from `[server]`).
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// Time a client has to send its request headers.
    pub header_read_timeout: Duration,
    /// Most connections open at once on the webhook listener.
    pub max_connections: usize,
}

impl From<&ServerConfig> for ConnectionLimits {
    fn from(server: &ServerConfig) -> Self {
        Self {
            header_read_timeout: server.header_read_timeout,
            max_connections: server.max_connections,
        }
    }
}

/// How many connections the kernel may queue before `accept`; it caps this at
/// `net.core.somaxconn` (4096 by default on current kernels).
const LISTEN_BACKLOG: u32 = 4096;

/// Binds `addr` (port 0: any free port) with a deep accept queue.
pub fn listen_on(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    };
    socket.and_then(|socket| {
        // Like std's bind: a restarted daemon can rebind while old connections linger.
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(LISTEN_BACKLOG)
    })
}

/// Most connections the `metrics_listen` listener serves at once (scrapers are few).
const METRICS_CONNECTIONS: usize = 16;

/// The accept loop: one task per connection, at most `max_connections` at once. Accepting never
/// waits for a slot; see [`ConnectionTable`] for who makes room.
pub async fn serve(
    listener: TcpListener,
    limits: &ConnectionLimits,
    on: Listener,
    receiver: Arc<Receiver>,
    graceful: &GracefulShutdown,
    shutdown: impl Future<Output = ()>,
) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    let table = Arc::new(ConnectionTable::new(match on {
        Listener::Webhooks => limits.max_connections,
        Listener::Metrics => METRICS_CONNECTIONS,
    }));
    // Only the webhook listener's connections are reported.
    let open_connections =
        (on == Listener::Webhooks).then(|| receiver.metrics().connections_open.clone());
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = accept(&listener) => accepted,
        };
        let Admission::Admitted {
            id,
            activity,
            evicted,
        } = table.admit()
        else {
            tracing::debug!(%peer, "every connection has a request in progress; closed the new one");
            count_closed_at_cap(&receiver, on, "refused_busy");
            continue;
        };
        if let Some(gauge) = &open_connections {
            gauge.inc();
        }
        if let Some(closing) = evicted {
            count_closed_at_cap(&receiver, on, "evicted_idle");
            if let Some(gauge) = &open_connections {
                gauge.dec();
            }
            // Its socket closes when its aborted task is dropped; wait for that, so a burst of
            // accepts cannot overshoot the cap.
            let _ = closing.await;
        }
        let _ = stream.set_nodelay(true);
        let receiver = receiver.clone();
        let busy_table = table.clone();
        let service = service_fn(move |request| {
            let receiver = receiver.clone();
            let activity = activity.clone();
            let table = busy_table.clone();
            async move {
                let Some(_busy) = activity.busy(&table) else {
                    // Chosen for eviction an instant ago: nothing is read or stored.
                    return Ok::<_, Infallible>(super::evicted());
                };
                Ok(receiver.handle_on(on, request, peer).await)
            }
        });
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        let ended_table = table.clone();
        let open_gauge = open_connections.clone();
        let task = tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, %peer, "connection ended with an error");
            }
            // An evicted connection was already taken out of the table and the gauge.
            if ended_table.remove(id)
                && let Some(gauge) = open_gauge
            {
                gauge.dec();
            }
        });
        table.register(id, task);
    }
    if table.evicted() + table.refused() > 0 {
        tracing::info!(
            evicted_idle = table.evicted(),
            refused_busy = table.refused(),
            "connections closed at the max_connections cap since start"
        );
    }
    if on == Listener::Webhooks {
        tracing::info!("shutting down: no longer accepting connections");
    }
}

/// The next connection on `listener`; a failed accept (typically EMFILE) is logged and retried
/// after a pause instead of spinning.
pub(crate) async fn accept(listener: &TcpListener) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(accepted) => return accepted,
            Err(error) => {
                let on = listener.local_addr().ok();
                tracing::warn!(%error, ?on, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

fn count_closed_at_cap(receiver: &Receiver, on: Listener, result: &'static str) {
    if on == Listener::Webhooks {
        receiver
            .metrics()
            .connections_closed_at_cap
            .get_or_create(&crate::metrics::ResultLabel { result })
            .inc();
    }
}
