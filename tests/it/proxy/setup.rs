//! What the proxy tests share: a proxy in front of real demo apps or of an instance written in
//! the test (a raw TCP one, every byte known, or a hyper one), its routes, and requests through it
//! (on a keep-alive connection, or as raw bytes).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use cutover::protocol::app::Balance;
use cutover::supervisor::proxy::{Backend, Proxy, Route};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

use crate::support::load::DemoApp;
pub use crate::support::request::{connect, exchange_async as raw, Request, Sender};

/// The instance `id` of `app`; its version is what comes before the first `-` (`v1-0`: `v1`).
pub fn backend(id: &str, app: &DemoApp) -> Arc<Backend> {
    Arc::new(Backend {
        id: id.to_owned(),
        version: id.split('-').next().unwrap_or(id).to_owned(),
        addr: app.addr(),
    })
}

/// Round robin over `backends`, no canary.
pub fn route(backends: Vec<Arc<Backend>>) -> Route {
    Route {
        backends,
        balance: Balance::RoundRobin,
        canary: None,
    }
}

/// The route to `app` alone, as instance `v1-0`.
pub fn route_to(app: &DemoApp) -> Route {
    route(vec![backend("v1-0", app)])
}

/// A proxy on a free port of 127.0.0.1, with nothing routed.
pub async fn proxy() -> Proxy {
    Proxy::bind("127.0.0.1:0".parse().unwrap())
        .await
        .expect("bind proxy")
}

/// A proxy in front of `app` alone ([`route_to`]).
pub async fn proxy_for(app: &DemoApp) -> Proxy {
    let proxy = proxy().await;
    proxy.set_route(route_to(app));
    proxy
}

/// A proxy in front of one instance at `addr` (an instance written in the test).
pub async fn proxy_to(addr: SocketAddr) -> Proxy {
    let proxy = proxy().await;
    proxy.set_route(route(vec![Arc::new(Backend {
        id: "wire-0".into(),
        version: "wire".into(),
        addr,
    })]));
    proxy
}

/// `GET path` on `sender`'s connection: the status and body.
pub async fn get_on(sender: &mut Sender, path: &str) -> (u16, String) {
    let answer = Request::get(path).send_on(sender).await;
    (answer.status, answer.body)
}

/// `GET path` on a new connection to `addr`: the status and body.
pub async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    get_on(&mut connect(addr).await, path).await
}

/// An instance on a free port that hands each connection it accepts to `serve`, on a task of
/// its own.
pub async fn instance<F, Fut>(serve: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(stream));
        }
    });
    addr
}

/// An instance served by hyper, answering every request with the text `answer` makes of it.
pub async fn http_instance<F, Fut>(answer: F) -> SocketAddr
where
    F: Fn(http::Request<Incoming>) -> Fut + Copy + Send + Sync + 'static,
    Fut: Future<Output = Result<String, hyper::Error>> + Send + 'static,
{
    instance(move |stream| {
        let service = service_fn(move |req| async move {
            let text = answer(req).await?;
            Ok::<_, hyper::Error>(http::Response::new(Full::new(Bytes::from(text))))
        });
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service)
    })
    .await
}
