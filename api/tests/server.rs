// SPDX-License-Identifier: Apache-2.0
//! The real server thread on a socket in a temporary directory, driven by
//! `UnixStream` clients and a fake VMM thread.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use ferry_api::models::{BootSource, InstanceInfo};
use ferry_api::{spawn, ApiRequest, ApiSocket, Error, Request, Response, ServerHandle};
use vmm_sys_util::eventfd::EventFd;

/// A fresh directory under the system's temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "ferry-api-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    fn socket(&self) -> PathBuf {
        self.0.join("api.sock")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What the fake VMM answers.
fn answer(request: &Request) -> Option<Response> {
    Some(match request {
        Request::GetInstanceInfo => Response::json(&InstanceInfo {
            id: "anonymous-instance".into(),
            state: "Not started".into(),
            vmm_version: "0.1.0".into(),
            app_name: "ferry".into(),
        }),
        Request::GetVersion => Response::json(&serde_json::json!({"firecracker_version": "0.1.0"})),
        Request::PutBootSource(BootSource {
            kernel_image_path, ..
        }) => match kernel_image_path.as_str() {
            "/drop" => return None,
            "/slow" => {
                thread::sleep(Duration::from_millis(300));
                Response::NoContent
            }
            "/missing" => Response::BadRequest("Cannot open the kernel image".into()),
            _ => Response::NoContent,
        },
        _ => Response::NoContent,
    })
}

/// A running server with a fake VMM behind it.
struct Setup {
    dir: TempDir,
    server: Option<ServerHandle>,
    wake: Arc<EventFd>,
    vmm: Option<thread::JoinHandle<usize>>,
}

impl Setup {
    fn new() -> Setup {
        let dir = TempDir::new();
        let (tx, rx) = mpsc::channel::<ApiRequest>();
        let wake = Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let server = spawn(ApiSocket::bind(&dir.socket()).unwrap(), tx, wake.clone()).unwrap();
        let vmm = thread::spawn(move || {
            let mut served = 0;
            for request in rx {
                served += 1;
                if let Some(response) = answer(request.request()) {
                    request.respond(response);
                }
            }
            served
        });
        Setup {
            dir,
            server: Some(server),
            wake,
            vmm: Some(vmm),
        }
    }

    fn connect(&self) -> Client {
        Client::connect(&self.dir.socket())
    }

    /// Stops the server; returns how many requests the VMM saw.
    fn stop(&mut self) -> usize {
        if let Some(server) = self.server.take() {
            server.stop();
        }
        self.vmm.take().map(|t| t.join().unwrap()).unwrap_or(0)
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        self.server.take();
    }
}

#[derive(Debug)]
struct HttpResponse {
    status: u16,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

impl HttpResponse {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    fn fault(&self) -> String {
        self.json()["fault_message"].as_str().unwrap().to_string()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    fn connect(path: &Path) -> Client {
        let stream = UnixStream::connect(path).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        Client {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        }
    }

    fn send(&mut self, raw: &[u8]) {
        self.writer.write_all(raw).unwrap();
    }

    fn request(&mut self, method: &str, path: &str, body: &str) -> HttpResponse {
        let raw = if body.is_empty() {
            format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n\r\n")
        } else {
            format!(
                "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
        };
        self.send(raw.as_bytes());
        self.response()
    }

    fn response(&mut self) -> HttpResponse {
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        let status = line
            .split(' ')
            .nth(1)
            .unwrap_or_else(|| panic!("status line {line:?}"))
            .parse()
            .unwrap();
        let mut headers = HashMap::new();
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).unwrap();
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').unwrap();
            headers.insert(name.to_ascii_lowercase(), value.trim().to_string());
        }
        let length: usize = headers
            .get("content-length")
            .map(|v| v.parse().unwrap())
            .unwrap_or(0);
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body).unwrap();
        HttpResponse {
            status,
            headers,
            body,
        }
    }

    /// True if the server closed the connection (EOF, or reset).
    fn is_closed(&mut self) -> bool {
        let mut byte = [0u8; 1];
        match self.reader.read(&mut byte) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => e.kind() == ErrorKind::ConnectionReset,
        }
    }
}

#[test]
fn keep_alive_serves_several_requests_on_one_connection() {
    let mut setup = Setup::new();
    let mut c = setup.connect();
    let r = c.request("GET", "/", "");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("connection"), Some("keep-alive"));
    assert_eq!(r.json()["state"], "Not started");
    let r = c.request(
        "PUT",
        "/boot-source",
        r#"{"kernel_image_path": "/vmlinux"}"#,
    );
    assert_eq!(r.status, 204);
    assert_eq!(r.header("content-length"), None);
    assert!(r.body.is_empty());
    let r = c.request(
        "PUT",
        "/boot-source",
        r#"{"kernel_image_path": "/missing"}"#,
    );
    assert_eq!(
        (r.status, r.fault()),
        (400, "Cannot open the kernel image".into())
    );
    let r = c.request("GET", "/nowhere", "");
    assert_eq!(r.status, 404);
    let r = c.request("GET", "/boot-source", "");
    assert_eq!(r.status, 405);
    let r = c.request(
        "PUT",
        "/drives/a",
        r#"{"drive_id": "a", "is_root_device": "x"}"#,
    );
    assert_eq!(r.status, 400);
    assert!(r.fault().contains("invalid type"), "{}", r.fault());
    let r = c.request("GET", "/version", "");
    assert_eq!(r.json()["firecracker_version"], "0.1.0");
    drop(c);
    // Only the requests that routed reached the VMM, and each woke it.
    assert_eq!(setup.stop(), 4);
    assert_eq!(setup.wake.read().unwrap(), 4);
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let setup = Setup::new();
    let mut c = setup.connect();
    c.send(
        b"PUT /boot-source HTTP/1.1\r\nContent-Length: 31\r\n\r\n{\"kernel_image_path\": \"/slow\"}\n\
          GET /nowhere HTTP/1.1\r\n\r\n\
          GET / HTTP/1.1\r\n\r\n\
          GET /version HTTP/1.1\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(c.response().status, 204);
    assert_eq!(c.response().status, 404);
    assert_eq!(c.response().json()["app_name"], "ferry");
    let last = c.response();
    assert_eq!(last.json()["firecracker_version"], "0.1.0");
    assert_eq!(last.header("connection"), Some("close"));
    assert!(c.is_closed());
}

#[test]
fn a_request_split_across_writes_is_assembled() {
    let setup = Setup::new();
    let mut c = setup.connect();
    let raw = b"PUT /machine-config HTTP/1.1\r\nContent-Length: 38\r\n\r\n{\"vcpu_count\": 2, \"mem_size_mib\": 256}";
    for piece in raw.chunks(7) {
        c.send(piece);
        thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(c.response().status, 204);
}

#[test]
fn http_1_0_and_connection_close_close_the_connection() {
    let setup = Setup::new();
    let mut c = setup.connect();
    c.send(b"GET / HTTP/1.0\r\n\r\n");
    let r = c.response();
    assert_eq!((r.status, r.header("connection")), (200, Some("close")));
    assert!(c.is_closed());

    let mut c = setup.connect();
    c.send(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n");
    let r = c.response();
    assert_eq!((r.status, r.header("connection")), (200, Some("close")));
    assert!(c.is_closed());
}

#[test]
fn malformed_requests_get_400_and_a_closed_connection() {
    let setup = Setup::new();
    let cases: &[(&[u8], &str)] = &[
        (b"NOT HTTP AT ALL\r\n\r\n", "invalid HTTP request"),
        (
            b"PUT /boot-source HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            "Transfer-Encoding",
        ),
        (
            b"PUT /boot-source HTTP/1.1\r\nContent-Length: abc\r\n\r\n{}",
            "invalid Content-Length",
        ),
        (
            b"PUT /drives/a HTTP/1.1\r\nContent-Length: 10000000\r\n\r\n",
            "Request payload with size 10000000 is larger than the limit of 51200 allowed by server.",
        ),
    ];
    for (raw, message) in cases {
        let mut c = setup.connect();
        c.send(raw);
        let r = c.response();
        assert_eq!(r.status, 400, "{:?}", String::from_utf8_lossy(raw));
        assert_eq!(r.header("connection"), Some("close"));
        assert!(r.fault().contains(message), "{:?}", r.fault());
        assert!(c.is_closed());
    }
}

#[test]
fn an_actual_huge_body_is_refused() {
    let setup = Setup::new();
    let mut c = setup.connect();
    let body = format!(r#"{{"kernel_image_path": "{}"}}"#, "k".repeat(60_000));
    let raw = format!(
        "PUT /boot-source HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    // The server may close before all of it is written.
    let _ = c.writer.write_all(raw.as_bytes());
    let r = c.response();
    assert_eq!(r.status, 400);
    assert!(r.fault().contains("larger than the limit"), "{}", r.fault());
    assert!(c.is_closed());
}

#[test]
fn a_body_without_content_length_is_not_read_as_a_body() {
    let setup = Setup::new();
    let mut c = setup.connect();
    c.send(b"PUT /boot-source HTTP/1.1\r\n\r\n{\"kernel_image_path\": \"/k\"}");
    let r = c.response();
    assert_eq!((r.status, r.fault()), (400, "Empty PUT request.".into()));
    // What follows is taken for the next request, which is malformed.
    let r = c.response();
    assert_eq!(r.status, 400);
    assert!(c.is_closed());
}

#[test]
fn two_connections_are_served_concurrently() {
    let setup = Setup::new();
    let mut a = setup.connect();
    let mut b = setup.connect();
    a.send(b"GET / HTTP/1.1\r\n\r\n");
    b.send(b"GET /version HTTP/1.1\r\n\r\n");
    assert_eq!(b.response().status, 200);
    assert_eq!(a.response().status, 200);
    // Interleaved from two threads.
    let path = setup.dir.socket();
    let threads: Vec<_> = (0..2)
        .map(|i| {
            let path = path.clone();
            thread::spawn(move || {
                let mut c = Client::connect(&path);
                for _ in 0..20 {
                    let r = c.request(
                        "PUT",
                        &format!("/drives/d{i}"),
                        &format!(r#"{{"drive_id": "d{i}", "is_root_device": false, "path_on_host": "/x"}}"#),
                    );
                    assert_eq!(r.status, 204);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn a_stalled_client_does_not_block_another() {
    let setup = Setup::new();
    let mut stalled = setup.connect();
    stalled.send(b"PUT /boot-source HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"kern");
    let mut idle = setup.connect();
    let start = Instant::now();
    let mut c = setup.connect();
    assert_eq!(c.request("GET", "/", "").status, 200);
    assert!(start.elapsed() < Duration::from_secs(2));
    // The idle one is still served.
    assert_eq!(idle.request("GET", "/version", "").status, 200);
    drop(stalled);
}

#[test]
fn too_many_connections_get_503() {
    let setup = Setup::new();
    let mut open: Vec<Client> = (0..ferry_api::MAX_CONNECTIONS)
        .map(|_| {
            let mut c = setup.connect();
            assert_eq!(c.request("GET", "/", "").status, 200);
            c
        })
        .collect();
    let mut extra = setup.connect();
    let r = extra.response();
    assert_eq!(r.status, 503);
    assert!(r.fault().contains("Too many"), "{}", r.fault());
    assert!(extra.is_closed());
    // Once one goes, another may come.
    drop(open.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut c = setup.connect();
        c.send(b"GET / HTTP/1.1\r\n\r\n");
        if c.response().status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "no slot came free");
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_vmm_gone_gives_503_and_a_dropped_request_500() {
    let dir = TempDir::new();
    let (tx, rx) = mpsc::channel::<ApiRequest>();
    drop(rx);
    let wake = Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
    let _server = spawn(ApiSocket::bind(&dir.socket()).unwrap(), tx, wake).unwrap();
    let mut c = Client::connect(&dir.socket());
    // Routing errors need no VMM.
    assert_eq!(c.request("GET", "/nowhere", "").status, 404);
    let r = c.request("GET", "/", "");
    assert_eq!((r.status, r.header("connection")), (503, Some("close")));
    assert!(c.is_closed());

    let setup = Setup::new();
    let mut c = setup.connect();
    let r = c.request("PUT", "/boot-source", r#"{"kernel_image_path": "/drop"}"#);
    assert_eq!(r.status, 500);
    assert!(c.is_closed());
}

#[test]
fn the_socket_file_is_removed_and_an_existing_path_refused() {
    let mut setup = Setup::new();
    let path = setup.dir.socket();
    assert!(path.exists());
    // A second server on a live socket's path.
    assert!(matches!(
        ApiSocket::bind(&path),
        Err(Error::SocketInUse(p)) if p == path
    ));
    // An idle client does not hold up the stop, and sees the connection end.
    let mut idle = setup.connect();
    assert_eq!(idle.request("GET", "/", "").status, 200);
    let start = Instant::now();
    setup.stop();
    assert!(start.elapsed() < Duration::from_secs(2));
    assert!(!path.exists());
    assert!(idle.is_closed());
    assert!(UnixStream::connect(&path).is_err());

    // A plain file is an existing path too.
    let dir = TempDir::new();
    let file = dir.0.join("file");
    std::fs::write(&file, b"x").unwrap();
    let e = ApiSocket::bind(&file).unwrap_err();
    assert!(e.to_string().contains("already in use"), "{e}");
    assert!(file.exists());
    // An unbindable path.
    assert!(matches!(
        ApiSocket::bind(&dir.0.join("no/such/dir/api.sock")),
        Err(Error::Bind { .. })
    ));
    // A socket bound but never served is removed too, and the path is free.
    let sock = dir.socket();
    let socket = ApiSocket::bind(&sock).unwrap();
    assert_eq!(socket.path(), sock);
    drop(socket);
    assert!(!sock.exists());
    drop(ApiSocket::bind(&sock).unwrap());
}

#[test]
fn the_server_thread_is_named_ferry_api() {
    let setup = Setup::new();
    let task_dir = Path::new("/proc/self/task");
    let names: Vec<String> = std::fs::read_dir(task_dir)
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_string())
        .collect();
    assert!(names.iter().any(|n| n == "ferry_api"), "{names:?}");
    drop(setup);
}

/// curl, if this machine has it, as Firecracker's users drive the API.
#[test]
fn curl_if_installed() {
    if Command::new("curl").arg("--version").output().is_err() {
        eprintln!("curl is not installed: skipped");
        return;
    }
    let setup = Setup::new();
    let sock = setup.dir.socket();
    let curl = |args: &[&str]| {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "10", "--unix-socket"])
            .arg(&sock)
            .args(["-w", "\n%{http_code}"])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let out = curl(&["http://localhost/"]);
    assert!(
        out.ends_with("\n200") && out.contains("Not started"),
        "{out}"
    );
    let out = curl(&[
        "-X",
        "PUT",
        "-H",
        "Content-Type: application/json",
        "-d",
        r#"{"kernel_image_path": "/vmlinux", "boot_args": "console=ttyS0"}"#,
        "http://localhost/boot-source",
    ]);
    assert!(out.ends_with("\n204"), "{out}");
    // A large body with Expect: 100-continue.
    let body = format!(
        r#"{{"kernel_image_path": "/vmlinux", "boot_args": "{}"}}"#,
        "x".repeat(20_000)
    );
    let start = Instant::now();
    let out = curl(&[
        "-X",
        "PUT",
        "-H",
        "Expect: 100-continue",
        "-d",
        &body,
        "http://localhost/boot-source",
    ]);
    assert!(out.ends_with("\n204"), "{out}");
    // curl waits a second for `100 Continue` before sending the body anyway.
    assert!(
        start.elapsed() < Duration::from_millis(900),
        "no 100 Continue"
    );
    let out = curl(&["-X", "PUT", "-d", "{}", "http://localhost/actions"]);
    assert!(
        out.ends_with("\n400") && out.contains("missing field `action_type`"),
        "{out}"
    );
}
