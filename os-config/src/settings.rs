//! Fragments → merged → validated settings.
//!
//! Fragments are merged in the order they come (image defaults, then
//! fw_cfg, the OEM partition, the kernel command line): a later
//! fragment's `hostname` and `[update]`/`[kubelet]` keys override; users,
//! files and units are keyed by name or path, and a later entry replaces
//! an earlier one with the same key; sysctl keys merge. Then the checks
//! that need the whole config: one source of contents per file, owners
//! that exist, unique uids.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::Serialize;

use crate::fragment::{Containerd, DropIn, Fragment, Kubelet, SysctlValue, Update};
use crate::types::{AbsPath, Hostname, Line, Mode, NodePath, Owner, SshKey, UnitName, UserName};
use crate::Error;

/// A fragment and where it came from.
#[derive(Clone, Debug)]
pub struct Source {
    /// For messages: `fw_cfg opt/org.drover/config`, a path.
    pub name: String,
    /// The TOML text.
    pub text: String,
}

/// Parses one fragment; errors name the source and the key.
pub fn parse_fragment(src: &Source) -> Result<Fragment, Error> {
    let de = toml::Deserializer::new(&src.text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        Error::Invalid {
            source_name: src.name.clone(),
            key: if path == "." { String::new() } else { path },
            reason: inner.message().trim().to_string(),
        }
    })
}

/// A user, settled.
#[derive(Clone, Debug, Serialize)]
pub struct UserSettings {
    /// Name.
    pub name: UserName,
    /// uid = primary gid.
    pub uid: u32,
    /// GECOS.
    pub gecos: Option<Line>,
    /// Shell.
    pub shell: AbsPath,
    /// Supplementary groups.
    pub groups: Vec<UserName>,
    /// SSH keys.
    pub ssh_authorized_keys: Vec<SshKey>,
}

/// A file, settled.
#[derive(Clone, Debug, Serialize)]
pub struct FileSettings {
    /// Where.
    pub path: NodePath,
    /// Mode.
    pub mode: Mode,
    /// Owner.
    pub owner: Owner,
    /// Group (`None`: the owner's primary group).
    pub group: Option<Owner>,
    /// Bytes.
    #[serde(skip)]
    pub contents: Vec<u8>,
}

/// A unit, settled.
#[derive(Clone, Debug, Serialize)]
pub struct UnitSettings {
    /// Name.
    pub name: UnitName,
    /// New unit file, if any.
    pub contents: Option<String>,
    /// Enable it.
    pub enabled: bool,
    /// Drop-ins.
    pub drop_ins: Vec<DropIn>,
}

/// The kubelet, settled.
#[derive(Clone, Debug, Serialize)]
pub struct KubeletSettings {
    /// Enabled.
    pub enabled: bool,
    /// Pinned digest.
    pub binary_sha256: Option<String>,
    /// The rest, as written.
    #[serde(flatten)]
    pub more: Kubelet,
}

impl KubeletSettings {
    /// Seconds the kubelet may take to stop the pods at a shutdown.
    pub fn shutdown_grace_period_secs(&self) -> u32 {
        self.more.shutdown_grace_period_secs.unwrap_or(30)
    }

    /// logind's `InhibitDelayMaxSec`: longer than the grace period, so the
    /// kubelet's delay inhibitor is honoured whole.
    pub fn inhibit_delay_max_secs(&self) -> u32 {
        self.shutdown_grace_period_secs() + 15
    }
}

/// The merged, validated node config.
#[derive(Clone, Debug, Serialize)]
pub struct Settings {
    /// Host name.
    pub hostname: Option<Hostname>,
    /// Users.
    pub users: Vec<UserSettings>,
    /// Files.
    pub files: Vec<FileSettings>,
    /// Units.
    pub units: Vec<UnitSettings>,
    /// sysctl.
    pub sysctl: BTreeMap<String, SysctlValue>,
    /// Agent settings, when any were given.
    pub update: Option<Update>,
    /// Kubelet, when configured.
    pub kubelet: Option<KubeletSettings>,
    /// containerd's registries and drop-ins (merged by host and by name).
    pub containerd: Containerd,
    /// Where it came from, in order.
    pub sources: Vec<String>,
    /// Which source each entry (`users.NAME`, `files["PATH"]`, …) came
    /// from, for messages.
    #[serde(skip)]
    pub origins: BTreeMap<String, String>,
}

impl Settings {
    /// The source of the entry `key` is about (the longest entry key it
    /// starts with).
    pub fn source_of(&self, key: &str) -> String {
        source_of(&self.origins, key)
    }
}

fn source_of(origins: &BTreeMap<String, String>, key: &str) -> String {
    origins
        .iter()
        .filter(|(k, _)| key.starts_with(k.as_str()))
        .max_by_key(|(k, _)| k.len())
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| "node config".into())
}

fn replace_by_key<T, K: PartialEq>(list: &mut Vec<T>, item: T, key: impl Fn(&T) -> K) {
    let k = key(&item);
    list.retain(|x| key(x) != k);
    list.push(item);
}

/// Merges fragments (in order) and validates the result.
pub fn settle(sources: &[Source]) -> Result<Settings, Error> {
    let mut merged = Fragment::default();
    let mut merged_containerd = Containerd::default();
    // For messages about a merged entry: the source it came from.
    let mut origin: BTreeMap<String, String> = BTreeMap::new();
    for src in sources {
        let f = parse_fragment(src)?;
        if f.hostname.is_some() {
            merged.hostname = f.hostname;
        }
        for u in f.users {
            origin.insert(format!("users.{}", u.name), src.name.clone());
            replace_by_key(&mut merged.users, u, |u| u.name.clone());
        }
        for file in f.files {
            origin.insert(format!("files[\"{}\"]", file.path), src.name.clone());
            replace_by_key(&mut merged.files, file, |f| f.path.clone());
        }
        for unit in f.units {
            origin.insert(format!("units[\"{}\"]", unit.name), src.name.clone());
            replace_by_key(&mut merged.units, unit, |u| u.name.clone());
        }
        merged.sysctl.extend(f.sysctl);
        if let Some(u) = f.update {
            origin.insert("update".into(), src.name.clone());
            let m = merged.update.get_or_insert_with(Update::default);
            m.server = u.server.or(m.server.take());
            m.channel = u.channel.or(m.channel.take());
            m.reboot_strategy = u.reboot_strategy.or(m.reboot_strategy);
            m.window = u.window.or(m.window.take());
            m.etcd = u.etcd.or(m.etcd.take());
            m.fleetlock = u.fleetlock.or(m.fleetlock.take());
            m.halt_after_failures = u.halt_after_failures.or(m.halt_after_failures);
            m.poll_interval_secs = u.poll_interval_secs.or(m.poll_interval_secs);
            m.require_measured_boot = u.require_measured_boot.or(m.require_measured_boot);
        }
        if let Some(c) = f.containerd {
            for r in c.registries {
                origin.insert(
                    format!("containerd.registries[\"{}\"]", r.host),
                    src.name.clone(),
                );
                replace_by_key(&mut merged_containerd.registries, r, |r| r.host.clone());
            }
            for d in c.drop_ins {
                origin.insert(
                    format!("containerd.drop-ins[\"{}\"]", d.name),
                    src.name.clone(),
                );
                replace_by_key(&mut merged_containerd.drop_ins, d, |d| d.name.clone());
            }
        }
        if let Some(k) = f.kubelet {
            origin.insert("kubelet".into(), src.name.clone());
            let m = merged.kubelet.get_or_insert_with(Kubelet::default);
            m.enabled = k.enabled.or(m.enabled);
            m.binary_sha256 = k.binary_sha256.or(m.binary_sha256.take());
            m.kubeconfig = k.kubeconfig.or(m.kubeconfig.take());
            m.cluster_dns = k.cluster_dns.or(m.cluster_dns.take());
            m.cluster_domain = k.cluster_domain.or(m.cluster_domain.take());
            m.node_labels = k.node_labels.or(m.node_labels.take());
            m.max_pods = k.max_pods.or(m.max_pods);
            m.shutdown_grace_period_secs = k
                .shutdown_grace_period_secs
                .or(m.shutdown_grace_period_secs);
        }
    }
    // The source of the entry an error is about: the longest origin key
    // the error's key starts with.
    let err = |key: String, reason: String| Error::Invalid {
        source_name: source_of(&origin, &key),
        key,
        reason,
    };

    // Users: uids from 1000 up where not given, never two the same.
    let mut users = Vec::new();
    let mut taken: Vec<u32> = merged.users.iter().filter_map(|u| u.uid).collect();
    let mut next = 1000;
    for u in &merged.users {
        let key = format!("users.{}", u.name);
        let root = u.name.as_str() == "root";
        if root && (u.uid.is_some_and(|x| x != 0) || u.gecos.is_some() || !u.groups.is_empty()) {
            return Err(err(
                key,
                "root exists already: only ssh-authorized-keys may be set for it".into(),
            ));
        }
        let uid = match (root, u.uid) {
            (true, _) => 0,
            (false, Some(0)) => return Err(err(format!("{key}.uid"), "uid 0 is root's".into())),
            (false, Some(x)) => x,
            (false, None) => {
                while taken.contains(&next) {
                    next += 1;
                }
                taken.push(next);
                next
            }
        };
        if users.iter().any(|x: &UserSettings| x.uid == uid) {
            return Err(err(
                format!("{key}.uid"),
                format!("uid {uid} is given twice"),
            ));
        }
        users.push(UserSettings {
            name: u.name.clone(),
            uid,
            gecos: u.gecos.clone(),
            shell: u
                .shell
                .clone()
                .unwrap_or_else(|| AbsPath::try_from("/bin/bash".to_string()).expect("valid")),
            groups: u.groups.clone(),
            ssh_authorized_keys: u.ssh_authorized_keys.clone(),
        });
    }

    let mut files = Vec::new();
    for f in &merged.files {
        let key = format!("files[\"{}\"]", f.path);
        let contents = match (&f.contents, &f.contents_base64) {
            (Some(_), Some(_)) => {
                return Err(err(
                    key,
                    "give contents or contents-base64, not both".into(),
                ))
            }
            (Some(t), None) => t.clone().into_bytes(),
            (None, Some(b)) => base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .map_err(|e| err(format!("{key}.contents-base64"), format!("not base64: {e}")))?,
            (None, None) => Vec::new(),
        };
        files.push(FileSettings {
            path: f.path.clone(),
            mode: f.mode.unwrap_or(Mode::from_bits(0o644)),
            owner: f.owner.clone().unwrap_or(Owner::Id(0)),
            group: f.group.clone(),
            contents,
        });
    }

    let mut units = Vec::new();
    for u in &merged.units {
        let key = format!("units[\"{}\"]", u.name);
        if u.contents.is_none() && u.drop_ins.is_empty() && u.enabled.is_none() {
            return Err(err(
                key,
                "nothing to do: give contents, drop-ins or enabled".into(),
            ));
        }
        if let Some(c) = &u.contents {
            if !c.lines().any(|l| l.trim().starts_with('[')) {
                return Err(err(
                    format!("{key}.contents"),
                    "a unit file has sections ([Unit], [Service], …)".into(),
                ));
            }
        }
        let mut seen = Vec::new();
        for d in &u.drop_ins {
            if seen.contains(&d.name) {
                return Err(err(
                    format!("{key}.drop-ins"),
                    format!("{} is given twice", d.name),
                ));
            }
            seen.push(d.name.clone());
        }
        units.push(UnitSettings {
            name: u.name.clone(),
            contents: u.contents.clone(),
            enabled: u.enabled.unwrap_or(false),
            drop_ins: u.drop_ins.clone(),
        });
    }

    if let Some(u) = &merged.update {
        // The agent's own check of what it will read.
        crate::render::agent_reboot(u)
            .check()
            .map_err(|(key, reason)| {
                // `window` and the lock tables sit in [update] itself; the
                // strategy is `update.reboot-strategy`.
                err(format!("update.{key}"), reason)
            })?;
        if u.halt_after_failures == Some(0) {
            return Err(err(
                "update.halt-after-failures".into(),
                "must be above 0 (leave it out for no halt)".into(),
            ));
        }
        if u.poll_interval_secs.is_some_and(|s| s < 10) {
            return Err(err(
                "update.poll-interval-secs".into(),
                "check at most every 10 seconds".into(),
            ));
        }
    }

    let kubelet = match merged.kubelet.clone() {
        None => None,
        Some(k) => {
            let enabled = k.enabled.unwrap_or(true);
            if enabled && k.binary_sha256.is_none() {
                return Err(err(
                    "kubelet.binary-sha256".into(),
                    format!(
                        "required: {} is started only when it has this SHA-256",
                        crate::paths::KUBELET_BINARY
                    ),
                ));
            }
            if k.shutdown_grace_period_secs
                .is_some_and(|g| !(3..=3600).contains(&g))
            {
                return Err(err(
                    "kubelet.shutdown-grace-period-secs".into(),
                    "3 to 3600 seconds".into(),
                ));
            }
            Some(KubeletSettings {
                enabled,
                binary_sha256: k.binary_sha256.as_ref().map(|s| s.to_string()),
                more: k,
            })
        }
    };

    for r in &merged_containerd.registries {
        let key = format!("containerd.registries[\"{}\"]", r.host);
        let plain = |u: &crate::types::Url| u.as_str().starts_with("http://");
        if !r.insecure {
            if let Some(u) = r.server.iter().chain(&r.mirrors).find(|u| plain(u)) {
                return Err(err(
                    key,
                    format!("{u} is plain HTTP: set insecure = true to allow it (for a registry on a trusted network only)"),
                ));
            }
        }
        if let Some(ca) = &r.ca {
            if !ca.contains("-----BEGIN CERTIFICATE-----") {
                return Err(err(
                    format!("{key}.ca"),
                    "not a PEM certificate (-----BEGIN CERTIFICATE-----)".into(),
                ));
            }
        }
    }
    for d in &merged_containerd.drop_ins {
        let key = format!("containerd.drop-ins[\"{}\"]", d.name);
        let table: toml::Table = d.contents.parse().map_err(|e: toml::de::Error| {
            err(
                format!("{key}.contents"),
                format!("not TOML: {}", e.message()),
            )
        })?;
        if table.contains_key("imports") {
            return Err(err(
                format!("{key}.contents"),
                "a drop-in cannot import others (containerd reads imports only from the main config)".into(),
            ));
        }
        // containerd 1.6 merges an import plugin by plugin: a drop-in's
        // table for a plugin replaces the main config's whole table for
        // it. A CRI table without the registry's config_path would turn
        // off every [[containerd.registries]] entry without a word.
        let cri = table
            .get("plugins")
            .and_then(|p| p.get("io.containerd.grpc.v1.cri"));
        if let Some(cri) = cri {
            let path = cri
                .get("registry")
                .and_then(|r| r.get("config_path"))
                .and_then(|v| v.as_str());
            if path != Some(crate::paths::CONTAINERD_CERTS_D) {
                return Err(err(
                    format!("{key}.contents"),
                    format!(
                        "this drop-in's [plugins.\"io.containerd.grpc.v1.cri\"] replaces the image's whole CRI table (containerd merges imports plugin by plugin), which sets registry.config_path = \"{}\" for [[containerd.registries]] and the CNI directories: repeat them in it",
                        crate::paths::CONTAINERD_CERTS_D
                    ),
                ));
            }
        }
    }

    Ok(Settings {
        hostname: merged.hostname,
        users,
        files,
        units,
        sysctl: merged
            .sysctl
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        update: merged.update,
        kubelet,
        containerd: merged_containerd,
        sources: sources.iter().map(|s| s.name.clone()).collect(),
        origins: origin,
    })
}
