//! The config's units: their files and drop-ins, and enabling them as
//! their `[Install]` section says.

use super::{Action, Ctx, Out};
use crate::Error;

/// Where the image and its packages keep units (read for `[Install]`).
const UNIT_DIRS: [&str; 3] = [
    "etc/systemd/system",
    "usr/lib/systemd/system",
    "lib/systemd/system",
];

/// Files, drop-ins and links for `units`.
pub(super) fn units(cx: &Ctx<'_>, out: &mut Out<'_>) -> Result<(), Error> {
    let Ctx { settings, root, .. } = cx;
    let root = *root;
    let bad = |key: String, reason: String| cx.bad(key, reason);
    for u in &settings.units {
        let key = format!("units[\"{}\"]", u.name);
        let unit_path = format!("/etc/systemd/system/{}", u.name);
        if let Some(c) = &u.contents {
            out.parents(&unit_path);
            out.push(Action::root_file(
                &unit_path,
                c.clone().into_bytes(),
                key.clone(),
            ));
        }
        for d in &u.drop_ins {
            let p = format!("/etc/systemd/system/{}.d/{}", u.name, d.name);
            out.parents(&p);
            out.push(Action::root_file(
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
                        out.push(Action::Symlink {
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
            out.parents(&p);
            out.push(Action::Symlink {
                path: p,
                target: target.clone(),
                why: format!("{key}.enabled"),
            });
        }
    }

    Ok(())
}

/// `WantedBy=`/`RequiredBy=` of a unit file's `[Install]` section, as
/// `(target, "wants" | "requires")`.
pub(super) fn install_links(unit: &str) -> Vec<(String, &'static str)> {
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
