//! One config fragment as written: every field optional, unknown keys
//! refused, each value checked by its type as it is read (so an error
//! names the fragment and the key).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::types::{
    AbsPath, Channel, DropInName, Hostname, Line, Mode, NodePath, Owner, RegistryHost, Sha256Hex,
    SshKey, SysctlKey, TomlDropInName, UnitName, Url, UserName,
};
pub use drover_core::agent_config::{EtcdLock, FleetLock, Strategy, Window};

/// A fragment: the whole schema, every part optional.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Fragment {
    /// The node's host name (`/etc/hostname`).
    pub hostname: Option<Hostname>,
    /// Users to create (by `systemd-sysusers`), with SSH keys.
    #[serde(default)]
    pub users: Vec<User>,
    /// Files to write.
    #[serde(default)]
    pub files: Vec<File>,
    /// systemd units: new ones, drop-ins, enabling.
    #[serde(default)]
    pub units: Vec<Unit>,
    /// Kernel parameters (`/etc/sysctl.d`).
    #[serde(default)]
    pub sysctl: BTreeMap<SysctlKey, SysctlValue>,
    /// The update agent's settings.
    pub update: Option<Update>,
    /// The kubelet.
    pub kubelet: Option<Kubelet>,
    /// containerd: registries (mirrors, plain HTTP, private CAs) and
    /// configuration drop-ins.
    pub containerd: Option<Containerd>,
}

/// A user.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct User {
    /// Login name. `root` takes only `ssh-authorized-keys`.
    pub name: UserName,
    /// User (and primary group) id; default: from 1000 up, in order.
    pub uid: Option<u32>,
    /// GECOS field.
    pub gecos: Option<Line>,
    /// Login shell; default `/bin/bash`.
    pub shell: Option<AbsPath>,
    /// Supplementary groups (created when missing).
    #[serde(default)]
    pub groups: Vec<UserName>,
    /// `authorized_keys` lines.
    #[serde(default)]
    pub ssh_authorized_keys: Vec<SshKey>,
}

/// A file.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct File {
    /// Where.
    pub path: NodePath,
    /// Permission bits, octal; default `0644`.
    pub mode: Option<Mode>,
    /// Owner; default `root`.
    pub owner: Option<Owner>,
    /// Group; default the owner's primary group.
    pub group: Option<Owner>,
    /// Text contents.
    pub contents: Option<String>,
    /// Binary contents, base64.
    pub contents_base64: Option<String>,
}

/// A unit.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Unit {
    /// Unit name with its suffix.
    pub name: UnitName,
    /// The unit file (for a new unit, written to `/etc/systemd/system`).
    pub contents: Option<String>,
    /// Enable it (links as its `[Install]` section says).
    pub enabled: Option<bool>,
    /// Drop-ins (`/etc/systemd/system/NAME.d/`).
    #[serde(default)]
    pub drop_ins: Vec<DropIn>,
}

/// A unit drop-in.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct DropIn {
    /// `NAME.conf`.
    pub name: DropInName,
    /// Its text.
    pub contents: String,
}

/// A sysctl value: text or a number.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum SysctlValue {
    /// A number.
    Int(i64),
    /// Text, one line.
    Text(Line),
}

impl std::fmt::Display for SysctlValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SysctlValue::Int(i) => write!(f, "{i}"),
            SysctlValue::Text(t) => write!(f, "{t}"),
        }
    }
}

/// The update agent's settings (rendered as an agent drop-in); the types
/// are the agent's own ([`drover_core::agent_config`]).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Update {
    /// The release repository.
    pub server: Option<Url>,
    /// Channel.
    pub channel: Option<Channel>,
    /// `immediate`, `off`, `window`, `etcd-lock` or `fleetlock`.
    pub reboot_strategy: Option<Strategy>,
    /// The maintenance window, for `window` (and a lock strategy's, when
    /// set).
    pub window: Option<Window>,
    /// The etcd cluster holding the reboot lock, for `etcd-lock`.
    pub etcd: Option<EtcdLock>,
    /// The FleetLock server, for `fleetlock`.
    pub fleetlock: Option<FleetLock>,
    /// Halt a release once this many nodes failed to boot it (`etcd-lock`).
    pub halt_after_failures: Option<u32>,
    /// Seconds between checks.
    pub poll_interval_secs: Option<u64>,
    /// Secure sites: a boot whose TPM measurements do not verify is never
    /// marked successful (an update falls back).
    pub require_measured_boot: Option<bool>,
}

/// The kubelet.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Kubelet {
    /// Enable `kubelet.service`.
    pub enabled: Option<bool>,
    /// The SHA-256 of `/opt/bin/kubelet` (not a Debian package: a
    /// `[[files]]` entry, the installer or provisioning puts it there);
    /// `kubelet.service` refuses to start any other binary.
    pub binary_sha256: Option<Sha256Hex>,
    /// `--kubeconfig` for the API server.
    pub kubeconfig: Option<NodePath>,
    /// Cluster DNS servers (IP addresses).
    pub cluster_dns: Option<Vec<std::net::IpAddr>>,
    /// Cluster domain.
    pub cluster_domain: Option<Hostname>,
    /// Node labels.
    pub node_labels: Option<BTreeMap<Line, Line>>,
    /// Maximum pods.
    pub max_pods: Option<u32>,
    /// The kubelet's graceful node shutdown: seconds it may take to stop
    /// the pods when the node shuts down or reboots (default 30; a third
    /// of it for critical pods). logind's `InhibitDelayMaxSec` is set
    /// longer, or the kubelet's delay inhibitor is cut short
    /// (kubernetes/kubernetes#102818).
    pub shutdown_grace_period_secs: Option<u32>,
}

/// `[containerd]`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Containerd {
    /// How to reach registries: one entry per registry host
    /// (`/etc/containerd/certs.d/HOST/hosts.toml`).
    #[serde(default)]
    pub registries: Vec<Registry>,
    /// containerd configuration drop-ins (`/etc/containerd/conf.d/NAME.toml`,
    /// imported by the image's `/etc/containerd/config.toml`).
    #[serde(default)]
    pub drop_ins: Vec<ContainerdDropIn>,
}

/// `[[containerd.registries]]`: one registry as containerd's hosts.toml
/// describes it.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Registry {
    /// The registry host as image references name it (`docker.io`,
    /// `registry.example:5000`).
    pub host: RegistryHost,
    /// Where the registry itself is; default `https://HOST`
    /// (`https://registry-1.docker.io` for `docker.io`).
    pub server: Option<Url>,
    /// Mirrors tried first, in order, for pulls.
    #[serde(default)]
    pub mirrors: Vec<Url>,
    /// Plain HTTP, or HTTPS without checking the certificate. For a
    /// registry on a trusted network only.
    #[serde(default)]
    pub insecure: bool,
    /// A CA certificate (PEM) that signs the registry's and its mirrors'
    /// certificates, added to the system's.
    pub ca: Option<String>,
}

/// `[[containerd.drop-ins]]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ContainerdDropIn {
    /// `NAME.toml`.
    pub name: TomlDropInName,
    /// Its text: containerd configuration (version 2), checked to be TOML.
    pub contents: String,
}
