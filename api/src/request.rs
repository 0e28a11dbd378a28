// SPDX-License-Identifier: Apache-2.0
//! The typed requests the VMM receives, the responses it gives, and the
//! router from an HTTP request to a typed request.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::models::{
    ActionType, BootSource, Drive, InstanceActionInfo, Logger, MachineConfig, MachineConfigUpdate,
    Metrics, NetworkInterface, PartialDrive, PartialNetworkInterface, Vsock,
};

/// One API request, parsed and checked as far as the API can without
/// knowing the VM's state.
#[derive(Clone, Debug, PartialEq)]
pub enum Request {
    /// `GET /`: answer with [`crate::models::InstanceInfo`].
    GetInstanceInfo,
    /// `GET /version`: answer with [`crate::models::FirecrackerVersion`].
    GetVersion,
    /// `GET /machine-config`: answer with [`MachineConfig`].
    GetMachineConfig,
    /// `GET /vm/config`: answer with [`crate::models::VmConfig`].
    GetVmConfig,
    /// `PUT /boot-source`.
    PutBootSource(BootSource),
    /// `PUT /machine-config`.
    PutMachineConfig(MachineConfig),
    /// `PATCH /machine-config`; never empty.
    PatchMachineConfig(MachineConfigUpdate),
    /// `PUT /drives/{drive_id}`; the path's id equals `drive_id`.
    PutDrive(Drive),
    /// `PATCH /drives/{drive_id}`; the path's id equals `drive_id`.
    PatchDrive(PartialDrive),
    /// `PUT /network-interfaces/{iface_id}`; the path's id equals `iface_id`.
    PutNetworkInterface(NetworkInterface),
    /// `PATCH /network-interfaces/{iface_id}`; the path's id equals
    /// `iface_id`.
    PatchNetworkInterface(PartialNetworkInterface),
    /// `PUT /vsock`.
    PutVsock(Vsock),
    /// `PUT /logger`.
    PutLogger(Logger),
    /// `PUT /metrics`.
    PutMetrics(Metrics),
    /// `PUT /actions`.
    Action(ActionType),
}

/// The answer to one request. Every error carries the text that goes to the
/// client as `{"fault_message": ...}`, Firecracker's error body.
#[derive(Clone, Debug, PartialEq)]
pub enum Response {
    /// 204 No Content: done.
    NoContent,
    /// 200 OK with this JSON body.
    Json(serde_json::Value),
    /// 400 Bad Request: Firecracker's answer to every refused request,
    /// including one that is not valid in the VM's current state.
    BadRequest(String),
    /// 404 Not Found: no such path.
    NotFound(String),
    /// 405 Method Not Allowed: the path exists but not with this method.
    MethodNotAllowed(String),
    /// 413 Payload Too Large: Firecracker's answer when a request would
    /// exceed a data store's limit (MMDS). An HTTP body over the API's limit
    /// is a 400, as in Firecracker, and never comes to the VMM.
    PayloadTooLarge(String),
    /// 500 Internal Server Error.
    InternalError(String),
}

impl Response {
    /// A 200 answer carrying `value` serialized; a 500 if it cannot be.
    pub fn json<T: Serialize + ?Sized>(value: &T) -> Response {
        match serde_json::to_value(value) {
            Ok(value) => Response::Json(value),
            Err(e) => Response::InternalError(format!("cannot serialize the answer: {e}")),
        }
    }

    /// The HTTP status code.
    pub fn status(&self) -> u16 {
        match self {
            Response::NoContent => 204,
            Response::Json(_) => 200,
            Response::BadRequest(_) => 400,
            Response::NotFound(_) => 404,
            Response::MethodNotAllowed(_) => 405,
            Response::PayloadTooLarge(_) => 413,
            Response::InternalError(_) => 500,
        }
    }

    /// The body as sent: the JSON for 200, `{"fault_message": ...}` for an
    /// error, nothing for 204.
    pub fn body(&self) -> Option<Vec<u8>> {
        match self {
            Response::NoContent => None,
            Response::Json(value) => Some(value.to_string().into_bytes()),
            Response::BadRequest(m)
            | Response::NotFound(m)
            | Response::MethodNotAllowed(m)
            | Response::PayloadTooLarge(m)
            | Response::InternalError(m) => Some(fault_body(m)),
        }
    }
}

/// `{"fault_message": message}` as bytes.
pub(crate) fn fault_body(message: &str) -> Vec<u8> {
    serde_json::json!({ "fault_message": message })
        .to_string()
        .into_bytes()
}

/// The Firecracker endpoints ferry does not implement: a clear 400 rather
/// than a 404 that would suggest a typo.
const UNSUPPORTED_RESOURCES: &[&str] = &[
    "balloon",
    "cpu-config",
    "entropy",
    "hotplug",
    "mmds",
    "pmem",
    "serial",
    "snapshot",
];

/// The path without a query string, and without the scheme and authority of
/// an absolute-form request target (`http://localhost/drives/x`).
fn abs_path(target: &str) -> &str {
    let path = match target.split_once("://") {
        Some((scheme, rest)) if !scheme.contains('/') => match rest.find('/') {
            Some(start) => rest.get(start..).unwrap_or("/"),
            None => "/",
        },
        _ => target,
    };
    match path.split_once('?') {
        Some((path, _query)) => path,
        None => path,
    }
}

/// Firecracker's check on a resource id in a path.
fn checked_id(id: Option<&str>) -> Result<&str, Response> {
    match id {
        None | Some("") => Err(Response::BadRequest("The ID cannot be empty.".into())),
        Some(id) if !id.chars().all(|c| c == '_' || c.is_alphanumeric()) => {
            Err(Response::BadRequest(
                "API Resource IDs can only contain alphanumeric characters and underscores.".into(),
            ))
        }
        Some(id) => Ok(id),
    }
}

/// Parses a JSON body, with Firecracker's error text. The body must be an
/// object: serde would otherwise take an array for a struct's fields in
/// order.
fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, Response> {
    if body.trim_ascii_start().first() == Some(&b'[') {
        return Err(Response::BadRequest(
            "An error occurred when deserializing the json body of a request: \
             expected a JSON object, found an array."
                .into(),
        ));
    }
    serde_json::from_slice(body).map_err(|e| {
        Response::BadRequest(format!(
            "An error occurred when deserializing the json body of a request: {e}."
        ))
    })
}

fn id_mismatch(path_id: &str, body_id: &str) -> Response {
    Response::BadRequest(format!(
        "The id from the path [{path_id}] does not match the id from the body [{body_id}]!"
    ))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Method {
    Get,
    Put,
    Patch,
    Other,
}

/// Turns one parsed HTTP request into a typed request, or the error response
/// Firecracker gives:
///
/// - an unknown path is a 404 and a known path with a method it does not take
///   a 405 (Firecracker answers both with a 400; the text is Firecracker's:
///   `Invalid request method and/or path: GET /foo.`);
/// - a Firecracker endpoint that ferry does not implement (`/balloon`,
///   `/snapshot/...`, `/mmds`, `PATCH /vm`...) is a 400 that says so;
/// - a GET with a body, a PUT or PATCH without one, an empty or invalid id in
///   the path, a body that is not JSON, has an unknown field, lacks a
///   required one or has a value of the wrong type, an id in the path that is
///   not the id in the body, and an empty `PATCH /machine-config` are 400s.
///
/// `path` may carry a query string (ignored) and may be in absolute form.
pub fn route(method: &str, path: &str, body: &[u8]) -> Result<Request, Response> {
    let abs = abs_path(path);
    let mut segments = abs.trim_start_matches('/').split_terminator('/');
    let resource = segments.next().unwrap_or("");
    let rest: Vec<&str> = segments.collect();
    let verb = match method {
        "GET" => Method::Get,
        "PUT" => Method::Put,
        "PATCH" => Method::Patch,
        _ => Method::Other,
    };
    let invalid = format!("Invalid request method and/or path: {method} {abs}.");
    let not_found = || Err(Response::NotFound(invalid.clone()));
    let not_allowed = || Err(Response::MethodNotAllowed(invalid.clone()));

    // Which methods the resource takes, and how many path segments follow it.
    let (methods, id_segment): (&[Method], bool) = match resource {
        "" | "version" => (&[Method::Get], false),
        "machine-config" => (&[Method::Get, Method::Put, Method::Patch], false),
        "vm" => match rest.as_slice() {
            ["config"] => (&[Method::Get], false),
            [] => {
                return Err(Response::BadRequest(format!(
                    "{method} {abs}: pausing and resuming the microVM is not supported by ferry."
                )))
            }
            _ => return not_found(),
        },
        "boot-source" | "vsock" | "logger" | "metrics" | "actions" => (&[Method::Put], false),
        "drives" | "network-interfaces" => (&[Method::Put, Method::Patch], true),
        r if UNSUPPORTED_RESOURCES.contains(&r) => {
            return Err(Response::BadRequest(format!(
                "{method} {abs}: this Firecracker endpoint is not supported by ferry."
            )))
        }
        _ => return not_found(),
    };
    let extra_segments = if resource == "vm" {
        0
    } else if id_segment {
        rest.len().saturating_sub(1)
    } else {
        rest.len()
    };
    if extra_segments > 0 {
        return not_found();
    }
    if !methods.contains(&verb) {
        return not_allowed();
    }
    match verb {
        Method::Get if !body.is_empty() => {
            return Err(Response::BadRequest(
                "GET request cannot have a body.".into(),
            ))
        }
        Method::Put if body.is_empty() => {
            return Err(Response::BadRequest("Empty PUT request.".into()))
        }
        Method::Patch if body.is_empty() => {
            return Err(Response::BadRequest("Empty PATCH request.".into()))
        }
        _ => {}
    }
    let path_id = if id_segment {
        Some(checked_id(rest.first().copied())?)
    } else {
        None
    };

    match (verb, resource, path_id) {
        (Method::Get, "", _) => Ok(Request::GetInstanceInfo),
        (Method::Get, "version", _) => Ok(Request::GetVersion),
        (Method::Get, "vm", _) => Ok(Request::GetVmConfig),
        (Method::Get, "machine-config", _) => Ok(Request::GetMachineConfig),
        (Method::Put, "machine-config", _) => parse_body(body).map(Request::PutMachineConfig),
        (Method::Patch, "machine-config", _) => {
            let update: MachineConfigUpdate = parse_body(body)?;
            if update.is_empty() {
                return Err(Response::BadRequest("Empty PATCH request.".into()));
            }
            Ok(Request::PatchMachineConfig(update))
        }
        (Method::Put, "boot-source", _) => parse_body(body).map(Request::PutBootSource),
        (Method::Put, "vsock", _) => parse_body(body).map(Request::PutVsock),
        (Method::Put, "logger", _) => parse_body(body).map(Request::PutLogger),
        (Method::Put, "metrics", _) => parse_body(body).map(Request::PutMetrics),
        (Method::Put, "actions", _) => {
            parse_body::<InstanceActionInfo>(body).map(|info| Request::Action(info.action_type))
        }
        (Method::Put, "drives", Some(id)) => {
            let drive: Drive = parse_body(body)?;
            if drive.drive_id != id {
                return Err(id_mismatch(id, &drive.drive_id));
            }
            Ok(Request::PutDrive(drive))
        }
        (Method::Patch, "drives", Some(id)) => {
            let drive: PartialDrive = parse_body(body)?;
            if drive.drive_id != id {
                return Err(id_mismatch(id, &drive.drive_id));
            }
            Ok(Request::PatchDrive(drive))
        }
        (Method::Put, "network-interfaces", Some(id)) => {
            let iface: NetworkInterface = parse_body(body)?;
            if iface.iface_id != id {
                return Err(id_mismatch(id, &iface.iface_id));
            }
            Ok(Request::PutNetworkInterface(iface))
        }
        (Method::Patch, "network-interfaces", Some(id)) => {
            let iface: PartialNetworkInterface = parse_body(body)?;
            if iface.iface_id != id {
                return Err(id_mismatch(id, &iface.iface_id));
            }
            Ok(Request::PatchNetworkInterface(iface))
        }
        _ => not_allowed(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::{PasstOptions, RateLimiter, TokenBucket};

    fn ok(method: &str, path: &str, body: &str) -> Request {
        match route(method, path, body.as_bytes()) {
            Ok(r) => r,
            Err(e) => panic!("{method} {path} {body}: {e:?}"),
        }
    }

    fn err(method: &str, path: &str, body: &str) -> Response {
        match route(method, path, body.as_bytes()) {
            Ok(r) => panic!("{method} {path} {body}: routed to {r:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn gets() {
        assert_eq!(ok("GET", "/", ""), Request::GetInstanceInfo);
        assert_eq!(ok("GET", "/version", ""), Request::GetVersion);
        assert_eq!(ok("GET", "/machine-config", ""), Request::GetMachineConfig);
        assert_eq!(ok("GET", "/vm/config", ""), Request::GetVmConfig);
        // Trailing slash, query string and absolute form, as Firecracker.
        assert_eq!(ok("GET", "/machine-config/", ""), Request::GetMachineConfig);
        assert_eq!(ok("GET", "/version?x=1", ""), Request::GetVersion);
        assert_eq!(
            ok("GET", "http://localhost/vm/config", ""),
            Request::GetVmConfig
        );
        assert_eq!(ok("GET", "http://localhost", ""), Request::GetInstanceInfo);
    }

    #[test]
    fn boot_source() {
        assert_eq!(
            ok(
                "PUT",
                "/boot-source",
                r#"{"kernel_image_path": "/vmlinux", "boot_args": "console=ttyS0 reboot=k panic=1"}"#
            ),
            Request::PutBootSource(BootSource {
                kernel_image_path: "/vmlinux".into(),
                boot_args: Some("console=ttyS0 reboot=k panic=1".into()),
                initrd_path: None,
            })
        );
    }

    #[test]
    fn machine_config() {
        assert_eq!(
            ok(
                "PUT",
                "/machine-config",
                r#"{"vcpu_count": 2, "mem_size_mib": 2048, "smt": false}"#
            ),
            Request::PutMachineConfig(MachineConfig {
                vcpu_count: 2,
                mem_size_mib: 2048,
                smt: false,
                track_dirty_pages: false,
                cpu_template: None,
                huge_pages: None,
            })
        );
        assert_eq!(
            ok("PATCH", "/machine-config", r#"{"vcpu_count": 4}"#),
            Request::PatchMachineConfig(MachineConfigUpdate {
                vcpu_count: Some(4),
                ..Default::default()
            })
        );
        assert_eq!(
            err("PATCH", "/machine-config", "{}"),
            Response::BadRequest("Empty PATCH request.".into())
        );
    }

    #[test]
    fn drives() {
        // As Kata Containers sends them.
        let r = ok(
            "PUT",
            "/drives/rootfs",
            r#"{"drive_id":"rootfs","path_on_host":"/run/kata/rootfs.img","is_root_device":false,"is_read_only":true,"rate_limiter":{},"io_engine":"Sync"}"#,
        );
        let Request::PutDrive(d) = r else {
            panic!("{r:?}")
        };
        assert_eq!(d.drive_id, "rootfs");
        assert_eq!(d.is_read_only, Some(true));
        assert_eq!(d.rate_limiter, Some(RateLimiter::default()));
        assert_eq!(
            ok(
                "PATCH",
                "/drives/drive_1",
                r#"{"drive_id":"drive_1","path_on_host":"/new.img"}"#
            ),
            Request::PatchDrive(PartialDrive {
                drive_id: "drive_1".into(),
                path_on_host: Some("/new.img".into()),
                rate_limiter: None,
            })
        );
    }

    #[test]
    fn network_interfaces() {
        let r = ok(
            "PUT",
            "/network-interfaces/eth0",
            r#"{"iface_id":"eth0","guest_mac":"02:fc:00:00:00:05","host_dev_name":"tap0","rx_rate_limiter":{},"tx_rate_limiter":{}}"#,
        );
        let Request::PutNetworkInterface(n) = r else {
            panic!("{r:?}")
        };
        assert_eq!(n.guest_mac.as_deref(), Some("02:fc:00:00:00:05"));
        let r = ok(
            "PUT",
            "/network-interfaces/net0",
            r#"{"iface_id":"net0","passt":{"publish":["8080:80/tcp"]}}"#,
        );
        let Request::PutNetworkInterface(n) = r else {
            panic!("{r:?}")
        };
        assert_eq!(
            n.passt,
            Some(PasstOptions {
                publish: vec!["8080:80/tcp".into()],
                args: vec![],
                binary: None
            })
        );
        assert_eq!(
            ok(
                "PATCH",
                "/network-interfaces/eth0",
                r#"{"iface_id":"eth0","tx_rate_limiter":{"bandwidth":{"size":100,"refill_time":10}}}"#
            ),
            Request::PatchNetworkInterface(PartialNetworkInterface {
                iface_id: "eth0".into(),
                rx_rate_limiter: None,
                tx_rate_limiter: Some(RateLimiter {
                    bandwidth: Some(TokenBucket {
                        size: 100,
                        one_time_burst: None,
                        refill_time: 10
                    }),
                    ops: None
                }),
            })
        );
    }

    #[test]
    fn vsock_logger_metrics_actions() {
        assert_eq!(
            ok(
                "PUT",
                "/vsock",
                r#"{"guest_cid": 3, "uds_path": "/tmp/v.sock"}"#
            ),
            Request::PutVsock(Vsock {
                guest_cid: 3,
                uds_path: "/tmp/v.sock".into(),
                vsock_id: None
            })
        );
        let r = ok(
            "PUT",
            "/logger",
            r#"{"log_path": "/tmp/log.fifo", "level": "Debug", "show_level": true, "show_log_origin": true}"#,
        );
        let Request::PutLogger(l) = r else {
            panic!("{r:?}")
        };
        assert_eq!(l.level.as_deref(), Some("Debug"));
        assert_eq!(
            ok("PUT", "/metrics", r#"{"metrics_path": "/tmp/m.fifo"}"#),
            Request::PutMetrics(Metrics {
                metrics_path: "/tmp/m.fifo".into()
            })
        );
        assert_eq!(
            ok("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#),
            Request::Action(ActionType::InstanceStart)
        );
        assert_eq!(
            ok("PUT", "/actions", r#"{"action_type": "SendCtrlAltDel"}"#),
            Request::Action(ActionType::SendCtrlAltDel)
        );
        assert_eq!(
            ok("PUT", "/actions", r#"{"action_type": "FlushMetrics"}"#),
            Request::Action(ActionType::FlushMetrics)
        );
    }

    /// (method, path, body, status, a piece of the fault message)
    const BAD: &[(&str, &str, &str, u16, &str)] = &[
        // Unknown paths.
        (
            "GET",
            "/foo",
            "",
            404,
            "Invalid request method and/or path: GET /foo.",
        ),
        ("GET", "/vm", "", 400, "not supported by ferry"),
        ("GET", "/vm/state", "", 404, "Invalid request"),
        ("GET", "/version/x", "", 404, "Invalid request"),
        ("PUT", "/drives/a/b", "{}", 404, "Invalid request"),
        ("PUT", "/boot-source/x", "{}", 404, "Invalid request"),
        // Firecracker endpoints ferry does not implement.
        ("PUT", "/balloon", "{}", 400, "not supported by ferry"),
        (
            "PUT",
            "/snapshot/create",
            "{}",
            400,
            "not supported by ferry",
        ),
        (
            "PATCH",
            "/vm",
            r#"{"state": "Paused"}"#,
            400,
            "not supported by ferry",
        ),
        ("GET", "/mmds", "", 400, "not supported by ferry"),
        // Wrong methods.
        (
            "POST",
            "/actions",
            "{}",
            405,
            "Invalid request method and/or path: POST /actions.",
        ),
        ("GET", "/boot-source", "", 405, "Invalid request"),
        ("PATCH", "/boot-source", "{}", 405, "Invalid request"),
        ("PUT", "/", "{}", 405, "Invalid request"),
        ("DELETE", "/drives/a", "", 405, "Invalid request"),
        ("GET", "/drives/a", "", 405, "Invalid request"),
        ("PUT", "/vm/config", "{}", 405, "Invalid request"),
        ("get", "/", "", 405, "Invalid request"),
        // Bodies where there must be none, and none where there must be one.
        ("GET", "/", "{}", 400, "GET request cannot have a body."),
        ("PUT", "/boot-source", "", 400, "Empty PUT request."),
        ("PATCH", "/drives/a", "", 400, "Empty PATCH request."),
        // Ids.
        ("PUT", "/drives", "{}", 400, "The ID cannot be empty."),
        ("PUT", "/drives/", "{}", 400, "The ID cannot be empty."),
        (
            "PUT",
            "/drives/a-b",
            "{}",
            400,
            "alphanumeric characters and underscores",
        ),
        (
            "PUT",
            "/drives/a",
            r#"{"drive_id": "b", "is_root_device": true, "path_on_host": "/x"}"#,
            400,
            "The id from the path [a] does not match the id from the body [b]!",
        ),
        (
            "PATCH",
            "/drives/a",
            r#"{"drive_id": "b"}"#,
            400,
            "does not match",
        ),
        (
            "PUT",
            "/network-interfaces/eth0",
            r#"{"iface_id": "eth1"}"#,
            400,
            "does not match",
        ),
        (
            "PATCH",
            "/network-interfaces/eth0",
            r#"{"iface_id": "x"}"#,
            400,
            "does not match",
        ),
        // Bodies that are not the model.
        (
            "PUT",
            "/boot-source",
            "kernel",
            400,
            "An error occurred when deserializing the json body of a request: expected",
        ),
        (
            "PUT",
            "/boot-source",
            r#"{"kernel_image_path": "/k""#,
            400,
            "EOF while parsing",
        ),
        (
            "PUT",
            "/boot-source",
            r#"{"kernel_image_path": "/k", "extra": 1}"#,
            400,
            "unknown field `extra`",
        ),
        (
            "PUT",
            "/boot-source",
            r#"{"kernel_image_path": 7}"#,
            400,
            "invalid type: integer `7`, expected a string",
        ),
        (
            "PUT",
            "/boot-source",
            r#" ["/k"]"#,
            400,
            "expected a JSON object, found an array",
        ),
        (
            "PUT",
            "/machine-config",
            r#"{"vcpu_count": 2}"#,
            400,
            "missing field `mem_size_mib`",
        ),
        (
            "PUT",
            "/machine-config",
            r#"{"vcpu_count": -1, "mem_size_mib": 1}"#,
            400,
            "invalid value",
        ),
        (
            "PATCH",
            "/machine-config",
            r#"{"vcpu_count": "two"}"#,
            400,
            "invalid type",
        ),
        (
            "PUT",
            "/actions",
            r#"{"action_type": "Pause"}"#,
            400,
            "unknown variant `Pause`",
        ),
        (
            "PUT",
            "/actions",
            r#"{}"#,
            400,
            "missing field `action_type`",
        ),
        (
            "PUT",
            "/vsock",
            r#"{"guest_cid": 3}"#,
            400,
            "missing field `uds_path`",
        ),
        (
            "PUT",
            "/logger",
            r#"{"level": "Loud"}"#,
            400,
            "unknown variant `Loud`",
        ),
        (
            "PUT",
            "/metrics",
            r#"{"metrics_path": "/m", "emit_id": true}"#,
            400,
            "unknown field `emit_id`",
        ),
        (
            "PUT",
            "/drives/a",
            r#"{"drive_id": "a", "is_root_device": "no"}"#,
            400,
            "invalid type",
        ),
        ("PUT", "/drives/a", "\u{0}\u{1}", 400, "deserializing"),
        (
            "PUT",
            "/boot-source",
            "{\"kernel_image_path\": \"\u{ff}\"} trailing",
            400,
            "trailing characters",
        ),
    ];

    #[test]
    fn bad_requests() {
        for &(method, path, body, status, message) in BAD {
            let response = err(method, path, body);
            assert_eq!(
                response.status(),
                status,
                "{method} {path} {body}: {response:?}"
            );
            let fault: serde_json::Value =
                serde_json::from_slice(&response.body().unwrap()).unwrap();
            let text = fault["fault_message"].as_str().unwrap();
            assert!(
                text.contains(message),
                "{method} {path} {body}: {text:?} lacks {message:?}"
            );
        }
    }

    #[test]
    fn non_utf8_body() {
        let r = route("PUT", "/boot-source", &[0xff, 0xfe, b'{']).unwrap_err();
        assert_eq!(r.status(), 400);
    }

    #[test]
    fn response_bodies() {
        assert_eq!(Response::NoContent.body(), None);
        assert_eq!(Response::NoContent.status(), 204);
        let r = Response::json(&serde_json::json!({"a": 1}));
        assert_eq!(
            (r.status(), r.body().unwrap()),
            (200, b"{\"a\":1}".to_vec())
        );
        assert_eq!(
            Response::InternalError("x\"y".into()).body().unwrap(),
            br#"{"fault_message":"x\"y"}"#.to_vec()
        );
        assert_eq!(Response::PayloadTooLarge(String::new()).status(), 413);
        assert_eq!(Response::MethodNotAllowed(String::new()).status(), 405);
        assert_eq!(Response::NotFound(String::new()).status(), 404);
    }
}
