//! Delta updates from a repository with block indexes (written by the
//! image builder's own code, as `drover publish` writes them), over nginx
//! on loopback and from a directory: only the frames of new blocks are
//! fetched; tampered frames are refused with USR-A byte-identical and USR-B
//! unbootable; an interrupted delta resumes; a missing index falls back to
//! the full payload.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use drover_core::keys::TrustedKeys;
use drover_core::SlotId;
use drover_test_support::{fake_fs, release_input, seal_release, Fill};

mod common;
use common::*;

/// A release of `mib` MiB whose file system is `base`'s with `changed`
/// blocks (of 4 KiB, spread evenly) rewritten: a security update.
fn derived(fx: &Fx, name: &str, version: &str, base_fs: &Path, changed: usize) -> PathBuf {
    let path = fx.p(name);
    let mut data = std::fs::read(base_fs).unwrap();
    let blocks = data.len() / 4096;
    for k in 0..changed {
        let b = 1 + k * (blocks - 2) / changed.max(1);
        data[b * 4096..b * 4096 + 64].fill(0xA5 ^ k as u8);
    }
    std::fs::write(&path, data).unwrap();
    seal_release(&path, release_input(version, 1, vec![9; 32]), &[&fx.key]).unwrap();
    path
}

/// v1 (8 MiB, random) and v2 (v1 with 12 blocks changed, another salt).
fn releases(fx: &Fx) -> (PathBuf, PathBuf) {
    let fs = fx.p("v1.fs");
    fake_fs(&fs, 8 << 20, Fill::Random(42));
    let v1 = fx.p("v1.img");
    std::fs::copy(&fs, &v1).unwrap();
    seal_release(&v1, release_input("1.0.0", 1, vec![7; 32]), &[&fx.key]).unwrap();
    let v2 = derived(fx, "v2.img", "1.1.0", &fs, 12);
    (v1, v2)
}

/// The channel with v1 and v2, each with frames and a signed block index
/// (v2's cut along what v1 lacks).
fn publish_with_blocks(fx: &Fx, repo: &Path, v1: &Path, v2: &Path) {
    publish(repo, "stable", &[v1, v2], &fx.key, |_| {});
    let trusted = TrustedKeys::new(vec![fx.key.public_key()]);
    for (v, prev) in [("1.0.0", None), ("1.1.0", Some("1.0.0"))] {
        let dir = repo.join("releases").join(v);
        let payload = dir.join("usr.img");
        let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
            std::fs::read(&payload).unwrap(),
        ));
        let prev = prev.map(|p| repo.join("releases").join(p).join("usr.img"));
        drover_image_builder::blocks::write(
            &payload,
            &sha,
            prev.as_deref(),
            &trusted,
            &fx.key,
            3,
            &dir,
        )
        .unwrap();
    }
}

fn report(out: &str) -> serde_json::Value {
    serde_json::from_str(out.lines().next().unwrap()).unwrap()
}

/// `GET … usr.blocks` requests in an nginx log: (range, bytes sent).
fn block_requests(log: &str) -> Vec<(String, u64)> {
    log.lines()
        .filter(|l| l.contains("/usr.blocks ") && l.starts_with("GET "))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[f.len() - 2].to_string(), f[f.len() - 1].parse().unwrap())
        })
        .collect()
}

#[test]
fn a_delta_fetches_only_the_new_blocks_over_http_and_from_a_directory() {
    let fx = Fx::new();
    let (v1, v2) = releases(&fx);
    let repo = fx.p("repo");
    publish_with_blocks(&fx, &repo, &v1, &v2);
    let payload = std::fs::read(&v2).unwrap();
    let full = std::fs::metadata(repo.join("releases/1.1.0/usr.blocks"))
        .unwrap()
        .len();

    // Over HTTP.
    let web = Nginx::serve(&repo, None);
    let disk = fx.disk(&v1);
    let a_before = slot_bytes(&disk, SlotId::A);
    let (ok, out) = run(droverctl(&fx, &disk, &web.url(), &fx.p("state")));
    assert!(ok, "{out}");
    let r = report(&out);
    assert_eq!(r["version"], "1.1.0");
    let d = &r["delta"];
    // The node runs the index's base: no tree fetched, it is computed.
    assert_eq!(d["base"], true, "{out}");
    assert!(d["computed-bytes"].as_u64().unwrap() > 0, "{out}");
    assert_eq!(&slot_bytes(&disk, SlotId::B)[..payload.len()], &payload[..]);
    assert_eq!(slot_bytes(&disk, SlotId::A), a_before);
    assert_eq!(bits(&disk, SlotId::B), (2, 1, false));
    let fetched = d["fetched-bytes"].as_u64().unwrap();
    let copied = d["copied-bytes"].as_u64().unwrap();
    // 12 changed blocks of 2,048 and the tree: a small share of the whole.
    assert!(
        fetched * 5 < full,
        "fetched {fetched} of a {full}-byte compressed payload: {out}"
    );
    assert!(copied >= (8 << 20) - 13 * 4096, "{out}");
    let log = web.access_log();
    let reqs = block_requests(&log);
    assert_eq!(
        reqs.iter().map(|(_, n)| n).sum::<u64>(),
        fetched,
        "nginx sent other bytes than the agent counted:\n{log}"
    );
    assert!(reqs.iter().all(|(range, _)| range.starts_with("bytes=")));
    assert!(
        !log.lines().any(|l| l.contains("/usr.img ")
            && l.contains("bytes=0-")
            && !l.contains("bytes=0-4095")),
        "the whole payload was streamed:\n{log}"
    );

    // From a directory, the same.
    let disk2 = fx.p("disk2.raw");
    drover_test_support::disk(&disk2, &drover_test_support::small_layout(16));
    drover_test_support::write_slot(&disk2, SlotId::A, &v1);
    let (ok, out) = run(droverctl(
        &fx,
        &disk2,
        repo.to_str().unwrap(),
        &fx.p("state2"),
    ));
    assert!(ok, "{out}");
    assert_eq!(
        report(&out)["delta"]["fetched-bytes"].as_u64(),
        Some(fetched)
    );
    assert_eq!(
        &slot_bytes(&disk2, SlotId::B)[..payload.len()],
        &payload[..]
    );
}

#[test]
fn tampered_frames_and_a_foreign_index_are_refused_and_lose_nothing() {
    let fx = Fx::new();
    let (v1, v2) = releases(&fx);
    type Spoil = fn(&Path, &Fx);
    let cases: [(&str, Spoil, &str); 3] = [
        (
            "a byte of a new frame flipped",
            |repo, _| {
                // The last frame (hash tree and manifest) is always fetched.
                let p = repo.join("releases/1.1.0/usr.blocks");
                let mut b = std::fs::read(&p).unwrap();
                let n = b.len();
                b[n - 40] ^= 0x01;
                std::fs::write(&p, b).unwrap();
            },
            "frame ",
        ),
        (
            "the index of another release",
            |repo, _| {
                std::fs::copy(
                    repo.join("releases/1.0.0/usr.blocks.idx"),
                    repo.join("releases/1.1.0/usr.blocks.idx"),
                )
                .unwrap();
                std::fs::copy(
                    repo.join("releases/1.0.0/usr.blocks"),
                    repo.join("releases/1.1.0/usr.blocks"),
                )
                .unwrap();
            },
            "block index is for",
        ),
        (
            "an index signed by another key",
            |repo, fx| {
                let p = repo.join("releases/1.1.0/usr.blocks.idx");
                let b = std::fs::read(&p).unwrap();
                let (ix, _) = drover_core::blocks::Index::parse_body(&b).unwrap();
                let stranger = drover_core::keys::SigningKey::generate().unwrap().0;
                let _ = fx;
                std::fs::write(&p, ix.sign(&[&stranger])).unwrap();
            },
            "not signed by a trusted key",
        ),
    ];
    for (name, spoil, want) in cases {
        let repo = fx.p(&format!("repo-{}", name.len()));
        publish_with_blocks(&fx, &repo, &v1, &v2);
        spoil(&repo, &fx);
        let web = Nginx::serve(&repo, None);
        let disk = fx.disk(&v1);
        let a_before = slot_bytes(&disk, SlotId::A);
        let (ok, out) = run(droverctl(&fx, &disk, &web.url(), &fx.p("state-x")));
        assert!(!ok, "{name}: accepted\n{out}");
        assert!(out.contains(want), "{name}: {out}");
        assert_eq!(slot_bytes(&disk, SlotId::A), a_before, "{name}");
        assert_eq!(
            bits(&disk, SlotId::B).0,
            0,
            "{name}: B must stay unbootable"
        );
        assert_eq!(bits(&disk, SlotId::A), (1, 0, true), "{name}");
        let _ = std::fs::remove_dir_all(fx.p("state-x"));
    }
}

#[test]
fn without_an_index_the_whole_payload_is_downloaded() {
    let fx = Fx::new();
    let (v1, v2) = releases(&fx);
    let repo = fx.p("repo");
    publish_with_blocks(&fx, &repo, &v1, &v2);
    std::fs::remove_file(repo.join("releases/1.1.0/usr.blocks.idx")).unwrap();
    let web = Nginx::serve(&repo, None);
    let disk = fx.disk(&v1);
    let (ok, out) = run(droverctl(&fx, &disk, &web.url(), &fx.p("state")));
    assert!(ok, "{out}");
    assert!(report(&out).get("delta").is_none(), "{out}");
    let payload = std::fs::read(&v2).unwrap();
    assert_eq!(&slot_bytes(&disk, SlotId::B)[..payload.len()], &payload[..]);
    let log = web.access_log();
    assert!(
        log.contains("/releases/1.1.0/usr.img HTTP/1.1 206 bytes=0- "),
        "{log}"
    );
    assert!(block_requests(&log).is_empty(), "{log}");
}

#[test]
fn an_interrupted_delta_resumes_and_keeps_what_was_durable() {
    let fx = Fx::new();
    // A full install through the frames: the node runs 0.9.0, not the
    // index's base (1.0.0), and nothing of 1.1.0 is on its disk; it matches
    // blocks by the new tree's leaves.
    let v0 = fx.payload("v0.img", "0.9.0", 1, 4, &fx.key);
    let v1 = fx.payload("v1.img", "1.0.0", 1, 6, &fx.key);
    let v2 = fx.payload("v2.img", "1.1.0", 1, 100, &fx.key);
    interrupted_and_resumed(&fx, &v0, &v1, &v2, false);
}

#[test]
fn an_interrupted_delta_from_the_base_release_resumes_too() {
    let fx = Fx::new();
    // 1.1.0 keeps 1.0.0's first 40 MiB and has 60 MiB of new data: the node
    // runs the index's base, copies by source and computes the tree, and
    // on the second attempt reads back and hashes what it keeps.
    let fs = fx.p("v1.fs");
    fake_fs(&fs, 100 << 20, Fill::Random(7));
    let v1 = fx.p("v1.img");
    std::fs::copy(&fs, &v1).unwrap();
    seal_release(&v1, release_input("1.0.0", 1, vec![7; 32]), &[&fx.key]).unwrap();
    let fresh = fx.p("fresh.fs");
    fake_fs(&fresh, 100 << 20, Fill::Random(8));
    let mut data = std::fs::read(&fs).unwrap();
    data[40 << 20..].copy_from_slice(&std::fs::read(&fresh).unwrap()[40 << 20..]);
    let v2 = fx.p("v2.img");
    std::fs::write(&v2, data).unwrap();
    seal_release(&v2, release_input("1.1.0", 1, vec![9; 32]), &[&fx.key]).unwrap();
    interrupted_and_resumed(&fx, &v1, &v1, &v2, true);
}

/// `running` on the node, `v1` then `v2` in the channel: an update to v2
/// killed once durable, then resumed.
fn interrupted_and_resumed(fx: &Fx, running: &Path, v1: &Path, v2: &Path, base: bool) {
    let repo = fx.p("repo");
    publish_with_blocks(fx, &repo, v1, v2);
    // 25 MiB/s: the 100 MiB payload takes four seconds.
    let web = Nginx::serve(&repo, Some("25m"));
    let disk = fx.disk_with(running, 128);
    let a_before = slot_bytes(&disk, SlotId::A);
    let state = fx.p("state");
    let mut child = droverctl(fx, &disk, &web.url(), &state)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let durable = kill_once_durable(&mut child, &state);
    assert_eq!(slot_bytes(&disk, SlotId::A), a_before);
    assert_eq!(
        bits(&disk, SlotId::B).0,
        0,
        "B must be unbootable mid-update"
    );
    let before = block_requests(&web.access_log()).len();

    let (ok, out) = run(droverctl(fx, &disk, &web.url(), &state));
    assert!(ok, "{out}");
    let d = &report(&out)["delta"];
    assert_eq!(d["base"], base, "{out}");
    let kept = d["kept-bytes"].as_u64().unwrap();
    assert!(kept >= durable, "kept {kept} of {durable} durable: {out}");
    // The second attempt's first data request starts past the durable frames.
    let ix = drover_core::blocks::Index::parse_body(
        &std::fs::read(repo.join("releases/1.1.0/usr.blocks.idx")).unwrap(),
    )
    .unwrap()
    .0;
    let first_needed = ix.frames[ix.frame_at(durable).unwrap()].stored_offset;
    let log = web.access_log();
    let after = &block_requests(&log)[before..];
    let starts: Vec<u64> = after
        .iter()
        .map(|(r, _)| {
            r["bytes=".len()..]
                .split('-')
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert!(
        !starts.is_empty() && starts.iter().all(|&s| s >= first_needed),
        "after the resume, frames below the durable point were fetched again: {starts:?} (they end at stored byte {first_needed})\n{log}"
    );
    let payload = std::fs::read(v2).unwrap();
    assert_eq!(&slot_bytes(&disk, SlotId::B)[..payload.len()], &payload[..]);
    assert_eq!(bits(&disk, SlotId::B), (2, 1, false));
}

#[test]
fn a_delta_bundle_updates_an_air_gapped_node_and_only_the_release_it_was_made_for() {
    let fx = Fx::new();
    let (v1, v2) = releases(&fx);
    for (dir, img) in [("old", &v1), ("new", &v2)] {
        std::fs::create_dir_all(fx.p(dir)).unwrap();
        std::fs::copy(img, fx.p(dir).join("usr.img")).unwrap();
    }
    let bundle = fx.p("1.1.0.delta");
    drover_image_builder::commands::delta::Args {
        from: fx.p("old"),
        to: fx.p("new"),
        key: fx.p("release.pem"),
        image_keys: Vec::new(),
        out: bundle.clone(),
        zstd_level: 3,
        json: false,
    }
    .run()
    .unwrap();
    let size = std::fs::metadata(&bundle).unwrap().len();
    let payload = std::fs::read(&v2).unwrap();
    assert!(
        size * 20 < payload.len() as u64,
        "a bundle of {size} bytes for 12 changed blocks"
    );

    // The node running 1.0.0.
    let disk = fx.disk(&v1);
    let a_before = slot_bytes(&disk, SlotId::A);
    let (ok, out) = fx.update(&disk, &bundle, &[]);
    assert!(ok, "{out}");
    assert_eq!(report(&out)["version"], "1.1.0");
    assert_eq!(&slot_bytes(&disk, SlotId::B)[..payload.len()], &payload[..]);
    assert_eq!(slot_bytes(&disk, SlotId::A), a_before);
    assert_eq!(bits(&disk, SlotId::B), (2, 1, false));

    // A node running another release lacks blocks the bundle does not hold.
    let other = fx.payload("v0.img", "0.9.0", 1, 8, &fx.key);
    let disk = fx.disk(&other);
    let a_before = slot_bytes(&disk, SlotId::A);
    let (ok, out) = fx.update(&disk, &bundle, &[]);
    assert!(
        !ok && out.contains("made for nodes running another release"),
        "{out}"
    );
    assert_eq!(slot_bytes(&disk, SlotId::A), a_before);
    assert_eq!(bits(&disk, SlotId::B).0, 0);

    // A flipped byte in the bundle's frames.
    let mut b = std::fs::read(&bundle).unwrap();
    let n = b.len();
    b[n - 100] ^= 0x04;
    std::fs::write(&bundle, b).unwrap();
    let disk = fx.disk(&v1);
    let (ok, out) = fx.update(&disk, &bundle, &[]);
    assert!(!ok && out.contains("frame"), "{out}");
    assert_eq!(slot_bytes(&disk, SlotId::A), a_before_of(&v1, &fx));
    assert_eq!(bits(&disk, SlotId::B).0, 0);
}

/// USR-A of a fresh disk running `img`.
fn a_before_of(img: &Path, fx: &Fx) -> Vec<u8> {
    let d = fx.p("fresh.raw");
    drover_test_support::disk(&d, &drover_test_support::small_layout(16));
    drover_test_support::write_slot(&d, SlotId::A, img);
    let _ = fx;
    slot_bytes(&d, SlotId::A)
}

#[test]
fn a_node_on_another_release_matches_its_blocks_by_the_new_tree() {
    let fx = Fx::new();
    let (v1, v2) = releases(&fx);
    // A hotfix build of 1.0.0 (three blocks differ): not the index's base.
    let hotfix = derived(&fx, "v1b.img", "1.0.0-1", &fx.p("v1.fs"), 3);
    let repo = fx.p("repo");
    publish_with_blocks(&fx, &repo, &v1, &v2);
    let full = std::fs::metadata(repo.join("releases/1.1.0/usr.blocks"))
        .unwrap()
        .len();
    let web = Nginx::serve(&repo, None);
    let disk = fx.disk(&hotfix);
    let (ok, out) = run(droverctl(&fx, &disk, &web.url(), &fx.p("state")));
    assert!(ok, "{out}");
    let d = &report(&out)["delta"];
    assert_eq!(d["base"], false, "{out}");
    let fetched = d["fetched-bytes"].as_u64().unwrap();
    assert!(fetched * 5 < full, "fetched {fetched} of {full}: {out}");
    let payload = std::fs::read(&v2).unwrap();
    assert_eq!(&slot_bytes(&disk, SlotId::B)[..payload.len()], &payload[..]);
}
