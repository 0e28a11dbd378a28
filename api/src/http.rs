// SPDX-License-Identifier: Apache-2.0
//! HTTP/1.1 over a UNIX stream, as much of it as Firecracker's clients use.
//!
//! - The head is parsed by `httparse` and capped at [`MAX_HEAD_SIZE`].
//! - Bodies come with `Content-Length` only; any `Transfer-Encoding` (so
//!   chunked) is a 400. A body is capped at [`crate::HTTP_MAX_PAYLOAD_SIZE`]
//!   (Firecracker's 51200 bytes): a larger declared length is a 400 and the
//!   connection is closed without the body being read.
//! - A connection stays open after a request (HTTP/1.1's default) unless the
//!   request says `Connection: close` or is HTTP/1.0.
//! - Requests sent back to back in one write are answered in order; a
//!   request split across several writes is put back together.
//! - `Expect: 100-continue` (curl sends it for large bodies) is answered with
//!   `100 Continue` before the body is read.
//! - A malformed request is a 400 and the connection is closed.
//! - A request must arrive whole within [`REQUEST_TIMEOUT`] of its first
//!   byte; an idle connection between requests has no time limit.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use crate::request::{fault_body, Response};
use crate::{Error, HTTP_MAX_PAYLOAD_SIZE};

/// The largest request head (request line and headers) accepted.
pub(crate) const MAX_HEAD_SIZE: usize = 8 * 1024;
/// The most headers in one request.
const MAX_HEADERS: usize = 64;
/// How long a request may take to arrive, from its first byte.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long writing one response may block on a client that does not read.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How much is read from the socket at a time.
const READ_CHUNK: usize = 8 * 1024;

/// One request, read whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HttpRequest {
    /// The method, as sent (`GET`, `PUT`...).
    pub method: String,
    /// The request target, as sent.
    pub path: String,
    /// The body; empty when there is none.
    pub body: Vec<u8>,
    /// Whether the connection stays open after the answer.
    pub keep_alive: bool,
}

/// What [`parse`] made of the bytes so far.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Parsed {
    /// A whole request, which took the first `consumed` bytes.
    Complete {
        request: HttpRequest,
        consumed: usize,
    },
    /// More bytes are needed. `expect_continue`: the head is whole, asks for
    /// `100 Continue`, and the body has not all come.
    Incomplete { expect_continue: bool },
}

fn malformed(message: impl Into<String>) -> Error {
    Error::MalformedRequest(message.into())
}

/// True if a comma-separated header value lists `token` (any case).
fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// Parses the request at the start of `buf`.
pub(crate) fn parse(buf: &[u8]) -> Result<Parsed, Error> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            if buf.len() > MAX_HEAD_SIZE {
                return Err(Error::HeadTooLarge(MAX_HEAD_SIZE));
            }
            return Ok(Parsed::Incomplete {
                expect_continue: false,
            });
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(malformed(format!("more than {MAX_HEADERS} headers")))
        }
        Err(e) => return Err(malformed(format!("invalid HTTP request: {e}"))),
    };
    if head_len > MAX_HEAD_SIZE {
        return Err(Error::HeadTooLarge(MAX_HEAD_SIZE));
    }
    let (Some(method), Some(path), Some(version)) = (req.method, req.path, req.version) else {
        return Err(malformed("incomplete request line"));
    };

    let mut content_length: Option<usize> = None;
    let mut close = version == 0;
    let mut expect_continue = false;
    for header in req.headers.iter() {
        let name = header.name;
        let value = header.value.trim_ascii();
        if name.eq_ignore_ascii_case("content-length") {
            let length = std::str::from_utf8(value)
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<usize>().ok())
                .ok_or_else(|| {
                    malformed(format!(
                        "invalid Content-Length: {}",
                        String::from_utf8_lossy(value)
                    ))
                })?;
            if content_length.is_some_and(|previous| previous != length) {
                return Err(malformed("conflicting Content-Length headers"));
            }
            content_length = Some(length);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(Error::UnsupportedTransferEncoding(
                String::from_utf8_lossy(value).into_owned(),
            ));
        } else if name.eq_ignore_ascii_case("connection") {
            if has_token(value, "close") {
                close = true;
            }
        } else if name.eq_ignore_ascii_case("expect") && has_token(value, "100-continue") {
            expect_continue = true;
        }
    }

    let length = content_length.unwrap_or(0);
    if length > HTTP_MAX_PAYLOAD_SIZE {
        return Err(Error::PayloadTooLarge {
            size: length,
            limit: HTTP_MAX_PAYLOAD_SIZE,
        });
    }
    let end = head_len
        .checked_add(length)
        .ok_or_else(|| malformed("Content-Length overflows"))?;
    let Some(body) = buf.get(head_len..end) else {
        return Ok(Parsed::Incomplete { expect_continue });
    };
    Ok(Parsed::Complete {
        request: HttpRequest {
            method: method.to_string(),
            path: path.to_string(),
            body: body.to_vec(),
            keep_alive: !close,
        },
        consumed: end,
    })
}

/// The reason phrase of a status code.
fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Payload Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// An answer's bytes: the head and, when there is one, the JSON body.
pub(crate) fn encode(status: u16, body: Option<&[u8]>, keep_alive: bool) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status} {}\r\nServer: ferry\r\n", reason(status));
    out.push_str(if keep_alive {
        "Connection: keep-alive\r\n"
    } else {
        "Connection: close\r\n"
    });
    if let Some(body) = body {
        out.push_str("Content-Type: application/json\r\n");
        out.push_str(&format!("Content-Length: {}\r\n", body.len()));
    } else if status != 204 {
        out.push_str("Content-Length: 0\r\n");
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    if let Some(body) = body {
        bytes.extend_from_slice(body);
    }
    bytes
}

/// A client connection: reads requests and writes answers.
#[derive(Debug)]
pub(crate) struct Connection {
    stream: UnixStream,
    /// Bytes read and not yet parsed into a request.
    buf: Vec<u8>,
    /// When the first byte of the request in `buf` came.
    started: Option<Instant>,
    /// The read timeout the socket has now.
    read_timeout: Option<Duration>,
    /// How long a request may take to arrive.
    request_timeout: Duration,
}

impl Connection {
    /// Serves `stream`, in blocking mode.
    pub(crate) fn new(stream: UnixStream, request_timeout: Duration) -> Result<Self, Error> {
        stream.set_nonblocking(false).map_err(Error::Io)?;
        stream
            .set_write_timeout(Some(WRITE_TIMEOUT))
            .map_err(Error::Io)?;
        stream.set_read_timeout(None).map_err(Error::Io)?;
        Ok(Connection {
            stream,
            buf: Vec::new(),
            started: None,
            read_timeout: None,
            request_timeout,
        })
    }

    fn set_read_timeout(&mut self, timeout: Option<Duration>) -> Result<(), Error> {
        if self.read_timeout != timeout {
            self.stream.set_read_timeout(timeout).map_err(Error::Io)?;
            self.read_timeout = timeout;
        }
        Ok(())
    }

    /// The next request; `None` when the client closed the connection
    /// between requests. An error that is not [`Error::Io`] should be
    /// answered with a 400 before the connection is closed.
    pub(crate) fn next_request(&mut self) -> Result<Option<HttpRequest>, Error> {
        let mut continue_sent = false;
        let mut chunk = [0u8; READ_CHUNK];
        loop {
            if !self.buf.is_empty() {
                let started = *self.started.get_or_insert_with(Instant::now);
                match parse(&self.buf)? {
                    Parsed::Complete { request, consumed } => {
                        self.buf.drain(..consumed.min(self.buf.len()));
                        self.started = (!self.buf.is_empty()).then(Instant::now);
                        return Ok(Some(request));
                    }
                    Parsed::Incomplete { expect_continue } => {
                        if expect_continue && !continue_sent {
                            self.stream
                                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                                .map_err(Error::Io)?;
                            continue_sent = true;
                        }
                    }
                }
                let left = self.request_timeout.saturating_sub(started.elapsed());
                if left.is_zero() {
                    return Err(Error::RequestTimeout(self.request_timeout));
                }
                self.set_read_timeout(Some(left))?;
            } else {
                self.set_read_timeout(None)?;
            }
            match self.stream.read(&mut chunk) {
                Ok(0) if self.buf.is_empty() => return Ok(None),
                Ok(0) => {
                    return Err(malformed(
                        "the connection was shut down in the middle of a request",
                    ))
                }
                Ok(n) => {
                    let bytes = chunk.get(..n).unwrap_or(&[]);
                    ferry_capture::bytes(ferry_capture::Input::Api, bytes);
                    self.buf.extend_from_slice(bytes);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) && !self.buf.is_empty() =>
                {
                    return Err(Error::RequestTimeout(self.request_timeout))
                }
                Err(e) => return Err(Error::Io(e)),
            }
        }
    }

    /// Writes `response`.
    pub(crate) fn respond(&mut self, response: &Response, keep_alive: bool) -> io::Result<()> {
        self.write_status(response.status(), response.body().as_deref(), keep_alive)
    }

    /// Writes an answer with this status and body.
    pub(crate) fn write_status(
        &mut self,
        status: u16,
        body: Option<&[u8]>,
        keep_alive: bool,
    ) -> io::Result<()> {
        self.stream.write_all(&encode(status, body, keep_alive))?;
        self.stream.flush()
    }

    /// Writes an error with Firecracker's `fault_message` body.
    pub(crate) fn write_fault(
        &mut self,
        status: u16,
        message: &str,
        keep_alive: bool,
    ) -> io::Result<()> {
        self.write_status(status, Some(&fault_body(message)), keep_alive)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;

    fn complete(bytes: &[u8]) -> (HttpRequest, usize) {
        match parse(bytes) {
            Ok(Parsed::Complete { request, consumed }) => (request, consumed),
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(bytes)),
        }
    }

    #[test]
    fn parses_a_request() {
        let raw = b"PUT /boot-source HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";
        let (r, n) = complete(raw);
        assert_eq!(n, raw.len());
        assert_eq!(
            r,
            HttpRequest {
                method: "PUT".into(),
                path: "/boot-source".into(),
                body: b"{}".to_vec(),
                keep_alive: true
            }
        );
        let (r, _) = complete(b"GET / HTTP/1.1\r\n\r\n");
        assert!(r.body.is_empty() && r.keep_alive);
    }

    #[test]
    fn connection_header_and_versions() {
        let (r, _) = complete(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n");
        assert!(!r.keep_alive);
        let (r, _) = complete(b"GET / HTTP/1.1\r\nconnection: Keep-Alive, CLOSE\r\n\r\n");
        assert!(!r.keep_alive);
        let (r, _) = complete(b"GET / HTTP/1.0\r\n\r\n");
        assert!(!r.keep_alive);
        let (r, _) = complete(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        assert!(!r.keep_alive);
        let (r, _) = complete(b"GET / HTTP/1.1\r\nConnection: keep-alive\r\n\r\n");
        assert!(r.keep_alive);
    }

    #[test]
    fn partial_requests() {
        let raw = b"PUT /x HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello";
        for cut in 0..raw.len() {
            assert_eq!(
                parse(&raw[..cut]).unwrap(),
                Parsed::Incomplete {
                    expect_continue: false
                },
                "cut at {cut}"
            );
        }
        assert_eq!(complete(raw).0.body, b"hello");
        let raw = b"PUT /x HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nhel";
        assert_eq!(
            parse(raw).unwrap(),
            Parsed::Incomplete {
                expect_continue: true
            }
        );
    }

    #[test]
    fn pipelined_requests_parse_one_at_a_time() {
        let raw = b"GET / HTTP/1.1\r\n\r\nPUT /a HTTP/1.1\r\nContent-Length: 1\r\n\r\nxGET /v HTTP/1.1\r\n";
        let (first, n) = complete(raw);
        assert_eq!(first.path, "/");
        let (second, m) = complete(&raw[n..]);
        assert_eq!(
            (second.path.as_str(), second.body.as_slice()),
            ("/a", &b"x"[..])
        );
        assert_eq!(
            parse(&raw[n + m..]).unwrap(),
            Parsed::Incomplete {
                expect_continue: false
            }
        );
    }

    #[test]
    fn refused_heads() {
        let cases: &[(&[u8], &str)] = &[
            (
                b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                "Transfer-Encoding",
            ),
            (
                b"PUT / HTTP/1.1\r\nContent-Length: 51201\r\n\r\n",
                "larger than the limit of 51200",
            ),
            (
                b"PUT / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
                "Content-Length",
            ),
            (
                b"PUT / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
                "Content-Length",
            ),
            (
                b"PUT / HTTP/1.1\r\nContent-Length: 1x\r\n\r\n",
                "Content-Length",
            ),
            (
                b"PUT / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                "conflicting",
            ),
            (b"GARBAGE\r\n\r\n", "invalid HTTP request"),
            (b"GET / HTTP/2.0\r\n\r\n", "invalid HTTP request"),
            (b"GET  HTTP/1.1\r\n\r\n", "invalid HTTP request"),
            (b"\x00\x01\x02\r\n\r\n", "invalid HTTP request"),
        ];
        for (raw, message) in cases {
            let e = parse(raw).unwrap_err().to_string();
            assert!(
                e.contains(message),
                "{:?}: {e:?}",
                String::from_utf8_lossy(raw)
            );
        }
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..100 {
            many.extend_from_slice(format!("X-{i}: y\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert!(parse(&many).unwrap_err().to_string().contains("headers"));
        // A head that never ends, and one that ends too late.
        let mut long = b"GET / HTTP/1.1\r\nX: ".to_vec();
        long.resize(MAX_HEAD_SIZE + 1, b'a');
        assert!(matches!(parse(&long), Err(Error::HeadTooLarge(_))));
        long.extend_from_slice(b"\r\n\r\n");
        assert!(matches!(parse(&long), Err(Error::HeadTooLarge(_))));
        // The largest body is fine.
        let mut big = format!("PUT / HTTP/1.1\r\nContent-Length: {HTTP_MAX_PAYLOAD_SIZE}\r\n\r\n")
            .into_bytes();
        big.resize(big.len() + HTTP_MAX_PAYLOAD_SIZE, b' ');
        assert_eq!(complete(&big).0.body.len(), HTTP_MAX_PAYLOAD_SIZE);
    }

    #[test]
    fn encodes_responses() {
        assert_eq!(
            encode(204, None, true),
            b"HTTP/1.1 204 No Content\r\nServer: ferry\r\nConnection: keep-alive\r\n\r\n"
        );
        assert_eq!(
            encode(400, Some(b"{}"), false),
            b"HTTP/1.1 400 Bad Request\r\nServer: ferry\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
        );
    }

    /// A connection over a socket pair, with the client's end.
    fn pair(timeout: Duration) -> (Connection, UnixStream) {
        let (server, client) = UnixStream::pair().unwrap();
        (Connection::new(server, timeout).unwrap(), client)
    }

    #[test]
    fn connection_reads_split_and_pipelined_requests() {
        let (mut conn, mut client) = pair(REQUEST_TIMEOUT);
        let writer = thread::spawn(move || {
            for piece in [
                &b"PUT /boot-source HT"[..],
                b"TP/1.1\r\nContent-Length: 4\r\n",
                b"\r\n{",
                b"}{}GET / HTTP/1.1\r\n\r\nGET /version HTTP/1.1\r\n\r\n",
            ] {
                client.write_all(piece).unwrap();
                thread::sleep(Duration::from_millis(20));
            }
            client
        });
        let r = conn.next_request().unwrap().unwrap();
        assert_eq!(
            (r.path.as_str(), r.body.as_slice()),
            ("/boot-source", &b"{}{}"[..])
        );
        assert_eq!(conn.next_request().unwrap().unwrap().path, "/");
        assert_eq!(conn.next_request().unwrap().unwrap().path, "/version");
        drop(writer.join().unwrap());
        assert_eq!(conn.next_request().unwrap(), None);
    }

    #[test]
    fn connection_sends_100_continue() {
        let (mut conn, mut client) = pair(REQUEST_TIMEOUT);
        client
            .write_all(b"PUT /a HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
            .unwrap();
        let reader = thread::spawn(move || {
            let mut got = [0u8; 25];
            client.read_exact(&mut got).unwrap();
            assert_eq!(&got, b"HTTP/1.1 100 Continue\r\n\r\n");
            client.write_all(b"{}").unwrap();
            client
        });
        let r = conn.next_request().unwrap().unwrap();
        assert_eq!(r.body, b"{}");
        drop(reader.join().unwrap());
    }

    #[test]
    fn connection_times_out_a_stalled_request_only() {
        let (mut conn, mut client) = pair(Duration::from_millis(200));
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(conn.next_request().unwrap().unwrap().path, "/");
        // Idle between requests longer than the timeout: fine.
        let writer = thread::spawn(move || {
            thread::sleep(Duration::from_millis(400));
            client
                .write_all(b"GET /version HTTP/1.1\r\nHost: x")
                .unwrap();
            client
        });
        let start = Instant::now();
        let e = conn.next_request().unwrap_err();
        assert!(matches!(e, Error::RequestTimeout(_)), "{e}");
        assert!(start.elapsed() >= Duration::from_millis(550));
        drop(writer.join().unwrap());
    }

    #[test]
    fn connection_refuses_a_huge_body_without_reading_it() {
        let (mut conn, mut client) = pair(REQUEST_TIMEOUT);
        client
            .write_all(b"PUT /drives/a HTTP/1.1\r\nContent-Length: 1000000\r\n\r\n")
            .unwrap();
        let e = conn.next_request().unwrap_err();
        assert!(
            matches!(e, Error::PayloadTooLarge { size: 1000000, .. }),
            "{e}"
        );
    }

    #[test]
    fn connection_half_closed_mid_request() {
        let (mut conn, mut client) = pair(REQUEST_TIMEOUT);
        client
            .write_all(b"PUT /a HTTP/1.1\r\nContent-Length: 9\r\n\r\n{")
            .unwrap();
        client.shutdown(std::net::Shutdown::Write).unwrap();
        let e = conn.next_request().unwrap_err();
        assert!(matches!(e, Error::MalformedRequest(_)), "{e}");
    }
}
