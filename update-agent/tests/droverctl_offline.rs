//! `droverctl` slot commands on disk image files, checked against `cgpt`.

use std::path::{Path, PathBuf};
use std::process::Command;

use drover_core::layout::LayoutSpec;

fn disk(dir: &Path) -> PathBuf {
    let path = dir.join("disk.raw");
    let spec = LayoutSpec {
        esp_mib: 8,
        usr_mib: 64,
        oem_mib: 4,
        root_mib: 16,
        disk_guid: "11111111-2222-4333-8444-555555555555".parse().unwrap(),
    };
    drover_test_support::disk(&path, &spec);
    path
}

fn droverctl(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_droverctl"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn slots_json(d: &Path) -> serde_json::Value {
    let (ok, out, err) = droverctl(&["slots", "--disk", d.to_str().unwrap(), "--json"]);
    assert!(ok, "{err}");
    serde_json::from_str(&out).unwrap()
}

fn cgpt(args: &[&str]) -> String {
    let out = Command::new("cgpt")
        .args(args)
        .output()
        .expect("cgpt installed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn slots_json_has_the_documented_shape() {
    let dir = tempfile::tempdir().unwrap();
    let d = disk(dir.path());
    let v = slots_json(&d);
    assert_eq!(
        v,
        serde_json::json!({
            "slots": [
                {"label": "USR-A", "partition": 3, "priority": 1, "tries": 0, "successful": true},
                {"label": "USR-B", "partition": 4, "priority": 0, "tries": 0, "successful": false}
            ],
            "next": "USR-A",
            "decision": "candidate"
        })
    );
    let (ok, text, _) = droverctl(&["slots", "--disk", d.to_str().unwrap()]);
    assert!(ok);
    assert!(text.contains("next boot: USR-A"), "{text}");
}

#[test]
fn next_follows_the_rule_and_is_null_when_nothing_boots() {
    let dir = tempfile::tempdir().unwrap();
    let d = disk(dir.path());
    let ds = d.to_str().unwrap();
    cgpt(&["add", "-i", "4", "-P", "2", "-T", "1", "-S", "0", ds]);
    assert_eq!(slots_json(&d)["next"], "USR-B");
    cgpt(&["add", "-i", "4", "-T", "0", ds]);
    assert_eq!(slots_json(&d)["next"], "USR-A");
    cgpt(&["add", "-i", "3", "-P", "0", ds]);
    let v = slots_json(&d);
    assert_eq!(v["next"], "USR-A");
    assert_eq!(v["decision"], "fallback");
    cgpt(&["add", "-i", "3", "-S", "0", ds]);
    let v = slots_json(&d);
    assert_eq!(v["next"], serde_json::Value::Null);
    assert_eq!(v["decision"], "rescue");
    let (ok, text, _) = droverctl(&["slots", "--disk", ds]);
    assert!(ok);
    assert!(text.contains("rescue console"), "{text}");
}

#[test]
fn rollback_and_mark_successful_offline() {
    let dir = tempfile::tempdir().unwrap();
    let d = disk(dir.path());
    let ds = d.to_str().unwrap();
    // Nothing to roll back to on a fresh disk: a clear error, nothing written.
    let before = std::fs::read(&d).unwrap();
    let (ok, _, err) = droverctl(&["rollback", "--disk", ds]);
    assert!(!ok);
    assert!(err.contains("cannot roll back to USR-B"), "{err}");
    assert!(err.contains("never booted successfully"), "{err}");
    assert_eq!(before, std::fs::read(&d).unwrap());
    // An update to B that booted: mark it successful, as the agent would.
    cgpt(&["add", "-i", "4", "-P", "2", "-T", "0", "-S", "0", ds]);
    cgpt(&["add", "-i", "4", "-T", "1", ds]);
    let (ok, _, err) = droverctl(&["mark-successful", "--disk", ds, "--slot", "USR-B"]);
    assert!(ok, "{err}");
    assert_eq!(cgpt(&["show", "-i", "4", "-S", ds]), "1");
    assert_eq!(cgpt(&["show", "-i", "4", "-T", ds]), "0");
    assert_eq!(slots_json(&d)["next"], "USR-B");
    // Manual rollback to A, then back again.
    let (ok, out, err) = droverctl(&["rollback", "--disk", ds, "--json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["next"], "USR-A");
    assert_eq!(cgpt(&["show", "-i", "3", "-P", ds]), "2");
    assert_eq!(cgpt(&["show", "-i", "4", "-P", ds]), "1");
    let (ok, out, _) = droverctl(&["rollback", "--disk", ds]);
    assert!(ok);
    assert!(
        out.contains("rolled back: USR-B boots next (was USR-A)"),
        "{out}"
    );
    // A bad slot name and a missing disk are clear errors.
    let (ok, _, err) = droverctl(&["mark-successful", "--disk", ds, "--slot", "USR-C"]);
    assert!(!ok && err.contains("unknown slot 'USR-C'"), "{err}");
    let (ok, _, err) = droverctl(&["slots", "--disk", "/nonexistent/disk.raw"]);
    assert!(!ok && err.contains("/nonexistent/disk.raw"), "{err}");
}
