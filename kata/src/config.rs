//! The service's configuration file (`/etc/ferry/kata.toml` by default):
//! what every sandbox's VM boots, its defaults and limits, and which of
//! the annotations Kata sends may change them.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Where the configuration is read from unless `--config` says otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/ferry/kata.toml";

/// Kata's kernel parameters for a guest whose root filesystem is the first
/// partition of a read-only disk image (its `kata-containers.img`).
pub const DEFAULT_IMAGE_KERNEL_PARAMS: &str =
    "root=/dev/vda1 rootflags=data=ordered,errors=remount-ro ro rootfstype=ext4";

/// The annotations that may change a sandbox's defaults unless the file
/// says otherwise (Kata's own name for the list).
pub const DEFAULT_ENABLED_ANNOTATIONS: [&str; 2] = ["default_vcpus", "default_memory"];

/// Errors reading the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown keys or wrong types.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (with line and column).
        message: String,
    },
    /// The values do not make sense together.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// The configuration, as the file spells it (every key but `kernel` and
/// one of `initrd`/`image` has a default).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The ferry binary each sandbox runs.
    #[serde(default = "default_ferry")]
    pub ferry: PathBuf,
    /// The passt binary ferry starts for each sandbox.
    #[serde(default = "default_passt")]
    pub passt: PathBuf,
    /// The guest kernel.
    pub kernel: PathBuf,
    /// The guest's initramfs (Kata's `kata-containers-initrd.img`): either
    /// this or `image`.
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    /// The guest's root disk image (Kata's `kata-containers.img`), booted
    /// read-only with `image_kernel_params`.
    #[serde(default)]
    pub image: Option<PathBuf>,
    /// Kernel parameters for an image boot.
    #[serde(default = "default_image_kernel_params")]
    pub image_kernel_params: String,
    /// Kernel parameters appended to ferry's own (last, so that a `--`
    /// here passes the rest to the guest's init).
    #[serde(default)]
    pub kernel_params: String,
    /// The machine type: `q35` (virtio-pci) or `microvm` (virtio-mmio).
    #[serde(default = "default_machine_type")]
    pub machine_type: String,
    /// vCPUs of a sandbox that asks for none.
    #[serde(default = "default_vcpus")]
    pub default_vcpus: u32,
    /// The most vCPUs a sandbox may have.
    #[serde(default = "default_max_vcpus")]
    pub max_vcpus: u32,
    /// Memory (MiB) of a sandbox that asks for none.
    #[serde(default = "default_memory")]
    pub default_memory: u32,
    /// The most memory (MiB) a sandbox may have.
    #[serde(default = "default_max_memory")]
    pub max_memory: u32,
    /// The most sandboxes at once (created and not yet stopped).
    #[serde(default = "default_max_sandboxes")]
    pub max_sandboxes: usize,
    /// Which annotations may change the defaults above (Kata's names
    /// without their prefix: `default_vcpus`, `default_memory`, `image`).
    #[serde(default = "default_enabled_annotations")]
    pub enable_annotations: Vec<String>,
    /// Seconds a guest gets to shut down after Ctrl-Alt-Del on StopVM
    /// before it is stopped (Kata's runtime-rs waits 1 s for StopVM).
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace: f64,
    /// The longest StartVM waits for the agent (seconds), if the runtime's
    /// own deadline is later or absent.
    #[serde(default = "default_start_timeout")]
    pub start_timeout: f64,
    /// The guest's vsock port where the agent serves (Kata's 1024).
    #[serde(default = "default_agent_port")]
    pub agent_port: u32,
    /// The host vsock port the agent writes its log to (Kata's
    /// `agent.log_vport`, 1025; 0: no agent log).
    #[serde(default = "default_agent_log_port")]
    pub agent_log_port: u32,
    /// passt's inbound TCP forwarding: connections to these ports of the
    /// pod's addresses reach the guest (passt's `-t`: `all`, `none` or a
    /// list such as `80,443,8000-8100`).
    #[serde(default = "default_all")]
    pub tcp_ports: String,
    /// passt's inbound UDP forwarding (passt's `-u`, as `tcp_ports`).
    #[serde(default = "default_all")]
    pub udp_ports: String,
    /// More arguments for passt, verbatim.
    #[serde(default)]
    pub passt_args: Vec<String>,
}

fn default_ferry() -> PathBuf {
    "ferry".into()
}
fn default_passt() -> PathBuf {
    "passt".into()
}
fn default_image_kernel_params() -> String {
    DEFAULT_IMAGE_KERNEL_PARAMS.into()
}
fn default_machine_type() -> String {
    "q35".into()
}
fn default_vcpus() -> u32 {
    1
}
fn default_max_vcpus() -> u32 {
    8
}
fn default_memory() -> u32 {
    2048
}
fn default_max_memory() -> u32 {
    16384
}
fn default_max_sandboxes() -> usize {
    64
}
fn default_enabled_annotations() -> Vec<String> {
    DEFAULT_ENABLED_ANNOTATIONS.map(String::from).to_vec()
}
fn default_shutdown_grace() -> f64 {
    0.5
}
fn default_start_timeout() -> f64 {
    60.0
}
fn default_agent_port() -> u32 {
    1024
}
fn default_agent_log_port() -> u32 {
    1025
}
fn default_all() -> String {
    "all".into()
}

/// The annotations `enable_annotations` may name.
pub const KNOWN_ANNOTATIONS: [&str; 3] = ["default_vcpus", "default_memory", "image"];

impl Config {
    /// Reads and checks the file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text)
            .map_err(|message| ConfigError::Parse {
                path: path.to_owned(),
                message,
            })?
            .check()
            .map_err(|message| ConfigError::Invalid {
                path: path.to_owned(),
                message,
            })
    }

    /// Parses TOML text (not yet checked).
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())
    }

    /// Checks that the values make sense together; files are checked when
    /// a sandbox is created (they may be installed after the service
    /// starts).
    pub fn check(self) -> Result<Self, String> {
        if self.initrd.is_some() && self.image.is_some() {
            return Err("set initrd or image, not both".into());
        }
        if self.default_vcpus == 0 || self.default_vcpus > self.max_vcpus {
            return Err(format!(
                "default_vcpus {} must be 1 to max_vcpus ({})",
                self.default_vcpus, self.max_vcpus
            ));
        }
        if self.default_memory == 0 || self.default_memory > self.max_memory {
            return Err(format!(
                "default_memory {} must be 1 to max_memory ({})",
                self.default_memory, self.max_memory
            ));
        }
        if !(self.shutdown_grace.is_finite() && self.shutdown_grace >= 0.0) {
            return Err("shutdown_grace must be 0 or more seconds".into());
        }
        if !(self.start_timeout.is_finite() && self.start_timeout > 0.0) {
            return Err("start_timeout must be more than 0 seconds".into());
        }
        if let Some(unknown) = self
            .enable_annotations
            .iter()
            .find(|a| !KNOWN_ANNOTATIONS.contains(&a.as_str()))
        {
            return Err(format!(
                "enable_annotations: {unknown:?} is not one of {KNOWN_ANNOTATIONS:?}"
            ));
        }
        Ok(self)
    }

    /// Whether the annotation `name` (without its prefix) may change a
    /// default.
    pub fn annotation_enabled(&self, name: &str) -> bool {
        self.enable_annotations.iter().any(|a| a == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_smallest_file_takes_every_default() {
        let c = Config::parse("kernel = \"/k\"\ninitrd = \"/i\"\n")
            .unwrap()
            .check()
            .unwrap();
        assert_eq!(c.kernel, PathBuf::from("/k"));
        assert_eq!(c.default_memory, 2048);
        assert_eq!(c.agent_port, 1024);
        assert_eq!(c.tcp_ports, "all");
        assert!(c.annotation_enabled("default_vcpus"));
        assert!(!c.annotation_enabled("image"));
    }

    #[test]
    fn mistakes_are_refused_with_their_reason() {
        for (text, why) in [
            ("initrd = \"/i\"\n", "missing field `kernel`"),
            ("kernel = \"/k\"\nkernal = 1\n", "unknown field `kernal`"),
            ("kernel = \"/k\"\ndefault_vcpus = \"two\"\n", "invalid type"),
        ] {
            let err = Config::parse(text).unwrap_err();
            assert!(err.contains(why), "{text:?}: {err}");
        }
        for (text, why) in [
            (
                "kernel = \"/k\"\ninitrd = \"/i\"\nimage = \"/m\"\n",
                "not both",
            ),
            ("kernel = \"/k\"\ndefault_vcpus = 9\n", "max_vcpus"),
            ("kernel = \"/k\"\ndefault_memory = 0\n", "max_memory"),
            ("kernel = \"/k\"\nshutdown_grace = -1.0\n", "shutdown_grace"),
            (
                "kernel = \"/k\"\nenable_annotations = [\"kernel\"]\n",
                "\"kernel\"",
            ),
        ] {
            let err = Config::parse(text).unwrap().check().unwrap_err();
            assert!(err.contains(why), "{text:?}: {err}");
        }
    }
}
