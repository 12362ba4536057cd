//! `drover publish`: a signed channel in a static directory, a sequence
//! that goes up, and refusals that leave the channel as it was.

use std::path::{Path, PathBuf};
use std::process::Command;

use drover_core::channel::{self, SignedChannel};
use drover_core::keys::{SigningKey, TrustedKeys};
use drover_test_support::{fake_fs, release_input, seal_release, Fill};

fn drover(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_drover"))
        .args(args)
        .output()
        .unwrap();
    let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
    s.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), s)
}

/// A build output directory with a sealed 1 MiB slot image.
fn build_dir(root: &Path, name: &str, version: &str, fill: u8, key: &SigningKey) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("usr.img");
    fake_fs(&p, 1 << 20, Fill::Byte(fill));
    seal_release(&p, release_input(version, 1, vec![1; 32]), &[key]).unwrap();
    dir
}

fn read_channel(repo: &Path, key: &SigningKey) -> channel::Metadata {
    let b = std::fs::read(channel::channel_path(repo, "stable")).unwrap();
    SignedChannel::from_bytes(&b)
        .unwrap()
        .verify(&TrustedKeys::new(vec![key.public_key()]))
        .unwrap()
        .0
}

#[test]
fn publish_signs_a_channel_and_counts_up() {
    let dir = tempfile::tempdir().unwrap();
    let (key, pem) = SigningKey::generate().unwrap();
    let sec = dir.path().join("k.pem");
    std::fs::write(&sec, pem).unwrap();
    let repo = dir.path().join("repo");
    let b1 = build_dir(dir.path(), "b1", "1.0.0", 0xa1, &key);
    let b2 = build_dir(dir.path(), "b2", "1.1.0", 0xb2, &key);
    let publish_with = |b: &Path, key: &Path, extra: &[&str]| {
        let mut args = vec![
            "publish",
            "--repo",
            repo.to_str().unwrap(),
            "--channel",
            "stable",
            "--image",
            b.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        drover(&args)
    };
    let publish = |b: &Path, extra: &[&str]| publish_with(b, &sec, extra);
    let (ok, out) = publish(&b1, &["--rollout-hours", "6"]);
    assert!(ok, "{out}");
    let m = read_channel(&repo, &key);
    assert_eq!(m.sequence, 1);
    assert_eq!(m.releases.len(), 1);
    assert_eq!(m.releases[0].rollout.hours, 6);
    let r = &m.releases[0];
    assert_eq!(
        std::fs::read(repo.join(&r.payload)).unwrap(),
        std::fs::read(b1.join("usr.img")).unwrap()
    );
    assert!(m.expires_at >= channel::now() + 29 * 86_400);

    assert_eq!(m.releases[0].rollout.canary, None);

    let (ok, out) = publish(&b2, &["--canary-percent", "60", "--canary-hours", "2"]);
    assert!(
        !ok && out.contains("60"),
        "a canary is at most half the fleet: {out}"
    );
    let (ok, out) = publish(&b2, &["--canary-percent", "5"]);
    assert!(!ok && out.contains("--canary-hours"), "{out}");
    let (ok, out) = publish(
        &b2,
        &[
            "--json",
            "--expires-days",
            "2",
            "--rollout-hours",
            "24",
            "--canary-percent",
            "5",
            "--canary-hours",
            "6",
        ],
    );
    let canary = read_channel(&repo, &key).releases[1]
        .rollout
        .canary
        .unwrap();
    assert_eq!((canary.percent, canary.hours), (5, 6));
    assert!(ok, "{out}");
    let j: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(j["sequence"], 2);
    let m = read_channel(&repo, &key);
    assert_eq!(m.releases.len(), 2);
    assert!(m.expires_at <= channel::now() + 2 * 86_400);

    // The same version with other bytes: refused, the channel unchanged.
    let before = std::fs::read(channel::channel_path(&repo, "stable")).unwrap();
    let other = build_dir(dir.path(), "b2x", "1.1.0", 0xcc, &key);
    let (ok, out) = publish(&other, &[]);
    assert!(!ok && out.contains("already in channel"), "{out}");
    assert_eq!(
        before,
        std::fs::read(channel::channel_path(&repo, "stable")).unwrap()
    );

    // Another key cannot take over the channel.
    let (k2, pem2) = SigningKey::generate().unwrap();
    let sec2 = dir.path().join("k2.pem");
    std::fs::write(&sec2, pem2).unwrap();
    let b3 = build_dir(dir.path(), "b3", "1.2.0", 0xd3, &k2);
    let (ok, out) = publish_with(&b3, &sec2, &[]);
    assert!(
        !ok && out.contains("does not verify with this key"),
        "{out}"
    );
    assert_eq!(
        before,
        std::fs::read(channel::channel_path(&repo, "stable")).unwrap()
    );
}
