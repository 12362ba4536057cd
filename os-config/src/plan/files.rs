//! The config's files, owners and groups resolved against its users and
//! the image's accounts.

use std::collections::BTreeMap;

use super::{Action, Ctx, Out, UNRESOLVED};
use crate::types::Owner;
use crate::Error;

/// Writes for `files`.
pub(super) fn files(
    cx: &Ctx<'_>,
    user_ids: &BTreeMap<String, (u32, u32)>,
    out: &mut Out<'_>,
) -> Result<(), Error> {
    let Ctx {
        settings,
        root,
        acc,
    } = cx;
    let bad = |key: String, reason: String| cx.bad(key, reason);
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
        out.parents(f.path.as_str());
        out.push(Action::Write {
            path: f.path.to_string(),
            mode: f.mode.bits(),
            uid,
            gid,
            size: f.contents.len(),
            contents: f.contents.clone(),
            why: key,
        });
    }

    Ok(())
}
