//! The image's account databases, and the config's users added to them
//! (passwd, group, shadow lines, homes, authorized keys).

use std::collections::BTreeMap;
use std::path::Path;

use super::{Action, Ctx, Out};
use crate::Error;

/// The passwd and group databases of the image, by name.
#[derive(Debug, Default)]
pub(super) struct Accounts {
    passwd: String,
    group: String,
    shadow: Option<String>,
    pub(super) users: BTreeMap<String, (u32, u32)>,
    pub(super) groups: BTreeMap<String, u32>,
}

impl Accounts {
    pub(super) fn read(root: &Path) -> Self {
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

/// The config's users: refused when they clash with the image's, else
/// written into the databases, with their homes and keys. Returns every
/// user's uid and primary gid by name (the config's and `root`).
pub(super) fn users(
    cx: &Ctx<'_>,
    out: &mut Out<'_>,
) -> Result<BTreeMap<String, (u32, u32)>, Error> {
    let Ctx {
        settings,
        root,
        acc,
    } = cx;
    let root = *root;
    let bad = |key: String, reason: String| cx.bad(key, reason);
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
            out.push(Action::Write {
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
            out.push(Action::Write {
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
            out.parents(&home);
            out.push(Action::Mkdir {
                path: home.clone(),
                mode: 0o700,
                uid,
                gid,
            });
        }
        if u.ssh_authorized_keys.is_empty() {
            continue;
        }
        out.push(Action::Mkdir {
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
        out.push(Action::Write {
            path: format!("{home}/.ssh/authorized_keys"),
            mode: 0o600,
            uid,
            gid,
            size: text.len(),
            contents: text.into_bytes(),
            why: format!("users.{}.ssh-authorized-keys", u.name),
        });
    }

    Ok(user_ids)
}
