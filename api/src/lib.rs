// SPDX-License-Identifier: Apache-2.0
//! ferry's Firecracker-compatible HTTP API on a UNIX socket.
//!
//! - [`models`]: the JSON bodies, as Firecracker's swagger defines them.
//! - [`route`]: one HTTP request (method, path, body) to a typed [`Request`],
//!   or the error [`Response`] Firecracker would give.
//! - [`spawn`]: the server thread, which serves connections on an
//!   [`ApiSocket`], hands each typed request to the VMM on a channel as an
//!   [`ApiRequest`], and writes back the VMM's [`Response`].
//!
//! Nothing here knows about KVM or the VM: which request is valid in which
//! state, and what it does, is the VMM's business.

#![deny(missing_docs)]

mod http;
pub mod models;
mod request;
mod server;

use std::io;
use std::path::PathBuf;

pub use request::{route, Request, Response};
pub use server::{spawn, ApiRequest, ApiSocket, ServerHandle, MAX_CONNECTIONS};

/// The largest request body the API reads, in bytes (Firecracker's default
/// `--http-api-max-payload-size`).
pub const HTTP_MAX_PAYLOAD_SIZE: usize = 51200;

/// What can go wrong in the API: starting the server, and (inside the
/// server) reading a client's request.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Something already exists at the socket's path.
    #[error("the API socket path {0} is already in use")]
    SocketInUse(PathBuf),
    /// Binding or listening on the socket failed.
    #[error("cannot bind the API socket {path}: {source}")]
    Bind {
        /// The socket's path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Setting up the server's epoll or stop event failed.
    #[error("cannot set up the API server: {0}")]
    Setup(#[source] io::Error),
    /// The server thread could not be started.
    #[error("cannot start the API server thread: {0}")]
    Spawn(#[source] io::Error),
    /// Reading from or writing to a client failed.
    #[error("API connection I/O error: {0}")]
    Io(#[source] io::Error),
    /// A client sent something that is not an HTTP/1.x request.
    #[error("{0}")]
    MalformedRequest(String),
    /// A request's head is over the limit.
    #[error("the request head is larger than the limit of {0} bytes")]
    HeadTooLarge(usize),
    /// A request's body is over the limit (Firecracker's text).
    #[error(
        "Request payload with size {size} is larger than the limit of {limit} allowed by server."
    )]
    PayloadTooLarge {
        /// The declared `Content-Length`.
        size: usize,
        /// [`HTTP_MAX_PAYLOAD_SIZE`].
        limit: usize,
    },
    /// A request came with `Transfer-Encoding` (chunked bodies are not
    /// supported: send `Content-Length`).
    #[error("Transfer-Encoding {0:?} is not supported: send the body with a Content-Length")]
    UnsupportedTransferEncoding(String),
    /// A request did not arrive whole in time.
    #[error("the request did not arrive whole within {0:?}")]
    RequestTimeout(std::time::Duration),
}
