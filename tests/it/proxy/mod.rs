//! The proxy on its own, in the test's runtime, in front of real `cutover demo-app` processes or
//! of instances written in the test, all on 127.0.0.1; `setup` holds what these tests share.

mod canary;
mod close;
mod hold;
mod http2;
mod idle;
mod lifecycle;
mod misframe;
mod pace;
mod proxy_protocol;
mod room;
mod routing;
mod setup;
mod wire;
