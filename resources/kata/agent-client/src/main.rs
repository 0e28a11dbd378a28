// SPDX-License-Identifier: Apache-2.0
//! kata-agent-client: calls a few of kata-agent's ttrpc methods over a UNIX
//! socket and prints each answer as one line of JSON on stdout:
//!
//!     {"call":"Check","response":{"status":"SERVING"}}
//!
//! With `--hybrid-vsock` the socket is a hybrid-vsock one (Firecracker's,
//! Cloud Hypervisor's, ferry's `--vsock cid=N,uds=PATH`): the client first
//! sends `CONNECT <port>\n` and waits for `OK <host port>\n`, then speaks
//! ttrpc. Without it, ttrpc starts at once (Kata's remote-hypervisor agent
//! socket, or a local agent started with `KATA_AGENT_SERVER_ADDR=unix://…`).
//!
//! A call is its name, with an empty request, or `NAME=JSON`, its request
//! as JSON (`UpdateInterface={"interface":{"name":"eth0",...}}`). The JSON
//! both ways is the serde form of Kata's `protocols` messages: field names
//! as in the .proto files, enums as numbers, so a healthy agent's Check
//! answer is `{"status":1}` (SERVING).
//!
//! Exit status: 0 when every call succeeded, 1 when connecting or a call
//! failed (the reason on stderr), 2 on a usage error.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use protocols::agent::{
    CreateSandboxRequest, GuestDetailsRequest, ListInterfacesRequest, ListRoutesRequest,
    UpdateInterfaceRequest, UpdateRoutesRequest, VolumeStatsRequest,
};
use protocols::agent_ttrpc_async::AgentServiceClient;
use protocols::health::CheckRequest;
use protocols::health_ttrpc_async::HealthClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use ttrpc::asynchronous::transport::Socket;
use ttrpc::asynchronous::Client;

const USAGE: &str = "\
usage: kata-agent-client --server-address unix://PATH [--hybrid-vsock [--verb V]] [--port N]
                         [--timeout SECS] [--wait SECS] CALL...
  --server-address unix://PATH  the agent's socket (a plain PATH is accepted too)
  --hybrid-vsock                send `CONNECT <port>` first and expect `OK ...`
  --verb V                      the handshake's verb (default CONNECT; Kata's
                                runtime-rs sends `connect`)
  --port N                      vsock port for --hybrid-vsock (default 1024, the agent's)
  --timeout SECS                limit for connecting and for each call (default 10)
  --wait SECS                   retry connecting (and the handshake) for up to SECS
                                seconds, for a guest that is still booting (default 0)
CALL is NAME (an empty request) or NAME=JSON (the request), NAME one of:
  Check Version GetGuestDetails ListInterfaces ListRoutes UpdateInterface
  UpdateRoutes CreateSandbox GetVolumeStats
(default: Check GetGuestDetails). Each answer is printed as one line of JSON.";

const CALLS: &[&str] = &[
    "Check",
    "Version",
    "GetGuestDetails",
    "ListInterfaces",
    "ListRoutes",
    "UpdateInterface",
    "UpdateRoutes",
    "CreateSandbox",
    "GetVolumeStats",
];

/// One call: its name and its request as JSON (`None`: the empty request).
#[derive(Debug)]
struct Call {
    name: String,
    request: Option<String>,
}

#[derive(Debug)]
struct Options {
    path: String,
    hybrid_vsock: bool,
    verb: String,
    port: u32,
    timeout: Duration,
    wait: Duration,
    calls: Vec<Call>,
}

fn parse_args(args: &[String]) -> Result<Options, String> {
    let mut path = None;
    let mut hybrid_vsock = false;
    let mut verb = "CONNECT".to_string();
    let mut port = 1024u32;
    let mut timeout = Duration::from_secs(10);
    let mut wait = Duration::ZERO;
    let mut calls = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if let Some(call) = parse_call(a) {
            calls.push(call);
            continue;
        }
        let (name, inline) = match a.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(v.to_string())),
            _ => (a.as_str(), None),
        };
        let mut value = |what: &str| -> Result<String, String> {
            inline
                .clone()
                .or_else(|| it.next().cloned())
                .ok_or_else(|| format!("{name} needs {what}"))
        };
        let secs = |v: String| -> Result<Duration, String> {
            v.parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(Duration::from_secs_f64)
                .ok_or_else(|| format!("{name}: not a number of seconds: {v:?}"))
        };
        match name {
            "--server-address" => {
                let v = value("unix://PATH")?;
                let p = match v.split_once("://") {
                    Some(("unix", p)) => p.to_string(),
                    Some((scheme, _)) => {
                        return Err(format!(
                            "--server-address: scheme {scheme}:// is not supported (only unix://)"
                        ))
                    }
                    None => v,
                };
                if p.is_empty() {
                    return Err("--server-address: empty path".into());
                }
                path = Some(p);
            }
            "--hybrid-vsock" => hybrid_vsock = true,
            "--verb" => {
                verb = value("a verb")?;
                if verb.is_empty() || verb.contains(char::is_whitespace) {
                    return Err(format!("--verb: not a word: {verb:?}"));
                }
            }
            "--port" => {
                let v = value("a port number")?;
                port = v
                    .parse()
                    .map_err(|_| format!("--port: not a port: {v:?}"))?;
            }
            "--timeout" => timeout = secs(value("SECS")?)?,
            "--wait" => wait = secs(value("SECS")?)?,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let path = path.ok_or("--server-address is required")?;
    if calls.is_empty() {
        calls = ["Check", "GetGuestDetails"]
            .into_iter()
            .filter_map(parse_call)
            .collect();
    }
    Ok(Options {
        path,
        hybrid_vsock,
        verb,
        port,
        timeout,
        wait,
        calls,
    })
}

/// `NAME` or `NAME=JSON`, NAME a known call; `None` for anything else.
fn parse_call(arg: &str) -> Option<Call> {
    let (name, request) = match arg.split_once('=') {
        Some((name, json)) => (name, Some(json.to_string())),
        None => (arg, None),
    };
    CALLS.contains(&name).then(|| Call {
        name: name.to_string(),
        request,
    })
}

/// Connects the UNIX socket and, for hybrid vsock, does the CONNECT/OK handshake.
async fn connect_once(o: &Options) -> Result<UnixStream, String> {
    let mut s = UnixStream::connect(&o.path)
        .await
        .map_err(|e| format!("connect {}: {e}", o.path))?;
    if o.hybrid_vsock {
        s.write_all(format!("{} {}\n", o.verb, o.port).as_bytes())
            .await
            .map_err(|e| format!("hybrid vsock: sending {} {}: {e}", o.verb, o.port))?;
        // Byte by byte: nothing after the newline belongs to the handshake.
        let mut line = Vec::new();
        loop {
            let mut b = [0u8; 1];
            let n = s
                .read(&mut b)
                .await
                .map_err(|e| format!("hybrid vsock: reading the answer to CONNECT: {e}"))?;
            if n == 0 {
                return Err(format!(
                    "hybrid vsock: connection closed after CONNECT {} (got {:?}): is the agent listening on that port?",
                    o.port,
                    String::from_utf8_lossy(&line)
                ));
            }
            if b[0] == b'\n' {
                break;
            }
            line.push(b[0]);
            if line.len() > 128 {
                return Err(format!(
                    "hybrid vsock: answer to CONNECT too long: {:?}",
                    String::from_utf8_lossy(&line)
                ));
            }
        }
        let line = String::from_utf8_lossy(&line);
        if line != "OK" && !line.starts_with("OK ") {
            return Err(format!(
                "hybrid vsock: expected `OK <port>` after CONNECT {}, got {line:?}",
                o.port
            ));
        }
    }
    Ok(s)
}

async fn connect(o: &Options) -> Result<UnixStream, String> {
    let deadline = Instant::now() + o.wait;
    loop {
        let err = match tokio::time::timeout(o.timeout, connect_once(o)).await {
            Ok(Ok(s)) => return Ok(s),
            Ok(Err(e)) => e,
            Err(_) if o.hybrid_vsock => format!(
                "connecting {}: no `OK` answer to `CONNECT {}` within {:?} (is it a hybrid-vsock socket?)",
                o.path, o.port, o.timeout
            ),
            Err(_) => format!("connecting {}: timed out after {:?}", o.path, o.timeout),
        };
        if Instant::now() >= deadline {
            return Err(err);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn line<T: serde::Serialize>(call: &str, response: &T) -> Result<String, String> {
    let v = serde_json::json!({ "call": call, "response": response });
    serde_json::to_string(&v).map_err(|e| format!("{call}: cannot print the answer: {e}"))
}

/// The request of `call`: parsed from its JSON, else the empty one.
fn request<T: serde::de::DeserializeOwned + Default>(call: &Call) -> Result<T, String> {
    match &call.request {
        None => Ok(T::default()),
        Some(json) => serde_json::from_str(json)
            .map_err(|e| format!("{}: the request is not valid JSON for it: {e}", call.name)),
    }
}

async fn call(client: &Client, call: &Call, timeout: Duration) -> Result<String, String> {
    let ctx = || ttrpc::context::with_timeout(timeout.as_nanos().min(i64::MAX as u128) as i64);
    let health = HealthClient::new(client.clone());
    let agent = AgentServiceClient::new(client.clone());
    let name = call.name.as_str();
    let err = |e: ttrpc::Error| format!("{name}: {e}");
    let answer = async {
        match name {
            "Check" => line(
                name,
                &health
                    .check(ctx(), &request::<CheckRequest>(call)?)
                    .await
                    .map_err(err)?,
            ),
            "Version" => line(
                name,
                &health
                    .version(ctx(), &request::<CheckRequest>(call)?)
                    .await
                    .map_err(err)?,
            ),
            "GetGuestDetails" => {
                let req = match call.request {
                    Some(_) => request::<GuestDetailsRequest>(call)?,
                    None => GuestDetailsRequest {
                        mem_block_size: true,
                        mem_hotplug_probe: true,
                        ..Default::default()
                    },
                };
                line(
                    name,
                    &agent.get_guest_details(ctx(), &req).await.map_err(err)?,
                )
            }
            "ListInterfaces" => line(
                name,
                &agent
                    .list_interfaces(ctx(), &request::<ListInterfacesRequest>(call)?)
                    .await
                    .map_err(err)?,
            ),
            "ListRoutes" => line(
                name,
                &agent
                    .list_routes(ctx(), &request::<ListRoutesRequest>(call)?)
                    .await
                    .map_err(err)?,
            ),
            "UpdateInterface" => line(
                name,
                &agent
                    .update_interface(ctx(), &request::<UpdateInterfaceRequest>(call)?)
                    .await
                    .map_err(err)?,
            ),
            "UpdateRoutes" => line(
                name,
                &agent
                    .update_routes(ctx(), &request::<UpdateRoutesRequest>(call)?)
                    .await
                    .map_err(err)?,
            ),
            "CreateSandbox" => line(
                name,
                &agent
                    .create_sandbox(ctx(), &request::<CreateSandboxRequest>(call)?)
                    .await
                    .map_err(err)?,
            ),
            "GetVolumeStats" => line(
                name,
                &agent
                    .get_volume_stats(ctx(), &request::<VolumeStatsRequest>(call)?)
                    .await
                    .map_err(err)?,
            ),
            other => Err(format!("unknown call {other}")),
        }
    };
    // ttrpc's own timeout covers the call once sent; this one also a stuck send.
    tokio::time::timeout(timeout + Duration::from_secs(1), answer)
        .await
        .unwrap_or_else(|_| Err(format!("{name}: timed out after {timeout:?}")))
}

async fn run(o: Options) -> Result<(), String> {
    let stream = connect(&o).await?;
    let client = Client::new(Socket::from(stream));
    for c in &o.calls {
        println!("{}", call(&client, c, o.timeout).await?);
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let o = match parse_args(&args) {
        Ok(o) => o,
        Err(e) if e.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("kata-agent-client: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kata-agent-client: cannot start tokio: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(o)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kata-agent-client: {e}");
            ExitCode::FAILURE
        }
    }
}
