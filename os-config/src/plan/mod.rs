//! What applying a config does, as a list of file actions computed before
//! anything is written: every name resolved, every unit's `[Install]`
//! section read, every refusal found first. Applying is then only writes
//! ([`apply`]), so a config that cannot be applied leaves the node
//! untouched.
//!
//! The plan is made section by section: accounts (`accounts`: the image's
//! databases, the config's users), files (`files`), units (`units`), and
//! the rest (hostname, sysctl, the agent's and the kubelet's settings)
//! here.

use std::path::Path;

use serde::Serialize;

use crate::paths::{
    AGENT_DROP_IN, CONTAINERD_CERTS_D, CONTAINERD_CONF_D, KUBELET_CONFIG, KUBELET_ENV,
    LOGIND_DROP_IN,
};
use crate::settings::Settings;
use crate::Error;

mod accounts;
mod apply;
mod files;
mod units;

pub use apply::apply;

/// One thing to do to the node's root file system.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Action {
    /// Create a directory (and nothing above it).
    Mkdir {
        /// Absolute path on the node.
        path: String,
        /// Mode bits.
        mode: u32,
        /// Owner.
        uid: u32,
        /// Group.
        gid: u32,
    },
    /// Write a whole file (atomically: temporary file, fsync, rename).
    Write {
        /// Absolute path on the node.
        path: String,
        /// Mode bits.
        mode: u32,
        /// Owner.
        uid: u32,
        /// Group.
        gid: u32,
        /// Bytes.
        #[serde(skip)]
        contents: Vec<u8>,
        /// Size, for the listing.
        size: usize,
        /// Why (which part of the config).
        why: String,
    },
    /// Create a symbolic link (replacing one that is there).
    Symlink {
        /// Absolute path on the node.
        path: String,
        /// Where it points.
        target: String,
        /// Why.
        why: String,
    },
}

impl Action {
    /// A root-owned 0644 file (the shape of most of what a config writes).
    pub(crate) fn root_file(path: &str, contents: Vec<u8>, why: impl Into<String>) -> Self {
        Action::Write {
            path: path.to_string(),
            mode: 0o644,
            uid: 0,
            gid: 0,
            size: contents.len(),
            contents,
            why: why.into(),
        }
    }

    /// The path acted on.
    pub fn path(&self) -> &str {
        match self {
            Action::Mkdir { path, .. }
            | Action::Write { path, .. }
            | Action::Symlink { path, .. } => path,
        }
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::Mkdir {
                path,
                mode,
                uid,
                gid,
            } => write!(f, "mkdir   {path} ({mode:04o} {uid}:{gid})"),
            Action::Write {
                path,
                mode,
                uid,
                gid,
                size,
                why,
                ..
            } => {
                let id = |i: &u32| {
                    if *i == UNRESOLVED {
                        "(from the image)".to_string()
                    } else {
                        i.to_string()
                    }
                };
                write!(
                    f,
                    "write   {path} ({mode:04o} {}:{}, {size} bytes) for {why}",
                    id(uid),
                    id(gid)
                )
            }
            Action::Symlink { path, target, why } => {
                write!(f, "link    {path} -> {target} for {why}")
            }
        }
    }
}

/// An owner or group named in the config that only the image could
/// resolve (when checking without the image).
pub const UNRESOLVED: u32 = u32::MAX;

/// What every section reads: the settings, and the image when there is one.
struct Ctx<'a> {
    settings: &'a Settings,
    /// The image's root (`None` when checking on a build host).
    root: Option<&'a Path>,
    /// The image's accounts (empty without an image).
    acc: accounts::Accounts,
}

impl Ctx<'_> {
    /// An invalid setting, named with its source file.
    fn bad(&self, key: String, reason: String) -> Error {
        Error::Invalid {
            source_name: self.settings.source_of(&key),
            key,
            reason,
        }
    }
}

/// The actions so far.
struct Out<'a> {
    root: Option<&'a Path>,
    list: Vec<Action>,
}

impl Out<'_> {
    fn push(&mut self, a: Action) {
        self.list.push(a);
    }

    /// Parent directories of `path` that do not exist yet (and are not
    /// made by an earlier action): root-owned 0755. Not listed when
    /// checking without the image: which exist is the image's business.
    fn parents(&mut self, path: &str) {
        let Some(root) = self.root else {
            return;
        };
        let mut cur = String::new();
        let comps: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        for c in &comps[..comps.len() - 1] {
            cur.push('/');
            cur.push_str(c);
            let exists = root.join(&cur[1..]).exists();
            let planned = self
                .list
                .iter()
                .any(|a| matches!(a, Action::Mkdir { path, .. } if *path == cur));
            if !exists && !planned {
                self.list.push(Action::Mkdir {
                    path: cur.clone(),
                    mode: 0o755,
                    uid: 0,
                    gid: 0,
                });
            }
        }
    }
}

/// Computes the actions for `settings` on the root file system at `root`
/// (its `/etc`, `/usr` are read for accounts and unit files). With `root`
/// `None` (checking a config on a build host), names resolve only to the
/// config's own users and `root`, and units to their own contents.
pub fn plan(settings: &Settings, root: Option<&Path>) -> Result<Vec<Action>, Error> {
    let cx = Ctx {
        settings,
        root,
        acc: root.map(accounts::Accounts::read).unwrap_or_default(),
    };
    let mut out = Out {
        root,
        list: Vec::new(),
    };

    if let Some(h) = &settings.hostname {
        out.parents("/etc/hostname");
        out.push(Action::root_file(
            "/etc/hostname",
            format!("{h}\n").into_bytes(),
            "hostname",
        ));
    }
    let user_ids = accounts::users(&cx, &mut out)?;
    files::files(&cx, &user_ids, &mut out)?;
    units::units(&cx, &mut out)?;
    if !settings.sysctl.is_empty() {
        let mut text = String::from("# Written by Drover from the node config.\n");
        for (k, v) in &settings.sysctl {
            text.push_str(&format!("{k} = {v}\n"));
        }
        let p = "/etc/sysctl.d/90-drover-node-config.conf";
        out.parents(p);
        out.push(Action::root_file(p, text.into_bytes(), "sysctl"));
    }

    if let Some(u) = &settings.update {
        let text = crate::render::agent_drop_in(u);
        out.parents(AGENT_DROP_IN);
        out.push(Action::root_file(
            AGENT_DROP_IN,
            text.into_bytes(),
            "update",
        ));
    }

    if let Some(k) = &settings.kubelet {
        for (path, text) in [
            (KUBELET_CONFIG, crate::render::kubelet_config(k)),
            (KUBELET_ENV, crate::render::kubelet_env(k)),
            (LOGIND_DROP_IN, crate::render::logind_drop_in(k)),
        ] {
            out.parents(path);
            out.push(Action::root_file(path, text.into_bytes(), "kubelet"));
        }
        if k.enabled {
            let p = "/etc/systemd/system/multi-user.target.wants/kubelet.service";
            out.parents(p);
            out.push(Action::Symlink {
                path: p.into(),
                target: "/usr/lib/systemd/system/kubelet.service".into(),
                why: "kubelet.enabled".into(),
            });
        }
    }
    for r in &settings.containerd.registries {
        let why = format!("containerd.registries[\"{}\"]", r.host);
        let dir = format!("{CONTAINERD_CERTS_D}/{}", r.host);
        let ca = r.ca.as_ref().map(|pem| {
            let p = format!("{dir}/ca.crt");
            out.parents(&p);
            out.push(Action::root_file(&p, pem.clone().into_bytes(), why.clone()));
            p
        });
        let p = format!("{dir}/hosts.toml");
        out.parents(&p);
        out.push(Action::root_file(
            &p,
            crate::render::containerd_hosts_toml(r, ca.as_deref()).into_bytes(),
            why,
        ));
    }
    for d in &settings.containerd.drop_ins {
        let p = format!("{CONTAINERD_CONF_D}/{}", d.name);
        out.parents(&p);
        out.push(Action::root_file(
            &p,
            d.contents.clone().into_bytes(),
            format!("containerd.drop-ins[\"{}\"]", d.name),
        ));
    }
    Ok(out.list)
}
