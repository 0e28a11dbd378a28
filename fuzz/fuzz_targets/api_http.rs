// SPDX-License-Identifier: Apache-2.0
//! The API's HTTP layer and router on arbitrary bytes.
//!
//! Input: the bytes a client sends on the API socket.
//!
//! - `parse` on the bytes: a whole request is the same when cut right
//!   after it or followed by more bytes, its body is the bytes before
//!   `consumed`, and any shorter cut of it is incomplete; an error stays
//!   the same error when more bytes follow.
//! - The server's connection reader on a socket fed those bytes gives the
//!   requests, and the error, of parsing them one after the other.
//! - Every request is routed; the body (or the whole input) also goes to
//!   every endpoint that takes one. An error answer is a 400, 404 or 405
//!   with a `{"fault_message": ...}` body; a typed request, written back
//!   as JSON to its endpoint, routes to the same request. `VmConfig`
//!   parses its own output back to itself.
//! - Every answer the server would encode is a valid HTTP response with
//!   the right status, length and body.

#![no_main]

use ferry_api::fuzzing::{encode, parse, read_connection, HttpRequest, Parsed};
use ferry_api::models::{InstanceActionInfo, VmConfig};
use ferry_api::{route, Error, Request, Response};
use libfuzzer_sys::fuzz_target;

/// The endpoints that take a body.
const BODY_ENDPOINTS: &[(&str, &str)] = &[
    ("PUT", "/boot-source"),
    ("PUT", "/machine-config"),
    ("PATCH", "/machine-config"),
    ("PUT", "/drives/rootfs"),
    ("PATCH", "/drives/rootfs"),
    ("PUT", "/network-interfaces/eth0"),
    ("PATCH", "/network-interfaces/eth0"),
    ("PUT", "/vsock"),
    ("PUT", "/logger"),
    ("PUT", "/metrics"),
    ("PUT", "/actions"),
];

fn json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("a model serializes")
}

/// The method, path and body that carry `request`.
fn to_http(request: &Request) -> (&'static str, String, Vec<u8>) {
    match request {
        Request::GetInstanceInfo => ("GET", "/".into(), Vec::new()),
        Request::GetVersion => ("GET", "/version".into(), Vec::new()),
        Request::GetMachineConfig => ("GET", "/machine-config".into(), Vec::new()),
        Request::GetVmConfig => ("GET", "/vm/config".into(), Vec::new()),
        Request::PutBootSource(b) => ("PUT", "/boot-source".into(), json(b)),
        Request::PutMachineConfig(m) => ("PUT", "/machine-config".into(), json(m)),
        Request::PatchMachineConfig(m) => ("PATCH", "/machine-config".into(), json(m)),
        Request::PutDrive(d) => ("PUT", format!("/drives/{}", d.drive_id), json(d)),
        Request::PatchDrive(d) => ("PATCH", format!("/drives/{}", d.drive_id), json(d)),
        Request::PutNetworkInterface(n) => (
            "PUT",
            format!("/network-interfaces/{}", n.iface_id),
            json(n),
        ),
        Request::PatchNetworkInterface(n) => (
            "PATCH",
            format!("/network-interfaces/{}", n.iface_id),
            json(n),
        ),
        Request::PutVsock(v) => ("PUT", "/vsock".into(), json(v)),
        Request::PutLogger(l) => ("PUT", "/logger".into(), json(l)),
        Request::PutMetrics(m) => ("PUT", "/metrics".into(), json(m)),
        Request::Action(a) => (
            "PUT",
            "/actions".into(),
            json(&InstanceActionInfo { action_type: *a }),
        ),
    }
}

/// An encoded answer is a valid HTTP response carrying `status` and `body`.
fn check_encoded(status: u16, body: Option<&[u8]>, keep_alive: bool) {
    let bytes = encode(status, body, keep_alive);
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut resp = httparse::Response::new(&mut headers);
    let head = match resp.parse(&bytes) {
        Ok(httparse::Status::Complete(n)) => n,
        other => panic!("encoded answer does not parse: {other:?}"),
    };
    assert_eq!(resp.code, Some(status));
    let header = |name: &str| {
        resp.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.to_vec())
    };
    let length = header("content-length").map(|v| {
        std::str::from_utf8(&v)
            .expect("ASCII length")
            .parse::<usize>()
            .expect("a number")
    });
    assert_eq!(length.unwrap_or(0), bytes.len() - head);
    assert_eq!(&bytes[head..], body.unwrap_or(&[]));
    let connection = header("connection").expect("a Connection header");
    assert_eq!(
        connection,
        if keep_alive {
            &b"keep-alive"[..]
        } else {
            &b"close"[..]
        }
    );
}

/// Routes a request and checks the answer or the typed request.
fn check_route(method: &str, path: &str, body: &[u8], keep_alive: bool) {
    match route(method, path, body) {
        Ok(request) => {
            let (m, p, b) = to_http(&request);
            assert_eq!(
                route(m, &p, &b),
                Ok(request.clone()),
                "{request:?} does not route back to itself from {}",
                String::from_utf8_lossy(&b)
            );
        }
        Err(response) => {
            let status = response.status();
            assert!(
                matches!(
                    response,
                    Response::BadRequest(_) | Response::NotFound(_) | Response::MethodNotAllowed(_)
                ),
                "the router answered {response:?}"
            );
            let body = response.body().expect("an error has a body");
            let value: serde_json::Value = serde_json::from_slice(&body).expect("a JSON body");
            let object = value.as_object().expect("a JSON object");
            assert_eq!(object.len(), 1);
            assert!(object.get("fault_message").is_some_and(|m| m.is_string()));
            check_encoded(status, Some(&body), keep_alive);
        }
    }
}

fn check_vm_config(body: &[u8]) {
    let Ok(text) = std::str::from_utf8(body) else {
        return;
    };
    let Ok(config) = VmConfig::from_json(text) else {
        return;
    };
    let again = serde_json::to_string(&config).expect("a VmConfig serializes");
    let back = VmConfig::from_json(&again).expect("a VmConfig parses its own output");
    // The keys ferry does not support are kept as raw JSON (numbers in it
    // may not survive a round trip bit for bit); the rest must.
    assert_eq!(back.boot_source, config.boot_source);
    assert_eq!(back.machine_config, config.machine_config);
    assert_eq!(back.drives, config.drives);
    assert_eq!(back.network_interfaces, config.network_interfaces);
    assert_eq!(back.vsock, config.vsock);
    assert_eq!(back.logger, config.logger);
    assert_eq!(back.metrics, config.metrics);
    assert_eq!(back.unsupported_keys(), config.unsupported_keys());
}

/// The requests and final error of parsing `bytes` one request after another.
fn parse_all(mut bytes: &[u8]) -> (Vec<HttpRequest>, Option<String>) {
    let mut requests = Vec::new();
    loop {
        if bytes.is_empty() {
            return (requests, None);
        }
        match parse(bytes) {
            Ok(Parsed::Complete { request, consumed }) => {
                assert!(consumed > 0 && consumed <= bytes.len());
                requests.push(request);
                bytes = &bytes[consumed..];
            }
            Ok(Parsed::Incomplete { .. }) => {
                let e = Error::MalformedRequest(
                    "the connection was shut down in the middle of a request".into(),
                );
                return (requests, Some(e.to_string()));
            }
            Err(e) => return (requests, Some(e.to_string())),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let first = parse(data);
    let mut bodies: Vec<Vec<u8>> = vec![data.to_vec()];
    match &first {
        Ok(Parsed::Complete { request, consumed }) => {
            let consumed = *consumed;
            assert!(consumed <= data.len());
            assert!(request.body.len() < consumed);
            assert_eq!(
                &data[consumed - request.body.len()..consumed],
                request.body.as_slice()
            );
            assert!(!request.method.is_empty() && !request.path.is_empty());
            // Cut right after it, or followed by anything: the same.
            assert_eq!(parse(&data[..consumed]).ok(), first.as_ref().ok().cloned());
            let mut longer = data.to_vec();
            longer.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
            assert_eq!(parse(&longer).ok(), first.as_ref().ok().cloned());
            // Any shorter cut is incomplete.
            let seed = usize::from(data[0]) * 31 + usize::from(data[consumed / 2]);
            for cut in [consumed - 1, consumed / 2, seed % consumed] {
                match parse(&data[..cut]) {
                    Ok(Parsed::Incomplete { .. }) => {}
                    other => panic!("a cut at {cut} of {consumed}: {other:?}"),
                }
            }
            check_route(
                &request.method,
                &request.path,
                &request.body,
                request.keep_alive,
            );
            bodies.push(request.body.clone());
        }
        Ok(Parsed::Incomplete { .. }) => {}
        Err(e) => {
            // An error is in the bytes seen: more bytes do not mend it.
            let mut longer = data.to_vec();
            longer.extend_from_slice(b"\r\n\r\n");
            match parse(&longer) {
                Err(again) => assert_eq!(again.to_string(), e.to_string()),
                Ok(other) => panic!("{e} mended by more bytes: {other:?}"),
            }
        }
    }

    // The server's reader on a socket: the same requests, the same end.
    let (sent, requests, end) = read_connection(data).expect("a socket pair");
    let (want, want_end) = parse_all(&data[..sent]);
    assert_eq!(requests, want);
    assert_eq!(end.map(|e| e.to_string()), want_end);
    for r in requests.iter().skip(1).take(8) {
        check_route(&r.method, &r.path, &r.body, r.keep_alive);
    }

    // Every body to every endpoint that takes one.
    for body in &bodies {
        for (method, path) in BODY_ENDPOINTS {
            check_route(method, path, body, true);
        }
        check_vm_config(body);
    }
    check_encoded(204, None, false);
});
