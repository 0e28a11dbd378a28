//! What one sandbox's VM will be: the configuration's defaults, changed by
//! the annotations Kata's runtime sends with CreateVM where the
//! configuration allows it, and the ferry command line that boots it.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::config::Config;

/// The prefix of Kata's hypervisor annotations.
pub const HYPERVISOR_ANNOTATION_PREFIX: &str = "io.katacontainers.config.hypervisor.";
/// The pod's name, as containerd's CRI plugin labels it.
pub const SANDBOX_NAME_ANNOTATION: &str = "io.kubernetes.cri.sandbox-name";
/// The pod's Kubernetes namespace, as containerd's CRI plugin labels it.
pub const SANDBOX_NAMESPACE_ANNOTATION: &str = "io.kubernetes.cri.sandbox-namespace";

/// A request the service cannot honour.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// An annotation's value is not what it should be (a number, ...).
    #[error("annotation {key}={value:?}: {why}")]
    Annotation {
        /// The annotation's full key.
        key: String,
        /// Its value.
        value: String,
        /// What is wrong with it.
        why: String,
    },
    /// A file the VM needs is missing or unreadable.
    #[error("{what} {path}: {why}")]
    File {
        /// Which file (kernel, initrd, image, ferry).
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// Why it cannot be used.
        why: String,
    },
    /// The configuration names neither an initrd nor an image.
    #[error("no guest image: the configuration sets neither initrd nor image, and no image annotation came")]
    NoGuestImage,
    /// The network namespace cannot be used.
    #[error("network namespace {path}: {why}")]
    Netns {
        /// Its path.
        path: PathBuf,
        /// Why.
        why: String,
    },
}

/// What the guest boots from besides its kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestImage {
    /// An initramfs.
    Initrd(PathBuf),
    /// A read-only root disk image.
    Image(PathBuf),
}

/// Where the VM's virtio devices sit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// virtio-pci (Kata's `q35`).
    Pci,
    /// virtio-mmio (Kata's `microvm`).
    Mmio,
}

impl Transport {
    /// ferry's `--virtio` value.
    pub fn as_ferry_arg(self) -> &'static str {
        match self {
            Transport::Pci => "pci",
            Transport::Mmio => "mmio",
        }
    }
}

/// One sandbox's VM, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct VmPlan {
    /// The guest kernel.
    pub kernel: PathBuf,
    /// Its initramfs or root disk.
    pub guest_image: GuestImage,
    /// Kernel parameters after ferry's own.
    pub kernel_params: String,
    /// vCPUs.
    pub vcpus: u32,
    /// Memory in MiB.
    pub memory_mib: u32,
    /// The virtio transport.
    pub transport: Transport,
    /// The pod's network namespace (passt runs there), if any.
    pub netns: Option<PathBuf>,
    /// The pod's name and Kubernetes namespace, for the log.
    pub pod: String,
}

/// Looks up a Kata hypervisor annotation by its short name.
fn hypervisor_annotation<'a>(
    annotations: &'a HashMap<String, String>,
    name: &str,
) -> Option<(String, &'a str)> {
    let key = format!("{HYPERVISOR_ANNOTATION_PREFIX}{name}");
    annotations
        .get(&key)
        .map(|v| (key, v.trim()))
        .filter(|(_, v)| !v.is_empty())
}

/// A count annotation (`default_vcpus`, `default_memory`): absent, empty
/// or 0 means the default; a different value must be enabled and within
/// the limit.
fn count_annotation(
    config: &Config,
    annotations: &HashMap<String, String>,
    name: &str,
    default: u32,
    max: u32,
    unit: &str,
) -> Result<u32, PlanError> {
    let Some((key, value)) = hypervisor_annotation(annotations, name) else {
        return Ok(default);
    };
    let bad = |why: String| PlanError::Annotation {
        key: key.clone(),
        value: value.to_string(),
        why,
    };
    let n: u32 = value
        .parse()
        .map_err(|_| bad(format!("not a number of {unit}")))?;
    if n == 0 || n == default {
        return Ok(default);
    }
    if !config.annotation_enabled(name) {
        return Err(bad(format!(
            "the service's configuration does not let annotations change {name} \
             (enable_annotations); its value is {default}"
        )));
    }
    if n > max {
        return Err(bad(format!("more than the service allows ({max} {unit})")));
    }
    Ok(n)
}

/// Checks that `path` is a readable file.
fn readable_file(what: &'static str, path: &Path) -> Result<(), PlanError> {
    let bad = |why: String| PlanError::File {
        what,
        path: path.to_owned(),
        why,
    };
    let meta = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?;
    if !meta.is_file() {
        return Err(bad("not a regular file".into()));
    }
    std::fs::File::open(path).map_err(|e| bad(e.to_string()))?;
    Ok(())
}

impl VmPlan {
    /// Resolves CreateVM's request against the configuration, checking
    /// every file the VM will need. `netns` is the request's
    /// `networkNamespacePath` (empty: the service's own namespace).
    pub fn resolve(
        config: &Config,
        annotations: &HashMap<String, String>,
        netns: &str,
    ) -> Result<Self, PlanError> {
        let vcpus = count_annotation(
            config,
            annotations,
            "default_vcpus",
            config.default_vcpus,
            config.max_vcpus,
            "vCPUs",
        )?;
        let memory_mib = count_annotation(
            config,
            annotations,
            "default_memory",
            config.default_memory,
            config.max_memory,
            "MiB",
        )?;
        let transport = match hypervisor_annotation(annotations, "machine_type")
            .map(|(key, value)| (key, value.to_string()))
            .unwrap_or_else(|| (String::new(), config.machine_type.clone()))
        {
            (_, t) if t == "q35" => Transport::Pci,
            (_, t) if t == "microvm" => Transport::Mmio,
            (key, value) => {
                return Err(PlanError::Annotation {
                    key: if key.is_empty() {
                        "machine_type (configuration)".into()
                    } else {
                        key
                    },
                    value,
                    why: "ferry boots q35 (virtio-pci) or microvm (virtio-mmio)".into(),
                })
            }
        };
        for (name, why) in [
            ("cc_init_data", "ferry-kata has no initdata device"),
            ("default_gpu_model", "ferry has no GPU passthrough"),
        ] {
            if let Some((key, value)) = hypervisor_annotation(annotations, name) {
                return Err(PlanError::Annotation {
                    key,
                    value: value.to_string(),
                    why: why.into(),
                });
            }
        }
        if let Some((key, value)) = hypervisor_annotation(annotations, "default_gpus") {
            if value != "0" {
                return Err(PlanError::Annotation {
                    key,
                    value: value.to_string(),
                    why: "ferry has no GPU passthrough".into(),
                });
            }
        }
        let configured = match (&config.initrd, &config.image) {
            (Some(initrd), _) => Some(GuestImage::Initrd(initrd.clone())),
            (None, Some(image)) => Some(GuestImage::Image(image.clone())),
            (None, None) => None,
        };
        let guest_image = match hypervisor_annotation(annotations, "image") {
            Some((_, value)) if configured == Some(GuestImage::Image(value.into())) => configured,
            Some((key, value)) if !config.annotation_enabled("image") => {
                return Err(PlanError::Annotation {
                    key,
                    value: value.to_string(),
                    why: "the service's configuration does not let annotations choose the \
                          guest image (enable_annotations)"
                        .into(),
                })
            }
            Some((_, value)) => Some(GuestImage::Image(value.into())),
            None => configured,
        }
        .ok_or(PlanError::NoGuestImage)?;

        readable_file("kernel", &config.kernel)?;
        match &guest_image {
            GuestImage::Initrd(path) => readable_file("initrd", path)?,
            GuestImage::Image(path) => readable_file("image", path)?,
        }
        let mut kernel_params = String::new();
        if config.agent_log_port != 0 {
            kernel_params.push_str(&format!("agent.log_vport={}", config.agent_log_port));
        }
        if matches!(guest_image, GuestImage::Image(_)) {
            push_words(&mut kernel_params, &config.image_kernel_params);
        }
        push_words(&mut kernel_params, &config.kernel_params);

        let netns = netns.trim();
        let netns = if netns.is_empty() {
            None
        } else {
            let path = PathBuf::from(netns);
            check_netns(&path)?;
            Some(path)
        };
        let field = |key: &str| annotations.get(key).map(String::as_str).unwrap_or("");
        let pod = match (
            field(SANDBOX_NAMESPACE_ANNOTATION),
            field(SANDBOX_NAME_ANNOTATION),
        ) {
            ("", "") => String::new(),
            (ns, name) => format!("{ns}/{name}"),
        };
        Ok(VmPlan {
            kernel: config.kernel.clone(),
            guest_image,
            kernel_params,
            vcpus,
            memory_mib,
            transport,
            netns,
            pod,
        })
    }

    /// ferry's arguments for this VM. `default_cmdline` is ferry's own
    /// (`ferry --print-cmdline --virtio ...`), `vsock` the hybrid socket,
    /// `agent_socket` the plain socket joined to the agent's port.
    pub fn ferry_args(
        &self,
        config: &Config,
        id: &str,
        default_cmdline: &str,
        vsock: &Path,
        agent_socket: &Path,
    ) -> Vec<OsString> {
        let mut cmdline = default_cmdline.trim().to_string();
        push_words(&mut cmdline, &self.kernel_params);
        let mut args: Vec<OsString> = Vec::new();
        let mut push = |a: &str, b: OsString| {
            args.push(a.into());
            args.push(b);
        };
        push("--id", id.into());
        push("--kernel", self.kernel.clone().into());
        match &self.guest_image {
            GuestImage::Initrd(path) => push("--initrd", path.clone().into()),
            GuestImage::Image(path) => {
                let mut disk = path.clone().into_os_string();
                disk.push(",ro");
                push("--disk", disk)
            }
        }
        push("--cmdline", cmdline.into());
        push("--cpus", self.vcpus.to_string().into());
        push("--memory", self.memory_mib.to_string().into());
        push("--virtio", self.transport.as_ferry_arg().into());
        push("--console", "stdio".into());
        push("--shutdown-grace", config.shutdown_grace.to_string().into());
        push("--net", "passt".into());
        push("--passt", config.passt.clone().into());
        let mut vsock_spec = OsString::from("cid=3,uds=");
        vsock_spec.push(vsock);
        vsock_spec.push(format!(",listen={}:", config.agent_port));
        vsock_spec.push(agent_socket);
        push("--vsock", vsock_spec);
        for (flag, spec) in [("-t", &config.tcp_ports), ("-u", &config.udp_ports)] {
            push("--passt-arg", flag.into());
            push("--passt-arg", spec.into());
        }
        for arg in &config.passt_args {
            push("--passt-arg", arg.into());
        }
        push("--log-level", "info".into());
        args
    }
}

/// Appends the words of `more` to `line`, one space between.
fn push_words(line: &mut String, more: &str) {
    let more = more.trim();
    if more.is_empty() {
        return;
    }
    if !line.is_empty() {
        line.push(' ');
    }
    line.push_str(more);
}

/// Checks that `path` is a network namespace this process can open.
/// (Entering it is tried when the VM starts, in the child alone.)
fn check_netns(path: &Path) -> Result<(), PlanError> {
    let bad = |why: String| PlanError::Netns {
        path: path.to_owned(),
        why,
    };
    let file = std::fs::File::open(path).map_err(|e| bad(e.to_string()))?;
    // SAFETY: NS_GET_NSTYPE takes no argument and only reads the fd.
    let kind = unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&file), NS_GET_NSTYPE) };
    if kind < 0 {
        return Err(bad(format!(
            "not a namespace ({})",
            std::io::Error::last_os_error()
        )));
    }
    if kind != libc::CLONE_NEWNET {
        return Err(bad("a namespace, but not a network namespace".into()));
    }
    Ok(())
}

/// `NS_GET_NSTYPE` from `<linux/nsfs.h>`: `_IO(0xb7, 0x3)`.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

#[cfg(test)]
mod tests {
    use super::*;

    fn files() -> (tempdir::Dir, Config) {
        let dir = tempdir::Dir::new();
        let kernel = dir.file("vmlinuz");
        let initrd = dir.file("initrd");
        let text = format!(
            "kernel = {kernel:?}\ninitrd = {initrd:?}\ndefault_memory = 512\nkernel_params = \"quiet\"\n"
        );
        let config = Config::parse(&text).unwrap().check().unwrap();
        (dir, config)
    }

    fn hyp(name: &str, value: &str) -> (String, String) {
        (
            format!("{HYPERVISOR_ANNOTATION_PREFIX}{name}"),
            value.to_string(),
        )
    }

    /// What Kata's Go runtime sends with its default configuration.
    fn go_runtime_defaults() -> HashMap<String, String> {
        HashMap::from([
            (SANDBOX_NAME_ANNOTATION.to_string(), "web".to_string()),
            (
                SANDBOX_NAMESPACE_ANNOTATION.to_string(),
                "default".to_string(),
            ),
            hyp("machine_type", ""),
            hyp("image", ""),
            hyp("default_vcpus", "1"),
            hyp("default_memory", "2048"),
            hyp("cc_init_data", ""),
            hyp("default_gpus", "0"),
            hyp("default_gpu_model", ""),
        ])
    }

    #[test]
    fn the_runtimes_defaults_resolve() {
        let (_dir, config) = files();
        let plan = VmPlan::resolve(&config, &go_runtime_defaults(), "").unwrap();
        assert_eq!(plan.vcpus, 1);
        assert_eq!(plan.memory_mib, 2048);
        assert_eq!(plan.transport, Transport::Pci);
        assert_eq!(plan.kernel_params, "agent.log_vport=1025 quiet");
        assert_eq!(plan.pod, "default/web");
        assert_eq!(plan.netns, None);
    }

    #[test]
    fn annotations_change_what_the_configuration_allows() {
        let (_dir, config) = files();
        let mut a = go_runtime_defaults();
        a.extend([hyp("default_vcpus", "4"), hyp("machine_type", "microvm")]);
        let plan = VmPlan::resolve(&config, &a, "").unwrap();
        assert_eq!((plan.vcpus, plan.transport), (4, Transport::Mmio));
        let args = plan.ferry_args(
            &config,
            "s1",
            "console=ttyS0",
            "/r/v".as_ref(),
            "/r/a".as_ref(),
        );
        let args: Vec<String> = args.iter().map(|a| a.to_string_lossy().into()).collect();
        let after = |flag: &str| args[args.iter().position(|a| a == flag).unwrap() + 1].clone();
        assert_eq!(
            after("--cmdline"),
            "console=ttyS0 agent.log_vport=1025 quiet"
        );
        assert_eq!(after("--vsock"), "cid=3,uds=/r/v,listen=1024:/r/a");
        assert_eq!(after("--virtio"), "mmio");
        assert_eq!(after("--cpus"), "4");
    }

    #[test]
    fn what_cannot_be_honoured_is_an_error() {
        let (_dir, config) = files();
        for (name, value, why) in [
            (
                "default_vcpus",
                "9",
                "more than the service allows (8 vCPUs)",
            ),
            ("default_vcpus", "two", "not a number"),
            ("default_memory", "999999", "more than the service allows"),
            ("machine_type", "pseries", "q35"),
            (
                "image",
                "/x.img",
                "does not let annotations choose the guest image",
            ),
            ("cc_init_data", "abc", "initdata"),
            ("default_gpus", "1", "GPU"),
        ] {
            let mut a = go_runtime_defaults();
            a.extend([hyp(name, value)]);
            let err = VmPlan::resolve(&config, &a, "").unwrap_err().to_string();
            assert!(err.contains(why), "{name}={value}: {err}");
            assert!(err.contains(name), "{name}={value}: {err}");
        }
    }

    #[test]
    fn an_annotation_not_enabled_may_still_repeat_the_default() {
        let (_dir, mut config) = files();
        config.enable_annotations.clear();
        let mut a = go_runtime_defaults();
        a.extend([hyp("default_memory", "512")]);
        assert_eq!(VmPlan::resolve(&config, &a, "").unwrap().memory_mib, 512);
        a.extend([hyp("default_memory", "1024")]);
        let err = VmPlan::resolve(&config, &a, "").unwrap_err().to_string();
        assert!(err.contains("enable_annotations"), "{err}");
    }

    #[test]
    fn missing_files_and_bad_namespaces_are_named() {
        let (dir, mut config) = files();
        config.kernel = dir.path().join("nope");
        let err = VmPlan::resolve(&config, &HashMap::new(), "")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("kernel ") && err.contains("nope"), "{err}");
        let (dir, config) = files();
        let err = VmPlan::resolve(&config, &HashMap::new(), "/nonexistent/netns")
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/netns"), "{err}");
        let not_ns = dir.path().join("vmlinuz");
        let err = VmPlan::resolve(&config, &HashMap::new(), not_ns.to_str().unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a namespace"), "{err}");
        let ns = VmPlan::resolve(&config, &HashMap::new(), "/proc/self/ns/net").unwrap();
        assert_eq!(ns.netns, Some(PathBuf::from("/proc/self/ns/net")));
        let err = VmPlan::resolve(&config, &HashMap::new(), "/proc/self/ns/uts")
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a network namespace"), "{err}");
    }

    /// A scratch directory for the tests, removed on drop.
    mod tempdir {
        use std::path::{Path, PathBuf};

        pub struct Dir(PathBuf);

        impl Dir {
            pub fn new() -> Self {
                static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
                let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let path = std::env::temp_dir()
                    .join(format!("ferry-kata-plan-{}-{n}", std::process::id()));
                std::fs::create_dir_all(&path).unwrap();
                Dir(path)
            }
            pub fn path(&self) -> &Path {
                &self.0
            }
            pub fn file(&self, name: &str) -> PathBuf {
                let path = self.0.join(name);
                std::fs::write(&path, b"x").unwrap();
                path
            }
        }

        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }
}
