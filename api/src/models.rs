// SPDX-License-Identifier: Apache-2.0
//! The JSON bodies of Firecracker's API, as ferry accepts and returns them.
//!
//! Field names, which fields are required and their defaults follow
//! Firecracker's swagger (`src/firecracker/swagger/firecracker.yaml`). Every
//! struct refuses unknown fields, as Firecracker's do, so a typo is a 400 and
//! not a silently ignored setting. Fields whose values Firecracker limits to a
//! set of strings (`cpu_template`, `huge_pages`, `cache_type`, `io_engine`,
//! `level`) are kept as strings but checked while parsing, so a bad value is
//! refused with the list of good ones.
//!
//! What a value *means* to the VM (whether a vCPU count is possible, whether a
//! path exists, whether ferry supports a CPU template) is left to the VMM.

use serde::de::{Error as _, Unexpected};
use serde::{Deserialize, Deserializer, Serialize};

/// The values Firecracker accepts for [`MachineConfig::cpu_template`].
pub const CPU_TEMPLATES: &[&str] = &["C3", "T2", "T2S", "T2CL", "T2A", "V1N1", "None"];
/// The values Firecracker accepts for [`MachineConfig::huge_pages`].
pub const HUGE_PAGES: &[&str] = &["None", "Transparent", "2M"];
/// The values Firecracker accepts for [`Drive::cache_type`].
pub const CACHE_TYPES: &[&str] = &["Unsafe", "Writeback"];
/// The values Firecracker accepts for [`Drive::io_engine`].
pub const IO_ENGINES: &[&str] = &["Sync", "Async"];
/// The log levels, as [`Logger::level`] holds them once parsed. Parsing
/// accepts them in any case, and `Warn` for `Warning`, as Firecracker does.
pub const LOG_LEVELS: &[&str] = &["Error", "Warning", "Info", "Debug", "Trace", "Off"];

/// Reads an optional string that must be one of `allowed`.
fn optional_one_of<'de, D: Deserializer<'de>>(
    deserializer: D,
    allowed: &'static [&'static str],
) -> Result<Option<String>, D::Error> {
    let value = Option::<String>::deserialize(deserializer)?;
    match value {
        Some(text) if !allowed.contains(&text.as_str()) => {
            Err(D::Error::unknown_variant(&text, allowed))
        }
        other => Ok(other),
    }
}

fn cpu_template<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    optional_one_of(d, CPU_TEMPLATES)
}

fn huge_pages<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    optional_one_of(d, HUGE_PAGES)
}

fn cache_type<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    optional_one_of(d, CACHE_TYPES)
}

fn io_engine<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    optional_one_of(d, IO_ENGINES)
}

/// Reads a log level in any case (`warn` too) and keeps its canonical
/// spelling from [`LOG_LEVELS`].
fn log_level<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let Some(text) = Option::<String>::deserialize(d)? else {
        return Ok(None);
    };
    let canonical = match text.to_ascii_lowercase().as_str() {
        "error" => "Error",
        "warning" | "warn" => "Warning",
        "info" => "Info",
        "debug" => "Debug",
        "trace" => "Trace",
        "off" => "Off",
        _ => return Err(D::Error::unknown_variant(&text, LOG_LEVELS)),
    };
    Ok(Some(canonical.to_string()))
}

/// True for `xx:xx:xx:xx:xx:xx` with two hex digits in each part.
pub fn is_valid_mac(text: &str) -> bool {
    let parts: Vec<&str> = text.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn guest_mac<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let value = Option::<String>::deserialize(d)?;
    match value {
        Some(text) if !is_valid_mac(&text) => Err(D::Error::invalid_value(
            Unexpected::Str(&text),
            &"a MAC address such as 06:00:ac:10:00:02",
        )),
        other => Ok(other),
    }
}

/// The answer to `GET /`: who this VMM is and whether the guest runs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceInfo {
    /// The instance's id (Firecracker's `--id`; ferry's default is
    /// `anonymous-instance`, as Firecracker's).
    pub id: String,
    /// `"Not started"` before `InstanceStart`, `"Running"` after it
    /// (Firecracker also has `"Paused"`, which ferry never reports).
    pub state: String,
    /// The VMM's version.
    pub vmm_version: String,
    /// The application's name (`"Firecracker"` in Firecracker).
    pub app_name: String,
}

/// The answer to `GET /version`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirecrackerVersion {
    /// The VMM's version, under Firecracker's key.
    pub firecracker_version: String,
}

/// `PUT /boot-source`: the kernel, its command line and the initrd.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootSource {
    /// Host path of the kernel image.
    pub kernel_image_path: String,
    /// The kernel command line; the VMM's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_args: Option<String>,
    /// Host path of the initrd image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<String>,
}

/// `PUT /machine-config` and the answer to `GET /machine-config`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfig {
    /// Number of vCPUs (Firecracker: 1 to 32, 1 or even).
    pub vcpu_count: u8,
    /// Guest memory in MiB.
    pub mem_size_mib: usize,
    /// Simultaneous multithreading; defaults to false.
    #[serde(default)]
    pub smt: bool,
    /// Dirty page tracking (for diff snapshots); defaults to false.
    #[serde(default)]
    pub track_dirty_pages: bool,
    /// A static CPU template, one of [`CPU_TEMPLATES`] (deprecated in
    /// Firecracker).
    #[serde(
        default,
        deserialize_with = "cpu_template",
        skip_serializing_if = "Option::is_none"
    )]
    pub cpu_template: Option<String>,
    /// Huge pages backing guest memory, one of [`HUGE_PAGES`]; `"None"` when
    /// absent.
    #[serde(
        default,
        deserialize_with = "huge_pages",
        skip_serializing_if = "Option::is_none"
    )]
    pub huge_pages: Option<String>,
}

impl Default for MachineConfig {
    /// Firecracker's defaults: one vCPU and 128 MiB.
    fn default() -> Self {
        MachineConfig {
            vcpu_count: 1,
            mem_size_mib: 128,
            smt: false,
            track_dirty_pages: false,
            cpu_template: None,
            huge_pages: None,
        }
    }
}

/// `PATCH /machine-config`: any fields of [`MachineConfig`]; an empty body
/// (`{}`) is refused by [`crate::route`], as Firecracker does.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfigUpdate {
    /// See [`MachineConfig::vcpu_count`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpu_count: Option<u8>,
    /// See [`MachineConfig::mem_size_mib`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_size_mib: Option<usize>,
    /// See [`MachineConfig::smt`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smt: Option<bool>,
    /// See [`MachineConfig::track_dirty_pages`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track_dirty_pages: Option<bool>,
    /// See [`MachineConfig::cpu_template`].
    #[serde(
        default,
        deserialize_with = "cpu_template",
        skip_serializing_if = "Option::is_none"
    )]
    pub cpu_template: Option<String>,
    /// See [`MachineConfig::huge_pages`].
    #[serde(
        default,
        deserialize_with = "huge_pages",
        skip_serializing_if = "Option::is_none"
    )]
    pub huge_pages: Option<String>,
}

impl MachineConfigUpdate {
    /// True when no field is set.
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }

    /// `base` with this update's fields written over it.
    pub fn apply_to(&self, base: &MachineConfig) -> MachineConfig {
        MachineConfig {
            vcpu_count: self.vcpu_count.unwrap_or(base.vcpu_count),
            mem_size_mib: self.mem_size_mib.unwrap_or(base.mem_size_mib),
            smt: self.smt.unwrap_or(base.smt),
            track_dirty_pages: self.track_dirty_pages.unwrap_or(base.track_dirty_pages),
            cpu_template: self
                .cpu_template
                .clone()
                .or_else(|| base.cpu_template.clone()),
            huge_pages: self.huge_pages.clone().or_else(|| base.huge_pages.clone()),
        }
    }
}

/// An I/O rate limiter: a bytes bucket and an operations bucket, each
/// optional. `{}` (both absent) means no limit, as Kata sends it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimiter {
    /// Token bucket with bytes as tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<TokenBucket>,
    /// Token bucket with operations as tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops: Option<TokenBucket>,
}

impl RateLimiter {
    /// True when neither bucket is set: the limiter limits nothing.
    pub fn is_empty(&self) -> bool {
        self.bandwidth.is_none() && self.ops.is_none()
    }
}

/// A token bucket of a [`RateLimiter`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBucket {
    /// The number of tokens the bucket holds when full.
    pub size: u64,
    /// Tokens available once at the start, on top of `size`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_time_burst: Option<u64>,
    /// Milliseconds the bucket takes to refill from empty.
    pub refill_time: u64,
}

/// `PUT /drives/{drive_id}`: a block device.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Drive {
    /// The drive's id; must equal the id in the path.
    pub drive_id: String,
    /// Host path of the backing file (required for virtio-block, absent for
    /// vhost-user-block; the VMM checks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_on_host: Option<String>,
    /// Whether the guest boots from this drive.
    pub is_root_device: bool,
    /// Whether the guest sees the drive read-only; absent means read-write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_read_only: Option<bool>,
    /// The root partition's unique id, used when `is_root_device`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partuuid: Option<String>,
    /// One of [`CACHE_TYPES`]; `"Unsafe"` when absent.
    #[serde(
        default,
        deserialize_with = "cache_type",
        skip_serializing_if = "Option::is_none"
    )]
    pub cache_type: Option<String>,
    /// One of [`IO_ENGINES`]; `"Sync"` when absent.
    #[serde(
        default,
        deserialize_with = "io_engine",
        skip_serializing_if = "Option::is_none"
    )]
    pub io_engine: Option<String>,
    /// The drive's rate limiter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiter>,
    /// The vhost-user-block backend's socket (vhost-user-block only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<String>,
}

/// `PATCH /drives/{drive_id}`: a new backing file or rate limiter after boot.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartialDrive {
    /// The drive's id; must equal the id in the path.
    pub drive_id: String,
    /// The new host path of the backing file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_on_host: Option<String>,
    /// The new rate limiter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiter>,
}

/// `PUT /network-interfaces/{iface_id}`: a virtio-net device.
///
/// Firecracker backs it with the TAP device `host_dev_name` (required
/// there). ferry backs it with that TAP when `host_dev_name` is given, and
/// with passt otherwise: the `passt` key, ferry's extension, configures it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterface {
    /// The interface's id; must equal the id in the path.
    pub iface_id: String,
    /// The guest's MAC address, `xx:xx:xx:xx:xx:xx`.
    #[serde(
        default,
        deserialize_with = "guest_mac",
        skip_serializing_if = "Option::is_none"
    )]
    pub guest_mac: Option<String>,
    /// The existing host TAP device the card uses (without it, passt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_dev_name: Option<String>,
    /// The receive rate limiter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate_limiter: Option<RateLimiter>,
    /// The transmit rate limiter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_rate_limiter: Option<RateLimiter>,
    /// ferry's extension: how to run passt for this interface.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passt: Option<PasstOptions>,
}

/// ferry's extension to [`NetworkInterface`]: the passt options that
/// ferry's command line also has.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PasstOptions {
    /// Forwarded ports, `[IP:]HOST:GUEST[/tcp|/udp]`, as ferry's `--publish`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub publish: Vec<String>,
    /// Arguments passed to passt verbatim, as ferry's `--passt-arg`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// The passt binary, as ferry's `--passt`; `passt` on `PATH` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binary: Option<String>,
}

/// `PATCH /network-interfaces/{iface_id}`: new rate limiters after boot.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartialNetworkInterface {
    /// The interface's id; must equal the id in the path.
    pub iface_id: String,
    /// The new receive rate limiter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate_limiter: Option<RateLimiter>,
    /// The new transmit rate limiter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_rate_limiter: Option<RateLimiter>,
}

/// `PUT /vsock`: a virtio-vsock device proxied through UNIX sockets.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vsock {
    /// The guest's context id (the swagger says at least 3; the VMM checks).
    pub guest_cid: u32,
    /// Host path of the UNIX socket that proxies connections.
    pub uds_path: String,
    /// Deprecated in Firecracker; accepted and ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_id: Option<String>,
}

/// `PUT /logger`: where and what the VMM logs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Logger {
    /// Named pipe or file for the log; optional in Firecracker's swagger
    /// (the log then stays where it was).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_path: Option<String>,
    /// One of [`LOG_LEVELS`] once parsed (any case accepted, and `Warn`);
    /// `Info` when absent.
    #[serde(
        default,
        deserialize_with = "log_level",
        skip_serializing_if = "Option::is_none"
    )]
    pub level: Option<String>,
    /// Whether each line shows its level; defaults to false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_level: Option<bool>,
    /// Whether each line shows its file and line; defaults to false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_log_origin: Option<bool>,
    /// Only log messages from module paths starting with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
}

impl Logger {
    /// The level as a `log` filter: `Info` when [`Logger::level`] is absent.
    pub fn level_filter(&self) -> log::LevelFilter {
        match self.level.as_deref() {
            Some("Error") => log::LevelFilter::Error,
            Some("Warning") => log::LevelFilter::Warn,
            Some("Debug") => log::LevelFilter::Debug,
            Some("Trace") => log::LevelFilter::Trace,
            Some("Off") => log::LevelFilter::Off,
            _ => log::LevelFilter::Info,
        }
    }
}

/// `PUT /metrics`: where the VMM writes its metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    /// Named pipe or file the JSON metrics lines go to.
    pub metrics_path: String,
}

/// The actions of `PUT /actions`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActionType {
    /// Boot the configured guest.
    InstanceStart,
    /// Press Ctrl+Alt+Del in the guest (x86_64: the i8042 reset).
    SendCtrlAltDel,
    /// Write the metrics now.
    FlushMetrics,
}

/// The body of `PUT /actions`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceActionInfo {
    /// The action to take.
    pub action_type: ActionType,
}

/// Firecracker's `FullVmConfiguration`: the `--config-file` format and the
/// answer to `GET /vm/config`, with kebab-case top-level keys.
///
/// The top-level keys that Firecracker has and ferry does not support
/// (`balloon`, `cpu-config`, `mmds-config`, `entropy`, `pmem`,
/// `memory-hotplug`) are parsed as raw JSON so that a file using them is
/// refused by the VMM with "not supported by ferry" (see
/// [`VmConfig::unsupported_keys`]) rather than "unknown field". A key set to
/// `null` counts as absent.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// `boot-source`.
    #[serde(
        rename = "boot-source",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub boot_source: Option<BootSource>,
    /// `machine-config`.
    #[serde(
        rename = "machine-config",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub machine_config: Option<MachineConfig>,
    /// `drives`; empty when absent.
    #[serde(default)]
    pub drives: Vec<Drive>,
    /// `network-interfaces`; empty when absent.
    #[serde(rename = "network-interfaces", default)]
    pub network_interfaces: Vec<NetworkInterface>,
    /// `vsock`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock: Option<Vsock>,
    /// `logger`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logger: Option<Logger>,
    /// `metrics`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<Metrics>,
    /// `balloon`: not supported by ferry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balloon: Option<serde_json::Value>,
    /// `cpu-config`: not supported by ferry.
    #[serde(
        rename = "cpu-config",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub cpu_config: Option<serde_json::Value>,
    /// `mmds-config`: not supported by ferry.
    #[serde(
        rename = "mmds-config",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub mmds_config: Option<serde_json::Value>,
    /// `entropy`: not supported by ferry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entropy: Option<serde_json::Value>,
    /// `pmem`: not supported by ferry (an empty list counts as absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pmem: Option<serde_json::Value>,
    /// `memory-hotplug`: not supported by ferry.
    #[serde(
        rename = "memory-hotplug",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub memory_hotplug: Option<serde_json::Value>,
}

impl VmConfig {
    /// Parses a configuration file. The error text is serde_json's, which
    /// names the offending key (for an unknown or missing one) and always
    /// the line and column.
    pub fn from_json(text: &str) -> Result<Self, String> {
        if text.trim_start().starts_with('[') {
            return Err("invalid VM configuration: expected a JSON object, found an array".into());
        }
        serde_json::from_str(text).map_err(|e| format!("invalid VM configuration: {e}"))
    }

    /// The top-level keys present in this configuration that ferry does not
    /// support, in file order of Firecracker's swagger; empty when none.
    pub fn unsupported_keys(&self) -> Vec<&'static str> {
        let present = |value: &Option<serde_json::Value>| match value {
            None | Some(serde_json::Value::Null) => false,
            Some(serde_json::Value::Array(items)) => !items.is_empty(),
            Some(_) => true,
        };
        [
            ("balloon", &self.balloon),
            ("cpu-config", &self.cpu_config),
            ("mmds-config", &self.mmds_config),
            ("entropy", &self.entropy),
            ("pmem", &self.pmem),
            ("memory-hotplug", &self.memory_hotplug),
        ]
        .into_iter()
        .filter(|(_, value)| present(value))
        .map(|(key, _)| key)
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, String> {
        serde_json::from_str(text).map_err(|e| e.to_string())
    }

    #[test]
    fn boot_source() {
        let b: BootSource = parse(r#"{"kernel_image_path": "/k"}"#).unwrap();
        assert_eq!(b.kernel_image_path, "/k");
        assert_eq!(b.boot_args, None);
        let b: BootSource = parse(
            r#"{"kernel_image_path": "/k", "boot_args": "console=ttyS0", "initrd_path": "/i"}"#,
        )
        .unwrap();
        assert_eq!(b.boot_args.as_deref(), Some("console=ttyS0"));
        assert_eq!(b.initrd_path.as_deref(), Some("/i"));
        let e = parse::<BootSource>(r#"{"boot_args": "x"}"#).unwrap_err();
        assert!(e.contains("missing field `kernel_image_path`"), "{e}");
        let e = parse::<BootSource>(r#"{"kernel_image_path": "/k", "kernel": "x"}"#).unwrap_err();
        assert!(e.contains("unknown field `kernel`"), "{e}");
    }

    #[test]
    fn machine_config_defaults_and_values() {
        let m: MachineConfig = parse(r#"{"vcpu_count": 2, "mem_size_mib": 1024}"#).unwrap();
        assert_eq!(
            m,
            MachineConfig {
                vcpu_count: 2,
                mem_size_mib: 1024,
                smt: false,
                track_dirty_pages: false,
                cpu_template: None,
                huge_pages: None
            }
        );
        let m: MachineConfig = parse(
            r#"{"vcpu_count": 1, "mem_size_mib": 128, "smt": false, "track_dirty_pages": true,
                "cpu_template": "None", "huge_pages": "2M"}"#,
        )
        .unwrap();
        assert!(m.track_dirty_pages);
        assert_eq!(m.cpu_template.as_deref(), Some("None"));
        assert_eq!(m.huge_pages.as_deref(), Some("2M"));
        let e =
            parse::<MachineConfig>(r#"{"vcpu_count": 1, "mem_size_mib": 1, "huge_pages": "1G"}"#)
                .unwrap_err();
        assert!(e.contains("unknown variant `1G`"), "{e}");
        let e =
            parse::<MachineConfig>(r#"{"vcpu_count": 1, "mem_size_mib": 1, "cpu_template": "X"}"#)
                .unwrap_err();
        assert!(e.contains("unknown variant `X`"), "{e}");
        let e = parse::<MachineConfig>(r#"{"vcpu_count": 256, "mem_size_mib": 1}"#).unwrap_err();
        assert!(e.contains("invalid value"), "{e}");
        let e = parse::<MachineConfig>(r#"{"vcpu_count": "2", "mem_size_mib": 1}"#).unwrap_err();
        assert!(e.contains("invalid type"), "{e}");
        let e = parse::<MachineConfig>(r#"{"mem_size_mib": 1}"#).unwrap_err();
        assert!(e.contains("missing field `vcpu_count`"), "{e}");
        // GET /machine-config shows the defaults but not absent options.
        let json = serde_json::to_value(MachineConfig {
            vcpu_count: 1,
            mem_size_mib: 128,
            smt: false,
            track_dirty_pages: false,
            cpu_template: None,
            huge_pages: Some("None".into()),
        })
        .unwrap();
        assert_eq!(
            json,
            serde_json::json!({"vcpu_count": 1, "mem_size_mib": 128, "smt": false,
                               "track_dirty_pages": false, "huge_pages": "None"})
        );
    }

    #[test]
    fn machine_config_update() {
        let u: MachineConfigUpdate = parse(r#"{"mem_size_mib": 256}"#).unwrap();
        assert_eq!(u.mem_size_mib, Some(256));
        assert!(!u.is_empty());
        assert!(parse::<MachineConfigUpdate>("{}").unwrap().is_empty());
        let base = MachineConfig {
            vcpu_count: 2,
            mem_size_mib: 128,
            smt: false,
            track_dirty_pages: false,
            cpu_template: None,
            huge_pages: None,
        };
        let m = u.apply_to(&base);
        assert_eq!((m.vcpu_count, m.mem_size_mib), (2, 256));
        assert!(parse::<MachineConfigUpdate>(r#"{"foo": 1}"#).is_err());
        let d = u.apply_to(&MachineConfig::default());
        assert_eq!((d.vcpu_count, d.mem_size_mib), (1, 256));
    }

    #[test]
    fn drive_as_kata_sends_it() {
        let d: Drive = parse(
            r#"{"drive_id": "rootfs", "path_on_host": "/r.img", "is_root_device": false,
                "is_read_only": false, "rate_limiter": {}, "io_engine": "Sync",
                "cache_type": "Unsafe"}"#,
        )
        .unwrap();
        assert_eq!(d.drive_id, "rootfs");
        assert_eq!(d.rate_limiter, Some(RateLimiter::default()));
        assert!(d.rate_limiter.unwrap().is_empty());
        let d: Drive = parse(
            r#"{"drive_id": "d", "is_root_device": true, "path_on_host": "/x", "partuuid": "abc",
                "rate_limiter": {"bandwidth": {"size": 1000, "refill_time": 100},
                                 "ops": {"size": 10, "one_time_burst": 5, "refill_time": 1}}}"#,
        )
        .unwrap();
        let rl = d.rate_limiter.unwrap();
        assert_eq!(
            rl.bandwidth,
            Some(TokenBucket {
                size: 1000,
                one_time_burst: None,
                refill_time: 100
            })
        );
        assert_eq!(rl.ops.unwrap().one_time_burst, Some(5));
        // vhost-user-block: a socket and no path.
        let d: Drive =
            parse(r#"{"drive_id": "v", "is_root_device": false, "socket": "/s"}"#).unwrap();
        assert_eq!(d.socket.as_deref(), Some("/s"));
        let e = parse::<Drive>(r#"{"drive_id": "d", "path_on_host": "/x"}"#).unwrap_err();
        assert!(e.contains("missing field `is_root_device`"), "{e}");
        let e =
            parse::<Drive>(r#"{"drive_id": "d", "is_root_device": true, "io_engine": "Uring"}"#)
                .unwrap_err();
        assert!(e.contains("unknown variant `Uring`"), "{e}");
        let e = parse::<Drive>(
            r#"{"drive_id": "d", "is_root_device": true, "rate_limiter": {"bandwidth": {"size": 1}}}"#,
        )
        .unwrap_err();
        assert!(e.contains("missing field `refill_time`"), "{e}");
        let e = parse::<Drive>(
            r#"{"drive_id": "d", "is_root_device": true, "rate_limiter": {"iops": {}}}"#,
        )
        .unwrap_err();
        assert!(e.contains("unknown field `iops`"), "{e}");
    }

    #[test]
    fn partial_drive() {
        let p: PartialDrive = parse(r#"{"drive_id": "d", "path_on_host": "/new"}"#).unwrap();
        assert_eq!(p.path_on_host.as_deref(), Some("/new"));
        let e = parse::<PartialDrive>(r#"{"drive_id": "d", "is_root_device": true}"#).unwrap_err();
        assert!(e.contains("unknown field `is_root_device`"), "{e}");
    }

    #[test]
    fn network_interface() {
        let n: NetworkInterface = parse(
            r#"{"iface_id": "eth0", "guest_mac": "AA:FC:00:00:00:01", "host_dev_name": "tap0",
                "rx_rate_limiter": {}, "tx_rate_limiter": {}}"#,
        )
        .unwrap();
        assert_eq!(n.host_dev_name.as_deref(), Some("tap0"));
        assert_eq!(n.passt, None);
        let n: NetworkInterface = parse(
            r#"{"iface_id": "eth0", "passt": {"publish": ["8080:80", "127.0.0.1:53:53/udp"],
                "args": ["--mtu", "1500"], "binary": "/usr/bin/passt"}}"#,
        )
        .unwrap();
        let passt = n.passt.unwrap();
        assert_eq!(passt.publish, ["8080:80", "127.0.0.1:53:53/udp"]);
        assert_eq!(passt.args, ["--mtu", "1500"]);
        assert_eq!(passt.binary.as_deref(), Some("/usr/bin/passt"));
        let n: NetworkInterface = parse(r#"{"iface_id": "eth0", "passt": {}}"#).unwrap();
        assert_eq!(n.passt, Some(PasstOptions::default()));
        let e = parse::<NetworkInterface>(r#"{"iface_id": "e", "guest_mac": "zz:00:00:00:00:00"}"#)
            .unwrap_err();
        assert!(e.contains("MAC address"), "{e}");
        let e =
            parse::<NetworkInterface>(r#"{"iface_id": "e", "passt": {"ports": []}}"#).unwrap_err();
        assert!(e.contains("unknown field `ports`"), "{e}");
        let p: PartialNetworkInterface = parse(
            r#"{"iface_id": "e", "rx_rate_limiter": {"ops": {"size": 1, "refill_time": 1}}}"#,
        )
        .unwrap();
        assert!(p.rx_rate_limiter.is_some() && p.tx_rate_limiter.is_none());
    }

    #[test]
    fn mac_validation() {
        assert!(is_valid_mac("06:00:ac:10:00:02"));
        assert!(!is_valid_mac("06:00:ac:10:00"));
        assert!(!is_valid_mac("06:00:ac:10:00:02:03"));
        assert!(!is_valid_mac("6:00:ac:10:00:02"));
        assert!(!is_valid_mac("06-00-ac-10-00-02"));
        assert!(!is_valid_mac(""));
    }

    #[test]
    fn vsock_logger_metrics_actions() {
        let v: Vsock = parse(r#"{"guest_cid": 3, "uds_path": "/v.sock"}"#).unwrap();
        assert_eq!((v.guest_cid, v.vsock_id), (3, None));
        let v: Vsock = parse(r#"{"vsock_id": "vs", "guest_cid": 3, "uds_path": "/v"}"#).unwrap();
        assert_eq!(v.vsock_id.as_deref(), Some("vs"));
        assert!(parse::<Vsock>(r#"{"guest_cid": -1, "uds_path": "/v"}"#).is_err());

        let l: Logger =
            parse(r#"{"log_path": "/l", "level": "warn", "show_level": true}"#).unwrap();
        assert_eq!(l.level.as_deref(), Some("Warning"));
        assert_eq!(l.level_filter(), log::LevelFilter::Warn);
        for (given, want) in [("DEBUG", "Debug"), ("Info", "Info"), ("off", "Off")] {
            let l: Logger = parse(&format!(r#"{{"level": "{given}"}}"#)).unwrap();
            assert_eq!(l.level.as_deref(), Some(want));
        }
        assert_eq!(Logger::default().level_filter(), log::LevelFilter::Info);
        let e = parse::<Logger>(r#"{"level": "Loud"}"#).unwrap_err();
        assert!(e.contains("unknown variant `Loud`"), "{e}");

        let m: Metrics = parse(r#"{"metrics_path": "/m"}"#).unwrap();
        assert_eq!(m.metrics_path, "/m");
        assert!(parse::<Metrics>("{}").is_err());

        for (text, action) in [
            ("InstanceStart", ActionType::InstanceStart),
            ("SendCtrlAltDel", ActionType::SendCtrlAltDel),
            ("FlushMetrics", ActionType::FlushMetrics),
        ] {
            let a: InstanceActionInfo = parse(&format!(r#"{{"action_type": "{text}"}}"#)).unwrap();
            assert_eq!(a.action_type, action);
        }
        let e = parse::<InstanceActionInfo>(r#"{"action_type": "Pause"}"#).unwrap_err();
        assert!(e.contains("unknown variant `Pause`"), "{e}");
    }

    #[test]
    fn instance_info_serializes_as_firecracker() {
        let info = InstanceInfo {
            id: "anonymous-instance".into(),
            state: "Not started".into(),
            vmm_version: "0.1.0".into(),
            app_name: "ferry".into(),
        };
        assert_eq!(
            serde_json::to_value(&info).unwrap(),
            serde_json::json!({"id": "anonymous-instance", "state": "Not started",
                               "vmm_version": "0.1.0", "app_name": "ferry"})
        );
    }

    #[test]
    fn vm_config_file() {
        let text = r#"{
          "boot-source": {"kernel_image_path": "vmlinux", "boot_args": "console=ttyS0"},
          "drives": [{"drive_id": "rootfs", "path_on_host": "root.ext4",
                      "is_root_device": true, "is_read_only": false}],
          "machine-config": {"vcpu_count": 2, "mem_size_mib": 1024},
          "network-interfaces": [{"iface_id": "eth0", "guest_mac": "06:00:ac:10:00:02",
                                  "host_dev_name": "tap0"}],
          "balloon": null,
          "pmem": []
        }"#;
        let c = VmConfig::from_json(text).unwrap();
        assert_eq!(c.boot_source.as_ref().unwrap().kernel_image_path, "vmlinux");
        assert_eq!(c.drives.len(), 1);
        assert_eq!(c.network_interfaces.len(), 1);
        assert_eq!(c.machine_config.as_ref().unwrap().vcpu_count, 2);
        assert!(c.unsupported_keys().is_empty());
        // Round trip, as GET /vm/config would write it.
        let back = VmConfig::from_json(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back.drives, c.drives);
        assert_eq!(back.boot_source, c.boot_source);

        let c = VmConfig::from_json(
            r#"{"balloon": {"amount_mib": 1, "deflate_on_oom": true}, "mmds-config": {},
                "entropy": {}, "cpu-config": {}, "pmem": [{}], "memory-hotplug": {}}"#,
        )
        .unwrap();
        assert_eq!(
            c.unsupported_keys(),
            [
                "balloon",
                "cpu-config",
                "mmds-config",
                "entropy",
                "pmem",
                "memory-hotplug"
            ]
        );
        assert_eq!(VmConfig::from_json("{}").unwrap(), VmConfig::default());

        let e = VmConfig::from_json("{\n  \"boot_source\": {}\n}").unwrap_err();
        assert!(e.contains("unknown field `boot_source`"), "{e}");
        assert!(e.contains("line 2"), "{e}");
        let e = VmConfig::from_json(
            "{\n\"drives\": [\n{\"drive_id\": \"a\", \"is_root_device\": \"yes\"}]}",
        )
        .unwrap_err();
        assert!(e.contains("invalid type") && e.contains("line 3"), "{e}");
        let e = VmConfig::from_json("[]").unwrap_err();
        assert!(e.contains("expected a JSON object"), "{e}");
        let e = VmConfig::from_json("{").unwrap_err();
        assert!(e.contains("EOF"), "{e}");
    }
}
