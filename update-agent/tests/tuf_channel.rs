//! The channel as a TUF repository: `drover channel init` and `drover
//! publish --tuf-keys` write it (the image builder's code, called as a
//! library), `droverctl update --tuf-root` follows it over nginx and from
//! a directory; key rotations; and the attacks of the TUF specification,
//! each refused with the active slot byte-identical and the inactive one
//! unbootable.

use std::path::{Path, PathBuf};
use std::process::Command;

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

    /// A channel with 1.0.0 published, and 1.1.0 (not yet published).
    fn with_releases() -> (Chan, PathBuf, PathBuf) {
        let c = Chan::new();
        let v1 = c.fx.payload("v1.img", "1.0.0", 1, 4, &c.fx.key);
        let v2 = c.fx.payload("v2.img", "1.1.0", 1, 5, &c.fx.key);
        c.publish(&v1, |_| {});
        (c, v1, v2)
    }

    /// `drover channel rotate-key ROLE` with the channel's key directory.
    fn rotate(&self, role: Role, retire: Option<&str>) -> tuf::Rotated {
        tuf::rotate_key(
            &self.repo,
            "stable",
            &self.keys,
            role,
            retire,
            Expiries::default(),
        )
        .unwrap()
    }

    /// Deletes the key file whose TUF key id is `id` (a lost key).
    fn lose_key(&self, id: &str) {
        for e in std::fs::read_dir(&self.keys).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "pem")
                && tuf_key_id_of(&drover_core::keys::SigningKey::load(&p).unwrap()) == id
            {
                std::fs::remove_file(p).unwrap();
            }
        }
    }

    /// `drover publish --tuf-keys` of `payload` to channel `name`.
    fn publish_to(&self, payload: &Path, name: &str) {
        self.publish(payload, |a| a.channel = name.into());
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
    let (c, v1, v2) = Chan::with_releases();
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
    let (c, v1, v2) = Chan::with_releases();
    // The targets key is replaced (leaked, or routine).
    let r = c.rotate(Role::Targets, None);
    assert_eq!(r.root_version, 2);
    // One of the three root keys is lost; 2 of 3 sign a root without it.
    let show = tuf::show(&c.repo, "stable").unwrap();
    let lost = show.roles["root"].keys[2].clone();
    c.lose_key(&lost);
    let r = c.rotate(Role::Root, Some(&lost[..12]));
    assert_eq!(r.root_version, 3);
    // And the timestamp key too.
    c.rotate(Role::Timestamp, None);
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
    assert!(
        std::fs::read_dir(&one).unwrap().count() == 1,
        "a failed rotation leaves no key behind"
    );
}

/// Copies a directory tree (hard links are not kept: the copy is the
/// attacker's).
fn copy_tree(from: &Path, to: &Path) {
    let st = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(st.success());
}

/// What `tests/data/tuf-attacks/FOLDER/case.json` says of an attack.
#[derive(serde::Deserialize)]
struct Case {
    attack: String,
    #[serde(default)]
    publish: serde_json::Map<String, serde_json::Value>,
    agent: String,
    #[serde(rename = "python-tuf")]
    python_tuf: String,
    download: Vec<String>,
}

/// Every fixture of `tests/data/tuf-attacks/` (see its README): generated
/// on a channel that the node and python-tuf checked once, then refused
/// by both, USR-A byte-identical and USR-B unbootable.
#[test]
fn every_tuf_attack_is_refused_and_loses_nothing() {
    let python = python_tuf();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tuf-attacks");
    let mut folders: Vec<PathBuf> = std::fs::read_dir(&fixtures)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("case.json").is_file())
        .collect();
    folders.sort();
    assert!(folders.len() >= 9, "{folders:?}");
    for folder in folders {
        let case: Case =
            serde_json::from_slice(&std::fs::read(folder.join("case.json")).unwrap()).unwrap();
        let name = case.attack.as_str();
        let c = Chan::new();
        copy_tree(&c.metadata(), &c.fx.p("metadata-at-init"));
        let v1 = c.fx.payload("v1.img", "1.0.0", 1, 4, &c.fx.key);
        let v2 = c.fx.payload("v2.img", "1.1.0", 1, 5, &c.fx.key);
        c.publish(&v1, |_| {});
        let disk = c.fx.disk(&v1);
        let state = c.fx.p("state");
        {
            let web = Nginx::serve(&c.repo, None);
            let (ok, out) = c.update(&disk, &web.url(), &state);
            assert!(ok && out.contains("up-to-date"), "{name}: priming: {out}");
            let r = python_client(&python, &c, &web.url(), &[]);
            assert_eq!(r["ok"], true, "{name}: python-tuf priming: {r}");
        }
        c.publish(&v2, |a| {
            for (k, v) in &case.publish {
                match k.as_str() {
                    "no-blocks" => a.no_blocks = v.as_bool().unwrap(),
                    "timestamp-expires-hours" => {
                        a.timestamp_expires_hours = v.as_u64().unwrap() as u32
                    }
                    other => panic!("{name}: case.json: unknown publish option {other}"),
                }
            }
        });
        // Another 1.1.0 of the same size, signed by the image key.
        let other = c.fx.p("other.img");
        drover_test_support::fake_fs(&other, 5 << 20, drover_test_support::Fill::Random(77));
        drover_test_support::seal_release(
            &other,
            drover_test_support::release_input("1.1.0", 1, vec![7; 32]),
            &[&c.fx.key],
        )
        .unwrap();
        let work = c.fx.p("work");
        std::fs::create_dir_all(&work).unwrap();
        let o = Command::new("sh")
            .arg(folder.join("generate.sh"))
            .env("REPO", &c.repo)
            .env("KEYS", &c.keys)
            .env("OTHER", &other)
            .env("INIT_METADATA", c.fx.p("metadata-at-init"))
            .env("WORK", &work)
            .env("PYTHON", &python)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{name}: generate.sh: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let serve = if work.join("mirror").is_dir() {
            work.join("mirror")
        } else {
            c.repo.clone()
        };
        let a_before = slot_bytes(&disk, SlotId::A);
        let web = Nginx::serve(&serve, None);
        let (ok, out) = c.update(&disk, &web.url(), &state);
        assert!(!ok, "{name}: accepted:\n{out}");
        assert!(
            out.contains(&case.agent),
            "{name}: wanted '{}' in:\n{out}",
            case.agent
        );
        assert_untouched(name, &disk, &a_before);
        // The second opinion, from its own trusted state.
        let download: Vec<&str> = case.download.iter().map(String::as_str).collect();
        let r = python_client(&python, &c, &web.url(), &download);
        assert_eq!(r["ok"], false, "{name}: python-tuf accepted it: {r}");
        let err = r["error"].as_str().unwrap_or_default();
        assert!(
            err.starts_with(&case.python_tuf),
            "{name}: python-tuf refused it with '{err}', not {}",
            case.python_tuf
        );
    }
}

/// python-tuf (the TUF reference implementation, from PyPI) and
/// `cryptography` (for the fixtures' forged roots) in a virtual environment
/// made once per target directory.
fn python_tuf() -> PathBuf {
    drover_test_support::python_venv(
        Path::new(env!("CARGO_TARGET_TMPDIR")),
        &["tuf==6.0.0", "cryptography==44.0.2"],
    )
}

/// Runs python-tuf's `ngclient` (tests/data/python_tuf_client.py) against
/// the channel at `url`, from the image's root and the client state in
/// the channel's `py/` directory, downloading `targets`; its JSON verdict.
fn python_client(python: &Path, c: &Chan, url: &str, targets: &[&str]) -> serde_json::Value {
    let o = Command::new(python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/python_tuf_client.py"
        ))
        .arg(&c.root)
        .arg(format!("{url}/tuf/stable/metadata/"))
        .arg(format!("{url}/tuf/stable/targets/"))
        .arg(c.fx.p("py"))
        .args(targets)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!(
            "python-tuf printed no verdict ({e}):\n{text}\n{}",
            String::from_utf8_lossy(&o.stderr)
        )
    })
}

/// The second opinion on what drover publishes: python-tuf refreshes a
/// channel that went through key rotations (targets key, a lost root key
/// replaced, 2 of 3) from root version 1 and downloads every file of the
/// newest release, each as `drover publish` wrote it.
#[test]
fn python_tuf_follows_what_drover_publishes() {
    let python = python_tuf();
    let (c, _v1, v2) = Chan::with_releases();
    c.rotate(Role::Targets, None);
    let lost = tuf::show(&c.repo, "stable").unwrap().roles["root"].keys[1].clone();
    c.lose_key(&lost);
    c.rotate(Role::Root, Some(&lost[..8]));
    c.publish(&v2, |_| {});
    let web = Nginx::serve(&c.repo, None);
    let names = [
        "releases/1.1.0/usr.img",
        "releases/1.1.0/usr.blocks",
        "releases/1.1.0/usr.blocks.idx",
        "releases/1.1.0/manifest.json",
    ];
    let r = python_client(&python, &c, &web.url(), &names);
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["root"], 3, "{r}");
    for n in names {
        let file = c.repo.join(n);
        use sha2::Digest as _;
        let sha = hex::encode(sha2::Sha256::digest(std::fs::read(&file).unwrap()));
        assert_eq!(r["targets"][n]["downloaded"], sha.as_str(), "{n}: {r}");
    }
    let info = &r["targets"]["releases/1.1.0/usr.img"]["custom"]["drover"];
    assert_eq!(info["version"], "1.1.0", "{r}");
    assert_eq!(info["os"], "drover", "{r}");
    assert_eq!(info["block-index"], "releases/1.1.0/usr.blocks.idx", "{r}");
}

/// The forged roots above are refused for their signatures, not for how
/// they were made: the same forgery with a threshold of root keys (2 of
/// 3) is accepted, and so is what it lists.
#[test]
fn a_root_signed_by_a_threshold_of_keys_is_accepted() {
    let (c, v1, v2) = Chan::with_releases();
    c.publish(&v2, |_| {});
    let o = Command::new(python_tuf())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/tuf-attacks/forge_root.py"
        ))
        .arg("--keep-targets")
        .arg(c.metadata().join("1.root.json"))
        .arg(c.keys.join("root-1.pem"))
        .arg(c.keys.join("root-3.pem"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::write(c.metadata().join("2.root.json"), o.stdout).unwrap();
    let disk = c.fx.disk(&v1);
    let state = c.fx.p("state");
    let (ok, out) = c.update(&disk, c.repo.to_str().unwrap(), &state);
    assert!(ok, "{out}");
    let stored: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state.join("tuf/stable/root.json")).unwrap())
            .unwrap();
    assert_eq!(stored["signed"]["version"], 2);
}

/// Fast-forward: a leaked timestamp key signs a timestamp far ahead; the
/// node takes it (it is validly signed) and then refuses the real, lower
/// one — until the channel rotates the timestamp key, which makes the
/// node forget the timestamp and snapshot it had (the specification's
/// step 5.3.11) and follow the channel again.
#[test]
fn a_fast_forward_attack_is_undone_by_rotating_the_timestamp_key() {
    let (c, v1, v2) = Chan::with_releases();
    // The attacker's mirror: the channel as it is, with the timestamp
    // re-signed many versions ahead by the leaked key.
    let mirror = c.fx.p("mirror");
    copy_tree(&c.repo, &mirror);
    for _ in 0..20 {
        tuf::refresh(&mirror, "stable", &c.keys, false, Expiries::default()).unwrap();
    }
    let disk = c.fx.disk(&v1);
    let state = c.fx.p("state");
    let (ok, out) = c.update(&disk, mirror.to_str().unwrap(), &state);
    assert!(ok && out.contains("up-to-date"), "{out}");

    // The real channel publishes 1.1.0: refused as a rollback.
    c.publish(&v2, |_| {});
    let a_before = slot_bytes(&disk, SlotId::A);
    let (ok, out) = c.update(&disk, c.repo.to_str().unwrap(), &state);
    assert!(!ok, "{out}");
    assert!(
        out.contains(
            "Found version 3 of timestamp metadata when we had previously fetched version 22"
        ),
        "{out}"
    );
    assert_untouched("fast-forward", &disk, &a_before);

    // Recovery: the timestamp key is rotated.
    c.rotate(Role::Timestamp, None);
    let (ok, out) = c.update(&disk, c.repo.to_str().unwrap(), &state);
    assert!(ok, "{out}");
    assert_eq!(bits(&disk, SlotId::B), (2, 1, false));
}

/// Wrong software: releases for another architecture, OS or channel,
/// validly signed, are passed over with the reason; a payload whose
/// metadata claims this OS but whose signed manifest is another's is
/// refused when applied.
/// A node whose clock once ran ahead (an RTC that came up in 2099 before
/// NTP set it right) is not locked out of updates until then: the agent
/// keeps the roles TUF says a client keeps, not tough's "latest known
/// time" (which an earlier agent stored; it is dropped).
#[test]
fn a_clock_that_once_ran_ahead_does_not_lock_the_node_out() {
    let (c, v1, v2) = Chan::with_releases();
    c.publish(&v2, |_| {});
    let disk = c.fx.disk(&v1);
    let state = c.fx.p("state");
    let store = state.join("tuf/stable");
    std::fs::create_dir_all(&store).unwrap();
    std::fs::write(
        store.join("latest_known_time.json"),
        "\"2099-01-01T00:00:00Z\"",
    )
    .unwrap();
    let (ok, out) = c.update(&disk, c.repo.to_str().unwrap(), &state);
    assert!(ok, "{out}");
    assert_eq!(bits(&disk, SlotId::B), (2, 1, false));
    assert!(!store.join("latest_known_time.json").exists());
    assert!(store.join("timestamp.json").is_file());
}

#[test]
fn a_withdrawn_release_is_not_installed_and_a_newer_one_is() {
    let (c, v1, v2) = Chan::with_releases();
    c.publish(&v2, |_| {});
    let disk = c.fx.disk(&v1);
    let a_before = slot_bytes(&disk, SlotId::A);

    // An unknown version: a clear error, nothing signed.
    let before = std::fs::read(c.metadata().join("timestamp.json")).unwrap();
    let withdraw =
        |v: &str| tuf::withdraw(&c.repo, "stable", &c.keys, &[v.into()], Expiries::default());
    let e = withdraw("9.9.9").unwrap_err();
    assert!(format!("{e:#}").contains("no release 9.9.9"), "{e:#}");
    assert_eq!(
        std::fs::read(c.metadata().join("timestamp.json")).unwrap(),
        before
    );

    let w = withdraw("1.1.0").unwrap();
    // The payload, its manifest, frames and block index.
    assert_eq!(w.targets.len(), 4, "{:?}", w.targets);
    assert!(w.targets.iter().all(|t| t.starts_with("releases/1.1.0/")));
    let shown = tuf::show(&c.repo, "stable").unwrap();
    let versions: Vec<&str> = shown
        .releases
        .iter()
        .map(|r| r.info.version.as_str())
        .collect();
    assert_eq!(versions, ["1.0.0"]);

    // A node on 1.0.0 does not install it.
    let (ok, out) = c.update(&disk, c.repo.to_str().unwrap(), &c.fx.p("state"));
    assert!(ok, "{out}");
    assert!(out.contains("up-to-date"), "{out}");
    assert_untouched("withdrawn", &disk, &a_before);

    // python-tuf agrees: the target is gone from what the channel signs.
    let python = python_tuf();
    let web = Nginx::serve(&c.repo, None);
    let report = python_client(&python, &c, &web.url(), &["releases/1.1.0/usr.img"]);
    assert_eq!(report["ok"], false, "{report}");
    assert_eq!(
        report["error"], "LookupError: no target releases/1.1.0/usr.img",
        "{report}"
    );

    // A newer release moves the fleet on.
    let v3 = c.fx.payload("v3.img", "1.2.0", 1, 6, &c.fx.key);
    c.publish(&v3, |_| {});
    let (ok, out) = c.update(&disk, c.repo.to_str().unwrap(), &c.fx.p("state"));
    assert!(ok, "{out}");
    let payload = std::fs::read(&v3).unwrap();
    assert_eq!(&slot_bytes(&disk, SlotId::B)[..payload.len()], &payload[..]);
    assert_eq!(bits(&disk, SlotId::B), (2, 1, false));
}

#[test]
fn wrong_software_is_passed_over_or_refused() {
    let (c, v1, v2) = Chan::with_releases();
    c.publish(&v2, |a| a.arch = "riscv64".into());
    let disk = c.fx.disk(&v1);
    let state = c.fx.p("state");
    let (ok, out) = c.update(&disk, c.repo.to_str().unwrap(), &state);
    assert!(ok, "{out}");
    assert!(out.contains("up-to-date"), "{out}");
    assert!(
        out.contains(&format!(
            "wrong software: for architecture 'riscv64', this node is '{}'",
            std::env::consts::ARCH
        )),
        "{out}"
    );
    assert_eq!(bits(&disk, SlotId::B).0, 0);

    // Another channel's metadata (same keys) served as this channel's.
    let beta = c.fx.p("beta-repo");
    tuf::init(&beta, "beta", &c.keys, 3, 2, Expiries::default()).unwrap();
    let b = Chan {
        fx: Fx::new(),
        repo: beta.clone(),
        keys: c.keys.clone(),
        root: c.root.clone(),
    };
    std::fs::copy(c.fx.p("release.pem"), b.fx.p("release.pem")).unwrap();
    let v3 = c.fx.payload("v3.img", "1.2.0", 1, 5, &c.fx.key);
    b.publish_to(&v3, "beta");
    let mirror = c.fx.p("mirror");
    std::fs::create_dir_all(mirror.join("tuf")).unwrap();
    copy_tree(&beta.join("tuf/beta"), &mirror.join("tuf/stable"));
    let disk = c.fx.disk(&v1);
    let (ok, out) = c.update(&disk, mirror.to_str().unwrap(), &c.fx.p("state-2"));
    assert!(ok, "{out}");
    assert!(
        out.contains("wrong software: published to channel 'beta', not 'stable'"),
        "{out}"
    );
    assert_eq!(bits(&disk, SlotId::B).0, 0);

    // A payload of another OS: passed over as such when its metadata says
    // so (drover publish takes the OS from the signed manifest) ...
    let foreign = c.fx.p("foreign.img");
    drover_test_support::fake_fs(&foreign, 5 << 20, drover_test_support::Fill::Random(5));
    let mut input = drover_test_support::release_input("1.3.0", 1, vec![7; 32]);
    input.os.name = "otheros".into();
    drover_test_support::seal_release(&foreign, input, &[&c.fx.key]).unwrap();
    c.publish(&foreign, |_| {});
    let disk = c.fx.disk(&v1);
    let (ok, out) = c.update(&disk, c.repo.to_str().unwrap(), &c.fx.p("state-3"));
    assert!(ok, "{out}");
    assert!(
        out.contains("wrong software: for OS 'otheros', this node runs 'drover'"),
        "{out}"
    );
    assert_eq!(bits(&disk, SlotId::B).0, 0);

    // ... and refused when applied when its metadata lies (signed by a
    // targets key that says "drover" of it).
    let rel = c.repo.join("releases/1.4.0");
    std::fs::create_dir_all(&rel).unwrap();
    std::fs::copy(&foreign, rel.join("usr.img")).unwrap();
    std::fs::write(rel.join("manifest.json"), b"{}").unwrap();
    let file = |n: &str| {
        let p = rel.join(n);
        let b = std::fs::read(&p).unwrap();
        use sha2::Digest as _;
        (
            p,
            b.len() as u64,
            <[u8; 32]>::from(sha2::Sha256::digest(&b)),
        )
    };
    let (payload, length, sha256) = file("usr.img");
    let (mfile, mlength, msha) = file("manifest.json");
    let f = std::fs::File::open(&foreign).unwrap();
    let size = f.metadata().unwrap().len();
    let v = drover_core::slot_image::open_verified(
        &f,
        size,
        &foreign,
        &drover_core::keys::TrustedKeys::new(vec![c.fx.key.public_key()]),
    )
    .unwrap();
    let info = drover_core::channel::ReleaseInfo {
        format: 1,
        channel: "stable".into(),
        os: "drover".into(),
        arch: std::env::consts::ARCH.into(),
        version: "1.4.0".into(),
        security_version: 1,
        root_hash: hex::encode(v.root_hash),
        rollout: drover_core::channel::Rollout {
            start: 0,
            hours: 0,
            canary: None,
        },
        manifest: "releases/1.4.0/manifest.json".into(),
        blocks: None,
        block_index: None,
    };
    tuf::add_targets(
        &c.repo,
        "stable",
        &c.keys,
        &[
            tuf::NewTarget {
                name: "releases/1.4.0/usr.img".into(),
                file: payload,
                length,
                sha256,
                custom: [("drover".to_string(), serde_json::to_value(&info).unwrap())]
                    .into_iter()
                    .collect(),
            },
            tuf::NewTarget {
                name: "releases/1.4.0/manifest.json".into(),
                file: mfile,
                length: mlength,
                sha256: msha,
                custom: Default::default(),
            },
        ],
        Expiries::default(),
    )
    .unwrap();
    let disk = c.fx.disk(&v1);
    let a_before = slot_bytes(&disk, SlotId::A);
    let (ok, out) = c.update(&disk, c.repo.to_str().unwrap(), &c.fx.p("state-4"));
    assert!(!ok, "{out}");
    assert!(
        out.contains("1.3.0 is for OS 'otheros', this node runs 'drover'"),
        "{out}"
    );
    assert_untouched("foreign OS", &disk, &a_before);
}

/// A root version 2 that never ends (a link to /dev/zero on a USB stick)
/// is read no further than the bound: the walk of the root chain stops at
/// it as at a missing file (the specification's step 5.3.3, as tough has
/// it), and the node goes on with the root it trusts.
#[test]
fn an_endless_root_from_a_directory_is_cut_off() {
    let (c, v1, v2) = Chan::with_releases();
    c.publish(&v2, |_| {});
    std::os::unix::fs::symlink("/dev/zero", c.metadata().join("2.root.json")).unwrap();
    let disk = c.fx.disk(&v1);
    let (ok, out) = c.update(&disk, c.repo.to_str().unwrap(), &c.fx.p("state"));
    assert!(ok, "{out}");
    let stored: serde_json::Value =
        serde_json::from_slice(&std::fs::read(c.fx.p("state/tuf/stable/root.json")).unwrap())
            .unwrap();
    assert_eq!(stored["signed"]["version"], 1);
}

fn tuf_key_id_of(k: &drover_core::keys::SigningKey) -> String {
    let public = hex::encode(k.public_key().as_bytes());
    let canonical =
        format!(r#"{{"keytype":"ed25519","keyval":{{"public":"{public}"}},"scheme":"ed25519"}}"#);
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(canonical.as_bytes()))
}

/// Migration: a node whose image has no TUF root takes its last update
/// from the format-1 channel file that `drover publish` still writes; the
/// release it boots carries the root (here: `--tuf-root`, as the image's
/// `/usr/lib/drover/tuf/stable.root.json`), and from then on it follows
/// the TUF repository alone.
#[test]
fn a_node_moves_from_the_format_1_channel_to_tuf() {
    let c = Chan::new();
    let v1 = c.fx.payload("v1.img", "1.0.0", 1, 4, &c.fx.key);
    let v2 = c.fx.payload("v2.img", "1.1.0", 1, 5, &c.fx.key);
    let v3 = c.fx.payload("v3.img", "1.2.0", 1, 5, &c.fx.key);
    c.publish(&v1, |_| {});
    c.publish(&v2, |_| {});

    // The old node: no root, the format-1 file.
    let web = Nginx::serve(&c.repo, None);
    let disk = c.fx.disk(&v1);
    let (ok, out) = run(droverctl(&c.fx, &disk, &web.url(), &c.fx.p("state-old")));
    assert!(ok, "{out}");
    assert_eq!(bits(&disk, SlotId::B), (2, 1, false));
    let log = web.access_log();
    assert!(
        log.contains("GET /channels/stable.json HTTP/1.1 200"),
        "{log}"
    );
    assert!(!log.contains("/tuf/"), "{log}");

    // On 1.1.0, whose image carries the root: TUF only.
    c.publish(&v3, |_| {});
    std::fs::remove_dir_all(c.repo.join("channels")).unwrap();
    let web = Nginx::serve(&c.repo, None);
    let disk = c.fx.disk(&v2);
    let (ok, out) = c.update(&disk, &web.url(), &c.fx.p("state-new"));
    assert!(ok, "{out}");
    assert!(out.contains("\"version\":\"1.2.0\""), "{out}");
    let log = web.access_log();
    assert!(!log.contains("/channels/"), "{log}");
}

/// The publisher signs only on top of metadata its keys signed: a
/// repository whose targets were edited on disk (a target added by hand)
/// is refused, and nothing is written.
#[test]
fn publishing_refuses_to_sign_on_top_of_edited_metadata() {
    let (c, _v1, v2) = Chan::with_releases();
    let p = c.metadata().join("2.targets.json");
    let mut t: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    t["signed"]["targets"]["evil"] = serde_json::json!({
        "length": 1, "hashes": {"sha256": "00".repeat(32)}
    });
    std::fs::write(&p, serde_json::to_vec_pretty(&t).unwrap()).unwrap();
    let before: Vec<_> = std::fs::read_dir(c.metadata()).unwrap().collect();
    let format_1 = std::fs::read(c.repo.join("channels/stable.json")).unwrap();
    let build = c.fx.p("build-edited");
    std::fs::create_dir_all(&build).unwrap();
    std::fs::copy(&v2, build.join("usr.img")).unwrap();
    let e = drover_image_builder::commands::publish::Args {
        repo: c.repo.clone(),
        channel: "stable".into(),
        image: build,
        key: c.fx.p("release.pem"),
        image_keys: vec![],
        rollout_hours: 0,
        canary_percent: None,
        canary_hours: None,
        expires_days: 30,
        zstd_level: 3,
        no_blocks: true,
        tuf_keys: Some(c.keys.clone()),
        arch: std::env::consts::ARCH.into(),
        timestamp_expires_hours: 24,
        json: true,
    }
    .run()
    .unwrap_err();
    assert!(
        format!("{e:#}").contains("does not verify with root version 1"),
        "{e:#}"
    );
    assert_eq!(
        std::fs::read_dir(c.metadata()).unwrap().count(),
        before.len()
    );
    // Checked before anything was written: not in the format-1 file
    // either, and no release directory.
    assert_eq!(
        std::fs::read(c.repo.join("channels/stable.json")).unwrap(),
        format_1
    );
    assert!(!c.repo.join("releases/1.1.0").exists());
}
