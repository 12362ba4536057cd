//! A TUF channel's metadata as the agent reads it: `tough`'s parsers of
//! the four roles (with the public keys in them), the signature check a
//! root makes of itself and of the other roles (against a real root of a
//! test channel, `data/tuf-root.json`, so signed seeds reach the key
//! lookup and the signature itself), and ours on top: the release custom
//! metadata ([`drover_core::channel::ReleaseInfo`]) and the releases made
//! of a targets role ([`drover_update_agent::tuf::releases_of`]).
#![no_main]

use std::sync::OnceLock;

use drover_update_agent::tuf::{releases_of, ARCH};
use libfuzzer_sys::fuzz_target;
use tough::schema::{Root, Signed, Snapshot, Targets, Timestamp};

fn trusted() -> &'static Signed<Root> {
    static ROOT: OnceLock<Signed<Root>> = OnceLock::new();
    ROOT.get_or_init(|| {
        serde_json::from_slice(include_bytes!("data/tuf-root.json")).expect("the test root parses")
    })
}

fuzz_target!(|data: &[u8]| {
    let trusted = &trusted().signed;
    if let Ok(root) = serde_json::from_slice::<Signed<Root>>(data) {
        // A new root is checked against itself and against the old one.
        let _ = root.signed.verify_role(&root);
        let _ = trusted.verify_role(&root);
        for key in root.signed.keys.values() {
            let _ = key.key_id();
        }
    }
    if let Ok(t) = serde_json::from_slice::<Signed<Timestamp>>(data) {
        let _ = trusted.verify_role(&t);
    }
    if let Ok(s) = serde_json::from_slice::<Signed<Snapshot>>(data) {
        let _ = trusted.verify_role(&s);
    }
    if let Ok(t) = serde_json::from_slice::<Signed<Targets>>(data) {
        let _ = trusted.verify_role(&t);
        // As a node of the test channel sees them, and as a node of the
        // channel and OS the first release names (so the acceptance path
        // is reached, not only "wrong software").
        let mut names = vec![("stable".to_string(), "drover".to_string())];
        if let Some(info) = t
            .signed
            .targets
            .values()
            .find_map(|x| x.custom.get(drover_core::channel::TUF_CUSTOM_KEY))
        {
            let field = |k: &str| info.get(k).and_then(|v| v.as_str()).unwrap_or("").to_string();
            names.push((field("channel"), field("os")));
        }
        for (channel, os) in names {
            let (releases, foreign) = releases_of(&t.signed, &channel, &os);
            // Every release taken names files under the channel's targets
            // directory, by their digest, with the sizes the metadata signs.
            let dir = drover_core::channel::tuf_targets_dir(&channel);
            for r in &releases {
                assert!(r.payload.starts_with(&dir), "{}", r.payload);
                assert!(r.payload.contains(&r.sha256), "{}", r.payload);
                assert!(r.manifest.starts_with(&dir), "{}", r.manifest);
                assert_eq!(r.sha256.len(), 64);
            }
            assert!(releases.windows(2).all(|w| {
                drover_core::channel::compare_versions(&w[0].version, &w[1].version)
                    != std::cmp::Ordering::Greater
            }));
            let _ = (foreign, ARCH);
        }
    }
});
