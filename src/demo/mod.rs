//! The bundled demo: a small HTTP app with fault injection, and the scripted tour that deploys it.

pub mod app;
mod grpc;
mod tls;
pub mod tour;
mod websocket;
