//! Updates from a published channel served by nginx on loopback, into a
//! disk image file: a full update, a kill in the middle of the download and
//! its resume, and every refusal with USR-A byte-identical and USR-B
//! unbootable.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use drover_core::keys::SigningKey;
use drover_core::SlotId;

mod common;
use common::*;

#[test]
fn a_release_from_the_channel_is_streamed_verified_and_chosen() {
    let fx = Fx::new();
    let v1 = fx.payload("v1.img", "1.0.0", 1, 4, &fx.key);
    let v2 = fx.payload("v2.img", "1.1.0", 1, 6, &fx.key);
    let repo = fx.p("repo");
    publish(&repo, "stable", &[&v1, &v2], &fx.key, |_| {});
    let web = Nginx::serve(&repo, None);
    let disk = fx.disk(&v1);
    let a_before = slot_bytes(&disk, SlotId::A);
    let (ok, out) = run(droverctl(&fx, &disk, &web.url(), &fx.p("state")));
    assert!(ok, "{out}");
    let report: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(report["version"], "1.1.0");
    assert_eq!(report["slot"], "USR-B");
    let payload = std::fs::read(&v2).unwrap();
    assert_eq!(&slot_bytes(&disk, SlotId::B)[..payload.len()], &payload[..]);
    assert_eq!(slot_bytes(&disk, SlotId::A), a_before);
    assert_eq!(bits(&disk, SlotId::B), (2, 1, false));
    // The header came by range requests, then one stream.
    assert!(
        web.access_log().contains("206 bytes=0-"),
        "{}",
        web.access_log()
    );
    // The same channel again: USR-B already holds 1.1.0 but A runs; the
    // sequence is the same, which is allowed (not a rollback).
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fx.p("state/agent-state.json")).unwrap()).unwrap();
    assert_eq!(state["sequence"]["stable"], 1);
    assert_eq!(state["pending"]["version"], "1.1.0");
}

#[test]
fn a_download_killed_midway_resumes_where_it_was_synced() {
    let fx = Fx::new();
    let v1 = fx.payload("v1.img", "1.0.0", 1, 4, &fx.key);
    let v2 = fx.payload("v2.img", "1.1.0", 1, 100, &fx.key);
    let repo = fx.p("repo");
    publish(&repo, "stable", &[&v2], &fx.key, |_| {});
    // 25 MiB/s: the 100 MiB payload takes four seconds.
    let web = Nginx::serve(&repo, Some("25m"));
    let disk = fx.disk_with(&v1, 128);
    let a_before = slot_bytes(&disk, SlotId::A);
    let state = fx.p("state");
    let mut child = droverctl(&fx, &disk, &web.url(), &state)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once a resume point is on disk.
    let durable = kill_once_durable(&mut child, &state);
    assert_eq!(slot_bytes(&disk, SlotId::A), a_before);
    assert_eq!(
        bits(&disk, SlotId::B).0,
        0,
        "B must be unbootable mid-download"
    );
    assert_eq!(bits(&disk, SlotId::A), (1, 0, true));

    let (ok, out) = run(droverctl(&fx, &disk, &web.url(), &state));
    assert!(ok, "{out}");
    let log = web.access_log();
    assert!(
        log.lines()
            .any(|l| l.contains(&format!("206 bytes={durable}-"))),
        "no request resumed at byte {durable}:\n{log}"
    );
    let payload = std::fs::read(&v2).unwrap();
    assert_eq!(&slot_bytes(&disk, SlotId::B)[..payload.len()], &payload[..]);
    assert_eq!(bits(&disk, SlotId::B), (2, 1, false));
}

/// Spoils a repository (and maybe the state directory) for one case.
type Spoil<'a> = Box<dyn Fn(&Path, &Path) + 'a>;

/// One refusal case: how the repository is spoiled, what the error says.
struct Case {
    name: &'static str,
    want: &'static str,
}

#[test]
fn every_bad_channel_or_payload_is_refused_and_loses_nothing() {
    let fx = Fx::new();
    let v1 = fx.payload("v1.img", "1.0.0", 5, 4, &fx.key);
    let good = fx.payload("v2.img", "1.1.0", 5, 6, &fx.key);
    let low = fx.payload("v2low.img", "1.1.0", 4, 6, &fx.key);
    let stranger = SigningKey::generate().unwrap().0;
    let cases: Vec<(Case, Spoil<'_>)> = vec![
        (
            Case {
                name: "flipped payload bit",
                want: "does not match",
            },
            Box::new(|repo, _| {
                publish(repo, "stable", &[&good], &fx.key, |_| {});
                let p = repo.join("releases/1.1.0/usr.img");
                let mut b = std::fs::read(&p).unwrap();
                b[2 << 20] ^= 0x10;
                std::fs::write(&p, b).unwrap();
            }),
        ),
        (
            Case {
                name: "truncated payload",
                want: "the signed channel metadata says",
            },
            Box::new(|repo, _| {
                publish(repo, "stable", &[&good], &fx.key, |_| {});
                let p = repo.join("releases/1.1.0/usr.img");
                let b = std::fs::read(&p).unwrap();
                std::fs::write(&p, &b[..b.len() - 4096]).unwrap();
            }),
        ),
        (
            Case {
                name: "payload longer than advertised",
                want: "the signed channel metadata says",
            },
            Box::new(|repo, _| {
                publish(repo, "stable", &[&good], &fx.key, |_| {});
                let p = repo.join("releases/1.1.0/usr.img");
                let mut b = std::fs::read(&p).unwrap();
                b.extend_from_slice(&[0u8; 4096]);
                std::fs::write(&p, b).unwrap();
            }),
        ),
        (
            Case {
                name: "signature by an unknown key",
                want: "not signed by a trusted key",
            },
            Box::new(|repo, _| publish(repo, "stable", &[&good], &stranger, |_| {})),
        ),
        (
            Case {
                name: "expired metadata",
                want: "expired",
            },
            Box::new(|repo, _| {
                publish(repo, "stable", &[&good], &fx.key, |m| {
                    m.expires_at = m.issued_at - 1
                })
            }),
        ),
        (
            Case {
                name: "sequence number going backwards",
                want: "metadata rollback",
            },
            Box::new(|repo, state| {
                publish(repo, "stable", &[&good], &fx.key, |m| m.sequence = 3);
                std::fs::create_dir_all(state).unwrap();
                std::fs::write(
                    state.join("agent-state.json"),
                    r#"{"sequence": {"stable": 7}}"#,
                )
                .unwrap();
            }),
        ),
        (
            Case {
                name: "security version below the running one",
                want: "below the running 5",
            },
            Box::new(|repo, _| publish(repo, "stable", &[&low], &fx.key, |_| {})),
        ),
    ];
    for (i, (case, spoil)) in cases.iter().enumerate() {
        let repo = fx.p(&format!("repo{i}"));
        let state: PathBuf = fx.p(&format!("state{i}"));
        spoil(&repo, &state);
        let web = Nginx::serve(&repo, None);
        let disk = fx.disk(&v1);
        let a_before = slot_bytes(&disk, SlotId::A);
        let (ok, out) = run(droverctl(&fx, &disk, &web.url(), &state));
        assert!(!ok, "{}: accepted:\n{out}", case.name);
        assert!(
            out.contains(case.want),
            "{}: wanted '{}' in:\n{out}",
            case.name,
            case.want
        );
        assert_eq!(
            slot_bytes(&disk, SlotId::A),
            a_before,
            "{}: USR-A changed",
            case.name
        );
        assert_eq!(bits(&disk, SlotId::A), (1, 0, true), "{}", case.name);
        let (prio, tries, _) = bits(&disk, SlotId::B);
        assert_eq!((prio, tries), (0, 0), "{}: USR-B is bootable", case.name);
    }
}

/// A channel read from a directory (a USB stick) is bounded as one read
/// over HTTP is: an oversized channel file, or one that is a link to an
/// endless source, is refused without reading it all.
#[test]
fn a_channel_in_a_directory_is_bounded_like_one_over_http() {
    let fx = Fx::new();
    let v1 = fx.payload("v1.img", "1.0.0", 5, 4, &fx.key);
    let good = fx.payload("v2.img", "1.1.0", 5, 6, &fx.key);
    type Make = fn(&Path);
    let cases: [(&str, Make); 2] = [
        ("an 8 MiB channel file", |p| {
            let mut b = std::fs::read(p).unwrap();
            b.resize(8 << 20, b' ');
            std::fs::write(p, b).unwrap();
        }),
        ("a channel file linked to /dev/zero", |p| {
            std::fs::remove_file(p).unwrap();
            std::os::unix::fs::symlink("/dev/zero", p).unwrap();
        }),
    ];
    for (i, (what, make)) in cases.iter().enumerate() {
        let repo = fx.p(&format!("repo{i}"));
        publish(&repo, "stable", &[&good], &fx.key, |_| {});
        make(&repo.join("channels/stable.json"));
        let disk = fx.disk(&v1);
        let a_before = slot_bytes(&disk, SlotId::A);
        let state = fx.p(&format!("state{i}"));
        let (ok, out) = run(droverctl(&fx, &disk, repo.to_str().unwrap(), &state));
        assert!(!ok, "{what}: accepted:\n{out}");
        assert!(
            out.contains("is more than the 4194304 bytes it may be"),
            "{what}: {out}"
        );
        assert_eq!(slot_bytes(&disk, SlotId::A), a_before, "{what}");
        assert_eq!(bits(&disk, SlotId::B).0, 0, "{what}");
    }
}
