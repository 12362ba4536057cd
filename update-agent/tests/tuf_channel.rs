//! The channel as a TUF repository: `drover channel init` and `drover
//! publish --tuf-keys` write it (the image builder's code, called as a
//! library), `droverctl update --tuf-root` follows it over nginx and from
//! a directory; key rotations; and the attacks of the TUF specification,
//! each refused with the active slot byte-identical and the inactive one
//! unbootable.

use std::path::{Path, PathBuf};

use drover_core::SlotId;
use drover_image_builder::tuf::{self, Expiries, Role};

mod common;
use common::*;

/// A published TUF channel `stable` and the root a node's image carries.
struct Chan {
    fx: Fx,
    repo: PathBuf,
    keys: PathBuf,
    /// The root a node starts from (version 1, copied out as an image
    /// would carry it).
    root: PathBuf,
}

impl Chan {
    fn new() -> Self {
        let fx = Fx::new();
        let repo = fx.p("repo");
        let keys = fx.p("keys");
        tuf::init(&repo, "stable", &keys, 3, 2, Expiries::default()).unwrap();
        let root = fx.p("image-root.json");
        std::fs::copy(repo.join("tuf/stable/metadata/1.root.json"), &root).unwrap();
        Chan {
            fx,
            repo,
            keys,
            root,
        }
    }

    /// `drover publish --tuf-keys` of `payload`, with `edit` applied to the
    /// arguments.
    fn publish(
        &self,
        payload: &Path,
        edit: impl FnOnce(&mut drover_image_builder::commands::publish::Args),
    ) {
        let build = self.fx.p(&format!(
            "build-{}",
            payload.file_name().unwrap().to_string_lossy()
        ));
        std::fs::create_dir_all(&build).unwrap();
        std::fs::copy(payload, build.join("usr.img")).unwrap();
        let mut a = drover_image_builder::commands::publish::Args {
            repo: self.repo.clone(),
            channel: "stable".into(),
            image: build,
            key: self.fx.p("release.pem"),
            image_keys: vec![],
            rollout_hours: 0,
            canary_percent: None,
            canary_hours: None,
            expires_days: 30,
            zstd_level: 3,
            no_blocks: false,
            tuf_keys: Some(self.keys.clone()),
            arch: std::env::consts::ARCH.into(),
            timestamp_expires_hours: 24,
            json: true,
        };
        edit(&mut a);
        a.run().unwrap();
    }

    /// droverctl update from `from` (URL or directory) with the image's root.
    fn update(&self, disk: &Path, from: &str, state: &Path) -> (bool, String) {
        let mut c = droverctl(&self.fx, disk, from, state);
        c.arg("--tuf-root").arg(&self.root);
        run(c)
    }

    fn metadata(&self) -> PathBuf {
        self.repo.join("tuf/stable/metadata")
    }
}

fn assert_untouched(what: &str, disk: &Path, a_before: &[u8]) {
    assert_eq!(
        slot_bytes(disk, SlotId::A),
        a_before,
        "{what}: USR-A changed"
    );
    assert_eq!(bits(disk, SlotId::A), (1, 0, true), "{what}: USR-A bits");
    let (prio, tries, _) = bits(disk, SlotId::B);
    assert_eq!((prio, tries), (0, 0), "{what}: USR-B is bootable");
}

#[test]
fn a_node_follows_the_tuf_channel_over_http_and_from_a_directory() {
    let c = Chan::new();
    let v1 = c.fx.payload("v1.img", "1.0.0", 1, 4, &c.fx.key);
    let v2 = c.fx.payload("v2.img", "1.1.0", 1, 5, &c.fx.key);
    c.publish(&v1, |_| {});
    c.publish(&v2, |_| {});
    // Only the TUF repository is read: without the format-1 channel file
    // the update still happens.
    std::fs::remove_dir_all(c.repo.join("channels")).unwrap();

    let web = Nginx::serve(&c.repo, None);
    let disk = c.fx.disk(&v1);
    let state = c.fx.p("state");
    let (ok, out) = c.update(&disk, &web.url(), &state);
    assert!(ok, "{out}");
    let payload = std::fs::read(&v2).unwrap();
    assert_eq!(&slot_bytes(&disk, SlotId::B)[..payload.len()], &payload[..]);
    assert_eq!(bits(&disk, SlotId::B), (2, 1, false));
    let log = web.access_log();
    for want in [
        "GET /tuf/stable/metadata/2.root.json HTTP/1.1 404",
        "GET /tuf/stable/metadata/timestamp.json",
        "GET /tuf/stable/metadata/3.snapshot.json",
        "GET /tuf/stable/metadata/3.targets.json",
        // A delta: the signed block index and ranges of the frames, named
        // by their digests, and not the payload.
        ".usr.blocks.idx HTTP/1.1 200",
        ".usr.blocks HTTP/1.1 206",
    ] {
        assert!(log.contains(want), "no '{want}' in:\n{log}");
    }
    assert!(
        !log.lines()
            .any(|l| l.starts_with("GET") && l.contains(".usr.img HTTP/1.1 200")),
        "{log}"
    );
    // What the client must remember is kept in the state directory.
    for f in [
        "root.json",
        "timestamp.json",
        "snapshot.json",
        "targets.json",
    ] {
        assert!(state.join("tuf/stable").join(f).is_file(), "{f}");
    }

    // From a directory (a USB stick), the same.
    let disk = c.fx.disk(&v1);
    let (ok, out) = c.update(&disk, c.repo.to_str().unwrap(), &c.fx.p("state-dir"));
    assert!(ok, "{out}");
    assert_eq!(bits(&disk, SlotId::B), (2, 1, false));
}

#[test]
fn a_node_that_missed_every_rotation_still_updates() {
    let c = Chan::new();
    let v1 = c.fx.payload("v1.img", "1.0.0", 1, 4, &c.fx.key);
    let v2 = c.fx.payload("v2.img", "1.1.0", 1, 5, &c.fx.key);
    c.publish(&v1, |_| {});
    // The targets key is replaced (leaked, or routine).
    let r = tuf::rotate_key(
        &c.repo,
        "stable",
        &c.keys,
        Role::Targets,
        None,
        Expiries::default(),
    )
    .unwrap();
    assert_eq!(r.root_version, 2);
    // One of the three root keys is lost; 2 of 3 sign a root without it.
    let show = tuf::show(&c.repo, "stable").unwrap();
    let lost = show.roles["root"].keys[2].clone();
    let lost_file = std::fs::read_dir(&c.keys)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("root-")
                && tuf_key_id(p) == lost
        })
        .unwrap();
    std::fs::remove_file(&lost_file).unwrap();
    let r = tuf::rotate_key(
        &c.repo,
        "stable",
        &c.keys,
        Role::Root,
        Some(&lost[..12]),
        Expiries::default(),
    )
    .unwrap();
    assert_eq!(r.root_version, 3);
    // And the timestamp key too.
    tuf::rotate_key(
        &c.repo,
        "stable",
        &c.keys,
        Role::Timestamp,
        None,
        Expiries::default(),
    )
    .unwrap();
    c.publish(&v2, |_| {});
    let show = tuf::show(&c.repo, "stable").unwrap();
    assert_eq!(show.roles["root"].version, 4);
    assert!(!show.roles["root"].keys.contains(&lost));

    // A node that saw none of it, starting from root version 1.
    let web = Nginx::serve(&c.repo, None);
    let disk = c.fx.disk(&v1);
    let state = c.fx.p("state");
    let (ok, out) = c.update(&disk, &web.url(), &state);
    assert!(ok, "{out}");
    assert_eq!(bits(&disk, SlotId::B), (2, 1, false));
    let log = web.access_log();
    for n in 2..=4 {
        assert!(log.contains(&format!(
            "GET /tuf/stable/metadata/{n}.root.json HTTP/1.1 200"
        )));
    }
    let stored: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state.join("tuf/stable/root.json")).unwrap())
            .unwrap();
    assert_eq!(stored["signed"]["version"], 4);

    // Rotating needs a threshold of the root keys present: with one, no.
    let one = c.fx.p("one-key");
    std::fs::create_dir(&one).unwrap();
    let first = std::fs::read_dir(&c.keys)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("root-")
        })
        .unwrap();
    std::fs::copy(&first, one.join("root-1.pem")).unwrap();
    let e = tuf::rotate_key(
        &c.repo,
        "stable",
        &one,
        Role::Root,
        Some(&show.roles["root"].keys[0][..8]),
        Expiries::default(),
    )
    .unwrap_err();
    assert!(format!("{e:#}").contains("needs 2 signatures"), "{e:#}");
}

/// The TUF key id of a key file: SHA-256 of the canonical JSON of its
/// public key, as `drover channel show` lists it.
fn tuf_key_id(pem: &Path) -> String {
    let key = drover_core::keys::SigningKey::load(pem).unwrap();
    let public = hex::encode(key.public_key().as_bytes());
    let canonical =
        format!(r#"{{"keytype":"ed25519","keyval":{{"public":"{public}"}},"scheme":"ed25519"}}"#);
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(canonical.as_bytes()))
}
