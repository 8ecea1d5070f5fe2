//! The accept loop: HTTP/1.1 connections from a bound listener, each served by its own task.

use std::convert::Infallible;
use std::error::Error as StdError;
use std::future::Future;
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::server::conn::http1;
use hyper::service::{Service, service_fn};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// Serves `listener` with `handler` until this future is dropped (or the task running it is
/// aborted), which also ends every connection.
pub async fn serve<H, F, B>(listener: TcpListener, handler: H)
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    accept_loop(listener, move |stream| {
        let handler = handler.clone();
        let service = service_fn(move |request| {
            let answer = handler(request);
            async move { Ok::<_, Infallible>(answer.await) }
        });
        (stream, service)
    })
    .await;
}

/// Accepts connections from `listener` until this future is dropped; `connection` turns each
/// stream into what serves it: the I/O (the stream, or a wrapper around it) and the service.
/// The connection tasks belong to this future: dropping it ends them all.
pub async fn accept_loop<C, I, S, B>(listener: TcpListener, mut connection: C)
where
    C: FnMut(TcpStream) -> (I, S),
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let Ok((stream, _peer)) = listener.accept().await else {
            // Out of file descriptors or similar: wait instead of spinning.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        // Small answers go out at once instead of waiting for Nagle's delayed ACK.
        let _ = stream.set_nodelay(true);
        let (io, service) = connection(stream);
        connections.spawn(async move {
            // Errors here are clients hanging up mid-request: nothing to report.
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(io), service)
                .await;
        });
    }
}
