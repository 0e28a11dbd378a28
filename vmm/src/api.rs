// SPDX-License-Identifier: Apache-2.0
//! ferry's side of the Firecracker-compatible API: each typed request
//! (`ferry_api`) applied to the controller, Firecracker's models turned
//! into the machine's description and back, the configuration file as
//! the requests it stands for, and the metrics file.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use ferry_api::models::{self, ActionType};
use ferry_api::{ApiRequest, Request, Response};
use ferry_devices::vm_end::ExitReason;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use crate::cli::DEFAULT_CMDLINE;
use crate::config::{self, parse_mac, publish_to_passt, valid_serial};
use crate::resources::{
    BootSource, DriveSpec, MachineSpec, NetBackendSpec, NetSpec, VsockSpec, DEFAULT_MAC,
};
use crate::vmm::{self, State, Vmm};
use ferry_devices::virtio::net::Tap;

/// The answer to a pre-boot request after the VM has started (Firecracker's text).
const AFTER_START: &str = "The requested operation is not supported after starting the microVM.";
/// How often the metrics are written once a metrics file is set.
const METRICS_EVERY: Duration = Duration::from_secs(60);
/// The name `GET /` reports.
const APP_NAME: &str = "ferry";

/// The API's own state beside the controller's: the instance's id, the
/// logger and metrics settings, the request count.
#[derive(Debug)]
pub struct Api {
    id: String,
    logger: Option<models::Logger>,
    metrics: Option<(models::Metrics, File)>,
    requests: u64,
    started: Instant,
}

/// Wakes the main loop for API requests and, every [`METRICS_EVERY`],
/// for a metrics flush.
struct Wake {
    requests: Arc<EventFd>,
    metrics: TimerFd,
    flush_due: Arc<AtomicBool>,
}

/// Event tokens of [`Wake`].
const REQUESTS: u32 = 0;
const METRICS: u32 = 1;

impl MutEventSubscriber for Wake {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        match events.data() {
            REQUESTS => {
                let _ = self.requests.read();
            }
            METRICS => {
                let _ = self.metrics.wait();
                self.flush_due.store(true, Ordering::SeqCst);
            }
            _ => {}
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        let watched = [
            ops.add(Events::with_data(
                self.requests.as_ref(),
                REQUESTS,
                EventSet::IN,
            )),
            ops.add(Events::with_data(&self.metrics, METRICS, EventSet::IN)),
        ];
        for result in watched {
            if let Err(e) = result {
                log::error!("cannot watch the API's events: {e:?}");
            }
        }
    }
}

impl Api {
    /// The API of instance `id`; `started` is ferry's start.
    pub fn new(id: String, started: Instant) -> Self {
        Self {
            id,
            logger: None,
            metrics: None,
            requests: 0,
            started,
        }
    }

    /// Runs `vmm`'s main loop, answering the requests that arrive on
    /// `requests` (the server writes `wake` for each), until the VM ends;
    /// then stops it.
    pub fn serve(
        mut self,
        mut vmm: Vmm,
        requests: Receiver<ApiRequest>,
        wake: Arc<EventFd>,
    ) -> Result<ExitReason, vmm::Error> {
        let mut metrics = TimerFd::new()
            .map_err(|e| crate::vm::Error::Resource("the metrics timer", e.into()))?;
        metrics
            .reset(METRICS_EVERY, Some(METRICS_EVERY))
            .map_err(|e| crate::vm::Error::Resource("the metrics timer", e.into()))?;
        let flush_due = Arc::new(AtomicBool::new(false));
        vmm.event_loop().add(Arc::new(Mutex::new(Wake {
            requests: wake,
            metrics,
            flush_due: flush_due.clone(),
        })));
        let outcome = loop {
            // Requests first: some may have come before the loop started.
            while let Ok(request) = requests.try_recv() {
                let response = self.handle(&mut vmm, request.request().clone());
                request.respond(response);
            }
            if flush_due.swap(false, Ordering::SeqCst) {
                self.flush_metrics(&vmm);
            }
            match vmm.run_once() {
                Ok(Some(reason)) => break Ok(reason),
                Ok(None) => {}
                Err(e) => break Err(e),
            }
        };
        // Requests still queued get an answer rather than a closed connection.
        while let Ok(request) = requests.try_recv() {
            request.respond(Response::BadRequest("the microVM has ended".into()));
        }
        if self.metrics.is_some() {
            self.flush_metrics(&vmm);
        }
        vmm.stop();
        outcome
    }

    /// Applies one request to `vmm` and says how it went.
    pub fn handle(&mut self, vmm: &mut Vmm, request: Request) -> Response {
        self.requests += 1;
        log::debug!("API request: {request:?}");
        let pre_boot = vmm.state() == State::NotStarted;
        let result = match request {
            Request::GetInstanceInfo => Ok(Response::json(&models::InstanceInfo {
                id: self.id.clone(),
                state: match vmm.state() {
                    State::NotStarted => "Not started",
                    State::Running => "Running",
                }
                .into(),
                vmm_version: env!("CARGO_PKG_VERSION").into(),
                app_name: APP_NAME.into(),
            })),
            Request::GetVersion => Ok(Response::json(&models::FirecrackerVersion {
                firecracker_version: crate::cli::FIRECRACKER_API_VERSION.into(),
            })),
            Request::GetMachineConfig => Ok(Response::json(&machine_model(vmm))),
            Request::GetVmConfig => Ok(Response::json(&self.vm_config(vmm))),
            Request::Action(ActionType::InstanceStart) if pre_boot => vmm
                .start_vm()
                .map(|()| Response::NoContent)
                .map_err(|e| chain(&e)),
            Request::Action(ActionType::InstanceStart) => Err(AFTER_START.into()),
            Request::Action(ActionType::SendCtrlAltDel) => {
                if pre_boot {
                    Err("the microVM has not started".into())
                } else if vmm.send_ctrl_alt_del() {
                    Ok(Response::NoContent)
                } else {
                    Err("the guest has no keyboard driver to take Ctrl-Alt-Del yet".into())
                }
            }
            Request::Action(ActionType::FlushMetrics) => {
                if self.metrics.is_some() {
                    self.flush_metrics(vmm);
                    Ok(Response::NoContent)
                } else {
                    Err("metrics are not configured: PUT /metrics first".into())
                }
            }
            Request::PatchDrive(drive) => patch_drive(vmm, drive),
            Request::PatchNetworkInterface(iface) => patch_network_interface(vmm, iface),
            _ if !pre_boot => Err(AFTER_START.into()),
            Request::PutBootSource(boot) => put_boot_source(vmm, boot),
            Request::PutMachineConfig(machine) => put_machine_config(vmm, &machine),
            Request::PatchMachineConfig(update) => {
                put_machine_config(vmm, &update.apply_to(&machine_model(vmm)))
            }
            Request::PutDrive(drive) => put_drive(vmm, drive),
            Request::PutNetworkInterface(iface) => put_network_interface(vmm, iface),
            Request::PutVsock(vsock) => put_vsock(vmm, vsock),
            Request::PutLogger(logger) => self.put_logger(logger),
            Request::PutMetrics(metrics) => self.put_metrics(metrics),
        };
        match result {
            Ok(response) => response,
            Err(message) => {
                log::warn!("API request refused: {message}");
                Response::BadRequest(message)
            }
        }
    }

    fn put_logger(&mut self, logger: models::Logger) -> Result<Response, String> {
        if let Some(path) = &logger.log_path {
            let file = crate::logger::open_sink(Path::new(path))
                .map_err(|e| format!("cannot open the log {path}: {e}"))?;
            crate::logger::redirect(
                file,
                logger.level_filter(),
                logger.show_level.unwrap_or(false),
                logger.show_log_origin.unwrap_or(false),
            );
        } else {
            log::set_max_level(logger.level_filter());
        }
        self.logger = Some(logger);
        Ok(Response::NoContent)
    }

    fn put_metrics(&mut self, metrics: models::Metrics) -> Result<Response, String> {
        let file = crate::logger::open_sink(Path::new(&metrics.metrics_path))
            .map_err(|e| format!("cannot open the metrics file {}: {e}", metrics.metrics_path))?;
        self.metrics = Some((metrics, file));
        Ok(Response::NoContent)
    }

    /// Writes one JSON line of the counters ferry has, Firecracker's
    /// field names where the meaning is the same.
    fn flush_metrics(&mut self, vmm: &Vmm) {
        let requests = self.requests;
        let uptime_us = self.started.elapsed().as_micros() as u64;
        let Some((_, file)) = &mut self.metrics else {
            // Not configured: nothing to write.
            return;
        };
        let utc_timestamp_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let mut line = serde_json::json!({
            "utc_timestamp_ms": utc_timestamp_ms,
            "api_server": { "requests_count": requests, "uptime_us": uptime_us },
        });
        if let (Some(devices), serde_json::Value::Object(map)) = (vmm.device_metrics(), &mut line) {
            map.extend(devices);
        }
        let mut text = line.to_string();
        text.push('\n');
        // A full pipe nobody reads drops the line rather than stall the VM.
        if let Err(e) = file.write_all(text.as_bytes()) {
            log::debug!("metrics not written: {e}");
        }
    }

    /// The whole configuration, as `GET /vm/config` shows it.
    fn vm_config(&self, vmm: &Vmm) -> models::VmConfig {
        let resources = vmm.resources();
        models::VmConfig {
            boot_source: resources.boot.as_ref().map(|boot| models::BootSource {
                kernel_image_path: boot.kernel.display().to_string(),
                boot_args: Some(boot.cmdline.clone()),
                initrd_path: boot.initrd.as_ref().map(|p| p.display().to_string()),
            }),
            machine_config: Some(machine_model(vmm)),
            drives: resources
                .drives
                .iter()
                .map(|d| models::Drive {
                    drive_id: d.id.clone(),
                    path_on_host: Some(d.path.display().to_string()),
                    is_root_device: d.root,
                    is_read_only: Some(d.read_only),
                    partuuid: d.partuuid.clone(),
                    ..Default::default()
                })
                .collect(),
            network_interfaces: resources
                .net
                .iter()
                .map(|n| models::NetworkInterface {
                    iface_id: n.id.clone(),
                    guest_mac: Some(format_mac(&n.mac)),
                    host_dev_name: match &n.backend {
                        NetBackendSpec::Tap(name) => Some(name.clone()),
                        NetBackendSpec::Passt(_) => None,
                    },
                    passt: match &n.backend {
                        NetBackendSpec::Passt(passt) => Some(models::PasstOptions {
                            publish: Vec::new(),
                            args: passt.args.clone(),
                            binary: Some(passt.binary.display().to_string()),
                        }),
                        NetBackendSpec::Tap(_) => None,
                    },
                    ..Default::default()
                })
                .collect(),
            vsock: resources.vsock.as_ref().map(|v| models::Vsock {
                guest_cid: v.cid,
                uds_path: v.uds_path.display().to_string(),
                vsock_id: None,
            }),
            logger: self.logger.clone(),
            metrics: self.metrics.as_ref().map(|(m, _)| m.clone()),
            ..Default::default()
        }
    }
}

/// `err` and its causes on one line.
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut line = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        line.push_str(": ");
        line.push_str(&cause.to_string());
        source = cause.source();
    }
    line
}

/// `aa:bb:cc:dd:ee:ff`.
fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The machine's size as Firecracker's model.
fn machine_model(vmm: &Vmm) -> models::MachineConfig {
    let machine = vmm.resources().machine;
    models::MachineConfig {
        vcpu_count: u8::try_from(machine.cpus).unwrap_or(u8::MAX),
        mem_size_mib: machine.memory_mib as usize,
        smt: false,
        track_dirty_pages: false,
        cpu_template: None,
        huge_pages: None,
    }
}

/// Refuses a rate limiter that limits anything: ferry has none yet.
fn no_rate_limit(what: &str, limiter: &Option<models::RateLimiter>) -> Result<(), String> {
    match limiter {
        Some(l) if !l.is_empty() => Err(format!(
            "{what}: rate limiters are not implemented by ferry (send {{}} or leave it out)"
        )),
        _ => Ok(()),
    }
}

/// Checks that `path` names a file ferry can open (it is opened for good at start).
fn check_file(what: &str, path: &str) -> Result<PathBuf, String> {
    File::open(path).map_err(|e| format!("cannot open the {what} {path}: {e}"))?;
    Ok(PathBuf::from(path))
}

fn put_boot_source(vmm: &mut Vmm, boot: models::BootSource) -> Result<Response, String> {
    let kernel = check_file("kernel", &boot.kernel_image_path)?;
    let initrd = boot
        .initrd_path
        .as_deref()
        .map(|p| check_file("initrd", p))
        .transpose()?;
    let resources = vmm.resources_mut().ok_or(AFTER_START)?;
    resources.boot = Some(BootSource {
        kernel,
        initrd,
        cmdline: boot
            .boot_args
            .unwrap_or_else(|| DEFAULT_CMDLINE.to_string()),
    });
    Ok(Response::NoContent)
}

fn put_machine_config(vmm: &mut Vmm, machine: &models::MachineConfig) -> Result<Response, String> {
    if machine.smt {
        return Err("smt: ferry offers no SMT siblings; set it to false".into());
    }
    if machine.track_dirty_pages {
        return Err(
            "track_dirty_pages: ferry has no snapshots to track pages for; set it to false".into(),
        );
    }
    if let Some(template) = machine.cpu_template.as_deref().filter(|t| *t != "None") {
        return Err(format!(
            "cpu_template {template}: ferry passes the host's CPU through and has no CPU templates"
        ));
    }
    if let Some(pages) = machine.huge_pages.as_deref().filter(|p| *p != "None") {
        return Err(format!(
            "huge_pages {pages}: ferry backs guest memory with transparent huge pages; use None"
        ));
    }
    let cpus = u32::from(machine.vcpu_count);
    MachineSpec::check_cpus(cpus).map_err(|why| format!("vcpu_count {cpus}: {why}"))?;
    let memory_mib = machine.mem_size_mib as u64;
    MachineSpec::check_memory(memory_mib, config::host_memory_mib())
        .map_err(|why| format!("mem_size_mib {memory_mib}: {why}"))?;
    let resources = vmm.resources_mut().ok_or(AFTER_START)?;
    resources.machine = MachineSpec { cpus, memory_mib };
    Ok(Response::NoContent)
}

fn put_drive(vmm: &mut Vmm, drive: models::Drive) -> Result<Response, String> {
    let what = format!("drive {}", drive.drive_id);
    if drive.socket.is_some() {
        return Err(format!(
            "{what}: vhost-user block devices are not supported by ferry"
        ));
    }
    no_rate_limit(&what, &drive.rate_limiter)?;
    let path = drive
        .path_on_host
        .as_deref()
        .ok_or_else(|| format!("{what}: path_on_host is required"))?;
    let path = check_file("drive", path)?;
    // The drive's id is the serial number the guest reads, as in Firecracker.
    let serial: String = drive.drive_id.chars().take(20).collect();
    let resources = vmm.resources_mut().ok_or(AFTER_START)?;
    resources.set_drive(DriveSpec {
        id: drive.drive_id,
        path,
        read_only: drive.is_read_only.unwrap_or(false),
        root: drive.is_root_device,
        partuuid: drive.partuuid,
        serial: if valid_serial(&serial) {
            serial
        } else {
            String::new()
        },
    });
    Ok(Response::NoContent)
}

fn patch_drive(vmm: &mut Vmm, drive: models::PartialDrive) -> Result<Response, String> {
    let what = format!("drive {}", drive.drive_id);
    no_rate_limit(&what, &drive.rate_limiter)?;
    if !vmm
        .resources()
        .drives
        .iter()
        .any(|d| d.id == drive.drive_id)
    {
        return Err(format!("{what}: no such drive"));
    }
    let Some(path) = drive.path_on_host else {
        return Ok(Response::NoContent);
    };
    let path = check_file("drive", &path)?;
    vmm.update_drive(&drive.drive_id, path)
        .map_err(|e| format!("{what}: {}", chain(&e)))?;
    Ok(Response::NoContent)
}

fn put_network_interface(
    vmm: &mut Vmm,
    iface: models::NetworkInterface,
) -> Result<Response, String> {
    let what = format!("network interface {}", iface.iface_id);
    no_rate_limit(&what, &iface.rx_rate_limiter)?;
    no_rate_limit(&what, &iface.tx_rate_limiter)?;
    if let Some(existing) = &vmm.resources().net {
        if existing.id != iface.iface_id {
            return Err(format!(
                "{what}: ferry has one network interface, and {} is it",
                existing.id
            ));
        }
    }
    let mac = parse_mac(iface.guest_mac.as_deref().unwrap_or(DEFAULT_MAC))
        .map_err(|e| format!("{what}: {e}"))?;
    if let Some(name) = iface.host_dev_name {
        if iface.passt.is_some() {
            return Err(format!(
                "{what}: host_dev_name (a TAP) and passt are two different backends: give one"
            ));
        }
        // Attached once now, so that a TAP that is missing or that ferry
        // may not use is refused here rather than at InstanceStart.
        Tap::open(&name).map_err(|e| format!("{what}: {}", chain(&e)))?;
        let resources = vmm.resources_mut().ok_or(AFTER_START)?;
        resources.net = Some(NetSpec {
            id: iface.iface_id,
            mac,
            backend: NetBackendSpec::Tap(name),
        });
        return Ok(Response::NoContent);
    }
    let options = iface.passt.unwrap_or_default();
    let mut args = Vec::new();
    for spec in &options.publish {
        args.extend(publish_to_passt(spec).map_err(|e| format!("{what}: {e}"))?);
    }
    args.extend(options.args);
    let binary = PathBuf::from(options.binary.as_deref().unwrap_or("passt"));
    let binary = ferry_net_passt::launcher::resolve(&binary).ok_or_else(|| {
        format!(
            "{what}: {}",
            ferry_net_passt::launcher::Error::NotFound(binary.display().to_string())
        )
    })?;
    let resources = vmm.resources_mut().ok_or(AFTER_START)?;
    resources.net = Some(NetSpec {
        id: iface.iface_id,
        mac,
        backend: NetBackendSpec::Passt(ferry_net_passt::PasstConfig { binary, args }),
    });
    Ok(Response::NoContent)
}

fn put_vsock(vmm: &mut Vmm, vsock: models::Vsock) -> Result<Response, String> {
    VsockSpec::check_cid(vsock.guest_cid)
        .map_err(|why| format!("guest_cid {}: {why}", vsock.guest_cid))?;
    if vsock.uds_path.is_empty() {
        return Err("uds_path: the host side's socket path is required".into());
    }
    let resources = vmm.resources_mut().ok_or(AFTER_START)?;
    // A second PUT replaces the first, as in Firecracker.
    resources.vsock = Some(VsockSpec {
        cid: vsock.guest_cid,
        uds_path: PathBuf::from(vsock.uds_path),
        port_listeners: Vec::new(),
    });
    Ok(Response::NoContent)
}

fn patch_network_interface(
    vmm: &mut Vmm,
    iface: models::PartialNetworkInterface,
) -> Result<Response, String> {
    let what = format!("network interface {}", iface.iface_id);
    if vmm
        .resources()
        .net
        .as_ref()
        .is_none_or(|n| n.id != iface.iface_id)
    {
        return Err(format!("{what}: no such interface"));
    }
    no_rate_limit(&what, &iface.rx_rate_limiter)?;
    no_rate_limit(&what, &iface.tx_rate_limiter)?;
    Ok(Response::NoContent)
}

/// The requests a configuration file stands for, in the order Firecracker
/// applies them, `InstanceStart` last.
pub fn config_file_requests(text: &str) -> Result<Vec<Request>, String> {
    let config = models::VmConfig::from_json(text)?;
    let unsupported = config.unsupported_keys();
    if !unsupported.is_empty() {
        return Err(format!(
            "not supported by ferry: {}",
            unsupported.join(", ")
        ));
    }
    let mut requests = Vec::new();
    requests.extend(config.logger.map(Request::PutLogger));
    requests.extend(config.metrics.map(Request::PutMetrics));
    requests.extend(config.machine_config.map(Request::PutMachineConfig));
    requests.extend(config.boot_source.map(Request::PutBootSource));
    requests.extend(config.drives.into_iter().map(Request::PutDrive));
    requests.extend(
        config
            .network_interfaces
            .into_iter()
            .map(Request::PutNetworkInterface),
    );
    requests.extend(config.vsock.map(Request::PutVsock));
    requests.push(Request::Action(ActionType::InstanceStart));
    Ok(requests)
}

/// Applies a configuration file's requests to `vmm`; the first refusal is
/// the error.
pub fn apply_config_file(api: &mut Api, vmm: &mut Vmm, path: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the configuration file {}: {e}", path.display()))?;
    let requests = config_file_requests(&text)
        .map_err(|e| format!("configuration file {}: {e}", path.display()))?;
    for request in requests {
        if let Response::BadRequest(message) = api.handle(vmm, request) {
            return Err(format!("configuration file {}: {message}", path.display()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_configuration_file_is_the_requests_it_stands_for() {
        let requests = config_file_requests(
            r#"{
                "boot-source": {"kernel_image_path": "/k", "boot_args": "console=ttyS0"},
                "machine-config": {"vcpu_count": 2, "mem_size_mib": 512},
                "drives": [{"drive_id": "rootfs", "path_on_host": "/r", "is_root_device": true, "is_read_only": true}],
                "network-interfaces": [{"iface_id": "eth0", "passt": {"publish": ["8080:80"]}}]
            }"#,
        )
        .unwrap();
        assert_eq!(requests.len(), 5);
        assert!(matches!(requests[0], Request::PutMachineConfig(_)));
        assert!(matches!(requests[1], Request::PutBootSource(_)));
        assert!(matches!(requests[2], Request::PutDrive(_)));
        assert!(matches!(requests[3], Request::PutNetworkInterface(_)));
        assert_eq!(requests[4], Request::Action(ActionType::InstanceStart));
    }

    #[test]
    fn unsupported_keys_and_unknown_fields_are_refused() {
        let err = config_file_requests(r#"{"balloon": {"amount_mib": 1}}"#).unwrap_err();
        assert!(err.contains("not supported by ferry: balloon"), "{err}");
        let err = config_file_requests(r#"{"boot-source": {"kernel": "/k"}}"#).unwrap_err();
        assert!(err.contains("unknown field"), "{err}");
    }

    #[test]
    fn macs_are_written_as_they_are_read() {
        let mac = parse_mac(DEFAULT_MAC).unwrap();
        assert_eq!(format_mac(&mac), DEFAULT_MAC);
    }
}
