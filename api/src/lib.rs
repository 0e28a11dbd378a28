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

/// Entry points for the fuzz targets in `fuzz/` (built with `--cfg fuzzing` only).
#[cfg(fuzzing)]
#[doc(hidden)]
pub mod fuzzing {
    use std::io::{self, Write};
    use std::net::Shutdown;
    use std::os::unix::net::UnixStream;

    use crate::{http, Error};

    /// One request as the HTTP layer hands it to [`crate::route`].
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct HttpRequest {
        /// The method, as sent.
        pub method: String,
        /// The request target, as sent.
        pub path: String,
        /// The body; empty when there is none.
        pub body: Vec<u8>,
        /// Whether the connection stays open after the answer.
        pub keep_alive: bool,
    }

    impl From<http::HttpRequest> for HttpRequest {
        fn from(r: http::HttpRequest) -> Self {
            Self {
                method: r.method,
                path: r.path,
                body: r.body,
                keep_alive: r.keep_alive,
            }
        }
    }

    /// What the HTTP parser made of the bytes at the start of a buffer.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Parsed {
        /// A whole request, which took the first `consumed` bytes.
        Complete {
            /// The request.
            request: HttpRequest,
            /// Bytes it took.
            consumed: usize,
        },
        /// More bytes are needed.
        Incomplete {
            /// The head is whole and asks for `100 Continue`.
            expect_continue: bool,
        },
    }

    /// The server's parser on the bytes at the start of `buf`.
    pub fn parse(buf: &[u8]) -> Result<Parsed, Error> {
        Ok(match http::parse(buf)? {
            http::Parsed::Complete { request, consumed } => Parsed::Complete {
                request: request.into(),
                consumed,
            },
            http::Parsed::Incomplete { expect_continue } => Parsed::Incomplete { expect_continue },
        })
    }

    /// The bytes of an answer with this status and body, as the server writes them.
    pub fn encode(status: u16, body: Option<&[u8]>, keep_alive: bool) -> Vec<u8> {
        http::encode(status, body, keep_alive)
    }

    /// What the server's connection reader makes of a client that sends
    /// `bytes` and shuts its side: the bytes that fitted the socket (all
    /// of them unless it filled), the requests in order, and the error
    /// that ended the connection (none for a close between requests).
    pub fn read_connection(bytes: &[u8]) -> io::Result<(usize, Vec<HttpRequest>, Option<Error>)> {
        let (server, mut client) = UnixStream::pair()?;
        client.set_nonblocking(true)?;
        let mut sent = 0;
        while sent < bytes.len() {
            match client.write(&bytes[sent..]) {
                Ok(0) => break,
                Ok(n) => sent += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        client.shutdown(Shutdown::Write)?;
        let mut conn = http::Connection::new(server, http::REQUEST_TIMEOUT)
            .map_err(|e| io::Error::other(e.to_string()))?;
        let mut requests = Vec::new();
        loop {
            match conn.next_request() {
                Ok(Some(request)) => requests.push(request.into()),
                Ok(None) => return Ok((sent, requests, None)),
                Err(e) => return Ok((sent, requests, Some(e))),
            }
        }
    }
}
