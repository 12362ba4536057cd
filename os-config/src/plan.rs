//! What applying a config does, as a list of file actions computed before
//! anything is written: every name resolved, every unit's `[Install]`
//! section read, every refusal found first. Applying is then only writes,
//! so a config that cannot be applied leaves the node untouched.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::settings::Settings;
use crate::types::Owner;
use crate::Error;

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

/// The passwd and group databases of the image, by name.
#[derive(Debug, Default)]
struct Accounts {
    passwd: String,
    group: String,
    shadow: Option<String>,
    users: BTreeMap<String, (u32, u32)>,
    groups: BTreeMap<String, u32>,
}

impl Accounts {
    fn read(root: &Path) -> Self {
        let rd = |p: &str| std::fs::read_to_string(root.join(p)).ok();
        let passwd = rd("etc/passwd").unwrap_or_default();
        let group = rd("etc/group").unwrap_or_default();
        let mut a = Accounts {
            shadow: rd("etc/shadow"),
            ..Default::default()
        };
        for l in passwd.lines() {
            let f: Vec<&str> = l.split(':').collect();
            if let (Some(n), Some(u), Some(g)) = (f.first(), f.get(2), f.get(3)) {
                if let (Ok(u), Ok(g)) = (u.parse(), g.parse()) {
                    a.users.insert(n.to_string(), (u, g));
                }
            }
        }
        for l in group.lines() {
            let f: Vec<&str> = l.split(':').collect();
            if let (Some(n), Some(g)) = (f.first(), f.get(2)) {
                if let Ok(g) = g.parse() {
                    a.groups.insert(n.to_string(), g);
                }
            }
        }
        a.passwd = passwd;
        a.group = group;
        a
    }
}

/// Appends `line` to a line-based database (passwd, shadow), ending the
/// text before it with a newline if it lacks one.
fn append_line(text: &mut String, line: &str) {
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(line);
    text.push('\n');
}

/// Mode and owner of an existing file in the image, or defaults.
fn meta_of(root: &Path, rel: &str, default: (u32, u32, u32)) -> (u32, u32, u32) {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(root.join(rel))
        .map(|m| (m.mode() & 0o7777, m.uid(), m.gid()))
        .unwrap_or(default)
}

/// `WantedBy=`/`RequiredBy=` of a unit file's `[Install]` section, as
/// `(target, "wants" | "requires")`.
fn install_links(unit: &str) -> Vec<(String, &'static str)> {
    let mut out = Vec::new();
    let mut in_install = false;
    for l in unit.lines() {
        let l = l.trim();
        if l.starts_with('[') {
            in_install = l == "[Install]";
            continue;
        }
        if !in_install {
            continue;
        }
        let Some((k, v)) = l.split_once('=') else {
            continue;
        };
        let kind = match k.trim() {
            "WantedBy" => "wants",
            "RequiredBy" => "requires",
            _ => continue,
        };
        for t in v.split_whitespace() {
            out.push((t.to_string(), kind));
        }
    }
    out
}

/// An owner or group named in the config that only the image could
/// resolve (when checking without the image).
pub const UNRESOLVED: u32 = u32::MAX;

/// Where the image and its packages keep units (read for `[Install]`).
const UNIT_DIRS: [&str; 3] = [
    "etc/systemd/system",
    "usr/lib/systemd/system",
    "lib/systemd/system",
];

/// The agent drop-in the `[update]` section becomes.
pub const AGENT_DROP_IN: &str = "/etc/drover/agent.toml.d/50-node-config.toml";
/// The kubelet's rendered config.
pub const KUBELET_CONFIG: &str = "/etc/kubernetes/kubelet-config.yaml";
/// The kubelet unit's environment (pinned digest, extra arguments).
pub const KUBELET_ENV: &str = "/etc/drover/kubelet.env";
/// Where the kubelet binary goes.
pub const KUBELET_BINARY: &str = "/opt/bin/kubelet";

/// Computes the actions for `settings` on the root file system at `root`
/// (its `/etc`, `/usr` are read for accounts and unit files). With `root`
/// `None` (checking a config on a build host), names resolve only to the
/// config's own users and `root`, and units to their own contents.
pub fn plan(settings: &Settings, root: Option<&Path>) -> Result<Vec<Action>, Error> {
    let bad = |key: String, reason: String| Error::Invalid {
        source_name: settings.source_of(&key),
        key,
        reason,
    };
    let acc = root.map(Accounts::read).unwrap_or_default();
    let mut actions = Vec::new();
    // Parent directories that do not exist yet (and are not made by an
    // earlier action): root-owned 0755.
    // (Not listed when checking without the image: which exist is the
    // image's business.)
    let parents = |actions: &mut Vec<Action>, path: &str| {
        let Some(root) = root else {
            return;
        };
        let mut cur = String::new();
        let comps: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        for c in &comps[..comps.len() - 1] {
            cur.push('/');
            cur.push_str(c);
            let exists = root.join(&cur[1..]).exists();
            let planned = actions
                .iter()
                .any(|a| matches!(a, Action::Mkdir { path, .. } if *path == cur));
            if !exists && !planned {
                actions.push(Action::Mkdir {
                    path: cur.clone(),
                    mode: 0o755,
                    uid: 0,
                    gid: 0,
                });
            }
        }
    };

    if let Some(h) = &settings.hostname {
        parents(&mut actions, "/etc/hostname");
        actions.push(Action::root_file(
            "/etc/hostname",
            format!("{h}\n").into_bytes(),
            "hostname",
        ));
    }

    // Users: passwd, group and shadow lines, homes, authorized_keys.
    let mut user_ids: BTreeMap<String, (u32, u32)> = BTreeMap::new();
    user_ids.insert("root".into(), (0, 0));
    let new_users: Vec<_> = settings
        .users
        .iter()
        .filter(|u| u.name.as_str() != "root")
        .collect();
    if !new_users.is_empty() {
        let mut passwd = acc.passwd.clone();
        let mut group_lines: Vec<String> = acc.group.lines().map(str::to_string).collect();
        let mut shadow = acc.shadow.clone().unwrap_or_default();
        for u in &new_users {
            let key = format!("users.{}", u.name);
            if acc.users.contains_key(u.name.as_str()) {
                return Err(bad(key, format!("user {} exists in the image", u.name)));
            }
            if let Some((n, _)) = acc.users.iter().find(|(_, (id, _))| *id == u.uid) {
                return Err(bad(
                    format!("{key}.uid"),
                    format!("uid {} is {n}'s in the image", u.uid),
                ));
            }
            if acc.groups.contains_key(u.name.as_str()) || acc.groups.values().any(|g| *g == u.uid)
            {
                return Err(bad(
                    key,
                    format!("group {} or gid {} exists in the image", u.name, u.uid),
                ));
            }
            for g in &u.groups {
                let known = root.is_none()
                    || acc.groups.contains_key(g.as_str())
                    || new_users.iter().any(|x| x.name == *g);
                if !known {
                    return Err(bad(
                        format!("{key}.groups"),
                        format!("group {g} does not exist in the image"),
                    ));
                }
            }
            append_line(
                &mut passwd,
                &format!(
                    "{}:x:{}:{}:{}:/home/{}:{}",
                    u.name,
                    u.uid,
                    u.uid,
                    u.gecos
                        .as_ref()
                        .map(|g| g.as_str().replace(':', " "))
                        .unwrap_or_default(),
                    u.name,
                    u.shell
                ),
            );
            group_lines.push(format!("{}:x:{}:", u.name, u.uid));
            if acc.shadow.is_some() {
                // `*`: no password login; SSH keys only.
                append_line(&mut shadow, &format!("{}:*:0:0:99999:7:::", u.name));
            }
            user_ids.insert(u.name.to_string(), (u.uid, u.uid));
        }
        // Supplementary groups: add members.
        for line in group_lines.iter_mut() {
            let name = line.split(':').next().unwrap_or("").to_string();
            let members: Vec<&str> = new_users
                .iter()
                .filter(|u| u.groups.iter().any(|g| g.as_str() == name))
                .map(|u| u.name.as_str())
                .collect();
            if members.is_empty() {
                continue;
            }
            let mut f: Vec<String> = line.split(':').map(str::to_string).collect();
            while f.len() < 4 {
                f.push(String::new());
            }
            let mut list: Vec<String> = f[3]
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect();
            for m in members {
                if !list.iter().any(|x| x == m) {
                    list.push(m.to_string());
                }
            }
            f[3] = list.join(",");
            *line = f.join(":");
        }
        let root_dir = root.unwrap_or(Path::new("/nonexistent"));
        let mut group = group_lines.join("\n");
        group.push('\n');
        for (rel, text, default) in [
            ("etc/passwd", passwd, (0o644, 0, 0)),
            ("etc/group", group, (0o644, 0, 0)),
        ] {
            let (mode, uid, gid) = meta_of(root_dir, rel, default);
            actions.push(Action::Write {
                path: format!("/{rel}"),
                mode,
                uid,
                gid,
                size: text.len(),
                contents: text.into_bytes(),
                why: "users".into(),
            });
        }
        if acc.shadow.is_some() {
            let (mode, uid, gid) = meta_of(root_dir, "etc/shadow", (0o640, 0, 0));
            actions.push(Action::Write {
                path: "/etc/shadow".into(),
                mode,
                uid,
                gid,
                size: shadow.len(),
                contents: shadow.into_bytes(),
                why: "users".into(),
            });
        }
    }
    for u in &settings.users {
        let (uid, gid) = user_ids[u.name.as_str()];
        let home = if uid == 0 {
            "/root".to_string()
        } else {
            format!("/home/{}", u.name)
        };
        if uid != 0 {
            parents(&mut actions, &home);
            actions.push(Action::Mkdir {
                path: home.clone(),
                mode: 0o700,
                uid,
                gid,
            });
        }
        if u.ssh_authorized_keys.is_empty() {
            continue;
        }
        actions.push(Action::Mkdir {
            path: format!("{home}/.ssh"),
            mode: 0o700,
            uid,
            gid,
        });
        let mut text = String::new();
        for k in &u.ssh_authorized_keys {
            text.push_str(k.as_str());
            text.push('\n');
        }
        actions.push(Action::Write {
            path: format!("{home}/.ssh/authorized_keys"),
            mode: 0o600,
            uid,
            gid,
            size: text.len(),
            contents: text.into_bytes(),
            why: format!("users.{}.ssh-authorized-keys", u.name),
        });
    }

    // Files.
    // Checking on a build host, names the image holds cannot be
    // resolved: they show as UNRESOLVED.
    let unresolved = root.is_none().then_some((UNRESOLVED, UNRESOLVED));
    let resolve_user = |o: &Owner, key: &str| -> Result<(u32, u32), Error> {
        match o {
            Owner::Id(i) => Ok((*i, *i)),
            Owner::Name(n) => user_ids
                .get(n.as_str())
                .copied()
                .or_else(|| acc.users.get(n.as_str()).copied())
                .or(unresolved)
                .ok_or_else(|| {
                    bad(
                        key.to_string(),
                        format!("no user {n} in the config or the image"),
                    )
                }),
        }
    };
    for f in &settings.files {
        let key = format!("files[\"{}\"]", f.path);
        let (uid, primary) = resolve_user(&f.owner, &format!("{key}.owner"))?;
        let gid = match &f.group {
            None => primary,
            Some(Owner::Id(g)) => *g,
            Some(Owner::Name(n)) => user_ids
                .get(n.as_str())
                .map(|x| x.1)
                .or_else(|| acc.groups.get(n.as_str()).copied())
                .or(unresolved.map(|x| x.1))
                .ok_or_else(|| {
                    bad(
                        format!("{key}.group"),
                        format!("no group {n} in the config or the image"),
                    )
                })?,
        };
        parents(&mut actions, f.path.as_str());
        actions.push(Action::Write {
            path: f.path.to_string(),
            mode: f.mode.bits(),
            uid,
            gid,
            size: f.contents.len(),
            contents: f.contents.clone(),
            why: key,
        });
    }

    // Units.
    for u in &settings.units {
        let key = format!("units[\"{}\"]", u.name);
        let unit_path = format!("/etc/systemd/system/{}", u.name);
        if let Some(c) = &u.contents {
            parents(&mut actions, &unit_path);
            actions.push(Action::root_file(
                &unit_path,
                c.clone().into_bytes(),
                key.clone(),
            ));
        }
        for d in &u.drop_ins {
            let p = format!("/etc/systemd/system/{}.d/{}", u.name, d.name);
            parents(&mut actions, &p);
            actions.push(Action::root_file(
                &p,
                d.contents.clone().into_bytes(),
                format!("{key}.drop-ins"),
            ));
        }
        if !u.enabled {
            continue;
        }
        let (text, target) = match &u.contents {
            Some(c) => (c.clone(), unit_path.clone()),
            None => {
                let found = root.and_then(|r| {
                    UNIT_DIRS.iter().find_map(|d| {
                        let p = r.join(d).join(u.name.as_str());
                        std::fs::read_to_string(&p)
                            .ok()
                            .map(|t| (t, format!("/{d}/{}", u.name)))
                    })
                });
                match (found, root) {
                    (Some(f), _) => f,
                    (None, Some(_)) => {
                        return Err(bad(
                            format!("{key}.enabled"),
                            format!("no unit {} in the image to enable", u.name),
                        ))
                    }
                    // Checking on a build host: the image is not here.
                    (None, None) => {
                        actions.push(Action::Symlink {
                            path: format!("/etc/systemd/system/*.wants/{}", u.name),
                            target: format!("(the image's {})", u.name),
                            why: format!("{key}.enabled, as its [Install] section says"),
                        });
                        continue;
                    }
                }
            }
        };
        let links = install_links(&text);
        if links.is_empty() {
            return Err(bad(
                format!("{key}.enabled"),
                "the unit has no WantedBy= or RequiredBy= in [Install] to enable it by".into(),
            ));
        }
        for (t, kind) in links {
            let p = format!("/etc/systemd/system/{t}.{kind}/{}", u.name);
            parents(&mut actions, &p);
            actions.push(Action::Symlink {
                path: p,
                target: target.clone(),
                why: format!("{key}.enabled"),
            });
        }
    }

    if !settings.sysctl.is_empty() {
        let mut text = String::from("# Written by Drover from the node config.\n");
        for (k, v) in &settings.sysctl {
            text.push_str(&format!("{k} = {v}\n"));
        }
        let p = "/etc/sysctl.d/90-drover-node-config.conf";
        parents(&mut actions, p);
        actions.push(Action::root_file(p, text.into_bytes(), "sysctl"));
    }

    if let Some(u) = &settings.update {
        let text = crate::render::agent_drop_in(u);
        parents(&mut actions, AGENT_DROP_IN);
        actions.push(Action::root_file(
            AGENT_DROP_IN,
            text.into_bytes(),
            "update",
        ));
    }

    if let Some(k) = &settings.kubelet {
        for (path, text) in [
            (KUBELET_CONFIG, crate::render::kubelet_config(k)),
            (KUBELET_ENV, crate::render::kubelet_env(k)),
        ] {
            parents(&mut actions, path);
            actions.push(Action::root_file(path, text.into_bytes(), "kubelet"));
        }
        if k.enabled {
            let p = "/etc/systemd/system/multi-user.target.wants/kubelet.service";
            parents(&mut actions, p);
            actions.push(Action::Symlink {
                path: p.into(),
                target: "/usr/lib/systemd/system/kubelet.service".into(),
                why: "kubelet.enabled".into(),
            });
        }
    }
    Ok(actions)
}

/// Applies `actions` under `root`: directories, then atomic file writes
/// (temporary file, owner, mode, fsync, rename), then links; the
/// directories written to are synced at the end.
pub fn apply(actions: &[Action], root: &Path) -> Result<(), Error> {
    use std::io::Write as _;
    use std::os::unix::fs::PermissionsExt as _;
    let io = |path: &Path, e: std::io::Error| Error::Io {
        path: path.to_path_buf(),
        source: e,
    };
    let mut touched: Vec<PathBuf> = Vec::new();
    for a in actions {
        let p = root.join(a.path().trim_start_matches('/'));
        match a {
            Action::Mkdir { mode, uid, gid, .. } => {
                match std::fs::create_dir(&p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && p.is_dir() => {}
                    Err(e) => return Err(io(&p, e)),
                }
                std::os::unix::fs::chown(&p, Some(*uid), Some(*gid)).map_err(|e| io(&p, e))?;
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode))
                    .map_err(|e| io(&p, e))?;
            }
            Action::Write {
                mode,
                uid,
                gid,
                contents,
                ..
            } => {
                let dir = p.parent().expect("absolute path has a parent");
                let tmp = dir.join(format!(
                    ".{}.drover-tmp",
                    p.file_name().expect("file name").to_string_lossy()
                ));
                let mut f = std::fs::File::create(&tmp).map_err(|e| io(&tmp, e))?;
                f.write_all(contents).map_err(|e| io(&tmp, e))?;
                std::os::unix::fs::fchown(&f, Some(*uid), Some(*gid)).map_err(|e| io(&tmp, e))?;
                f.set_permissions(std::fs::Permissions::from_mode(*mode))
                    .map_err(|e| io(&tmp, e))?;
                f.sync_all().map_err(|e| io(&tmp, e))?;
                std::fs::rename(&tmp, &p).map_err(|e| io(&p, e))?;
                touched.push(dir.to_path_buf());
            }
            Action::Symlink { target, .. } => {
                let _ = std::fs::remove_file(&p);
                std::os::unix::fs::symlink(target, &p).map_err(|e| io(&p, e))?;
                touched.push(p.parent().expect("parent").to_path_buf());
            }
        }
    }
    touched.sort();
    touched.dedup();
    for d in touched {
        std::fs::File::open(&d)
            .and_then(|f| f.sync_all())
            .map_err(|e| io(&d, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_sections() {
        let u = "[Unit]\nWantedBy=nope\n[Install]\nWantedBy=multi-user.target graphical.target\nRequiredBy=boot-complete.target\n";
        assert_eq!(
            install_links(u),
            vec![
                ("multi-user.target".to_string(), "wants"),
                ("graphical.target".to_string(), "wants"),
                ("boot-complete.target".to_string(), "requires")
            ]
        );
    }
}
