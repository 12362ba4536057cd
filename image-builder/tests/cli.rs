//! `drover keygen`, `drover verity` and `drover inspect` as users run them.

use std::fs::OpenOptions;
use std::path::Path;
use std::process::Command;

fn drover(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_drover"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn keygen_writes_a_private_secret_and_refuses_to_overwrite() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let (sec, public) = (dir.path().join("k.pem"), dir.path().join("k.pub.pem"));
    let (ok, _, err) = drover(&["keygen", "--secret", s(&sec), "--public", s(&public)]);
    assert!(ok, "{err}");
    assert_eq!(
        std::fs::metadata(&sec).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(std::fs::read_to_string(&public)
        .unwrap()
        .starts_with("-----BEGIN PUBLIC KEY-----"));
    let before = std::fs::read(&sec).unwrap();
    let (ok, _, err) = drover(&["keygen", "--secret", s(&sec), "--public", s(&public)]);
    assert!(!ok && err.contains("refusing to overwrite"), "{err}");
    assert_eq!(before, std::fs::read(&sec).unwrap());
}

#[test]
fn verity_format_json_and_verify_names_the_bad_block() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let hash = dir.path().join("hash");
    let bytes: Vec<u8> = (0..4096 * 300u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&data, &bytes).unwrap();
    let (ok, out, err) = drover(&[
        "verity",
        "format",
        s(&data),
        s(&hash),
        "--salt",
        "-",
        "--json",
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["salt"], "");
    let root = v["root_hash"].as_str().unwrap().to_string();
    assert_eq!(root.len(), 64);
    // veritysetup agrees.
    let vs = Command::new("veritysetup")
        .args(["verify", s(&data), s(&hash), &root])
        .status()
        .expect("veritysetup installed");
    assert!(vs.success());
    let (ok, out, _) = drover(&["verity", "verify", s(&data), s(&hash), &root]);
    assert!(ok && out.contains("verified"), "{out}");
    // Corrupt data block 123.
    use std::os::unix::fs::FileExt;
    let f = OpenOptions::new().write(true).open(&data).unwrap();
    f.write_all_at(&[0xff], 123 * 4096 + 17).unwrap();
    let (ok, _, err) = drover(&["verity", "verify", s(&data), s(&hash), &root]);
    assert!(!ok);
    assert!(err.contains("data block 123 is corrupt"), "{err}");
    // A random salt by default, printed as hex; an appended tree too.
    let img = dir.path().join("img");
    std::fs::write(&img, &bytes).unwrap();
    let off = (bytes.len()).to_string();
    let (ok, out, err) = drover(&[
        "verity",
        "format",
        s(&img),
        s(&img),
        "--hash-offset",
        &off,
        "--json",
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["salt"].as_str().unwrap().len(), 64);
    let root = v["root_hash"].as_str().unwrap();
    let (ok, _, err) = drover(&[
        "verity",
        "verify",
        s(&img),
        s(&img),
        root,
        "--hash-offset",
        &off,
    ]);
    assert!(ok, "{err}");
}

#[test]
fn verity_format_refuses_a_partial_block() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::write(&data, vec![1u8; 5000]).unwrap();
    let (ok, _, err) = drover(&["verity", "format", s(&data), s(&dir.path().join("h"))]);
    assert!(
        !ok && err.contains("not a multiple of the 4096-byte data block"),
        "{err}"
    );
}

#[test]
fn config_check_lists_the_actions_and_names_a_bad_key() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.toml");
    let node = dir.path().join("node.toml");
    std::fs::write(
        &base,
        "hostname = \"base\"\n[update]\nchannel = \"stable\"\nserver = \"https://u.example/\"\n",
    )
    .unwrap();
    std::fs::write(
        &node,
        "hostname = \"node-7\"\n[[files]]\npath = \"/etc/motd\"\ncontents = \"hi\\n\"\n",
    )
    .unwrap();
    let (ok, out, err) = drover(&["config", "check", s(&base), s(&node)]);
    assert!(ok, "{err}");
    assert!(out.starts_with("valid: "), "{out}");
    assert!(out.contains("write   /etc/hostname"), "{out}");
    assert!(
        out.contains("/etc/drover/agent.toml.d/50-node-config.toml"),
        "{out}"
    );
    let (ok, out, _) = drover(&["config", "check", "--json", s(&base), s(&node)]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["settings"]["hostname"], "node-7");
    assert!(v["actions"].as_array().unwrap().len() >= 3);

    std::fs::write(&node, "[[users]]\nname = \"core\"\nuid = \"x\"\n").unwrap();
    let (ok, _, err) = drover(&["config", "check", s(&node)]);
    assert!(!ok);
    assert!(
        err.contains(&format!("{}: users[0].uid: invalid type", node.display())),
        "{err}"
    );
}

/// `drover channel` as an operator runs it: init (keys with private modes,
/// root 2 of 3), show, refresh, rotate-key; bad input refused with the
/// reason and nothing written.
#[test]
fn channel_commands_make_show_refresh_and_rotate_a_tuf_channel() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let (repo, keys) = (dir.path().join("repo"), dir.path().join("keys"));
    let at = ["--repo", s(&repo), "--channel", "stable"];
    let with = |cmd: &[&str], more: &[&str]| -> Vec<String> {
        cmd.iter()
            .chain(at.iter())
            .chain(more.iter())
            .map(|x| x.to_string())
            .collect()
    };
    let run = |args: Vec<String>| {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        drover(&a)
    };
    let (ok, out, err) = run(with(&["channel", "init"], &["--keys", s(&keys), "--json"]));
    assert!(ok, "{err}");
    let init: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(init["keys"]["root"].as_array().unwrap().len(), 3);
    for k in std::fs::read_dir(&keys).unwrap() {
        let m = k.unwrap().metadata().unwrap().permissions().mode();
        assert_eq!(m & 0o777, 0o600);
    }
    // A second init is refused and changes nothing.
    let root1 = std::fs::read(repo.join("tuf/stable/metadata/1.root.json")).unwrap();
    let (ok, _, err) = run(with(&["channel", "init"], &["--keys", s(&keys)]));
    assert!(!ok && err.contains("is a TUF repository already"), "{err}");
    assert_eq!(
        std::fs::read(repo.join("tuf/stable/metadata/1.root.json")).unwrap(),
        root1
    );

    let show = || -> serde_json::Value {
        let (ok, out, err) = run(with(&["channel", "show"], &["--json"]));
        assert!(ok, "{err}");
        serde_json::from_str(&out).unwrap()
    };
    let v = show();
    assert_eq!(v["roles"]["root"]["threshold"], 2);
    assert_eq!(v["roles"]["timestamp"]["version"], 1);

    let (ok, _, err) = run(with(
        &["channel", "refresh"],
        &["--keys", s(&keys), "--json"],
    ));
    assert!(ok, "{err}");
    assert_eq!(show()["roles"]["timestamp"]["version"], 2);

    let old = v["roles"]["targets"]["keys"][0].clone();
    let (ok, out, err) = run(with(
        &["channel", "rotate-key", "targets"],
        &["--keys", s(&keys), "--json"],
    ));
    assert!(ok, "{err}");
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["root-version"], 2);
    assert_eq!(r["retired"], old);
    let v = show();
    assert_ne!(v["roles"]["targets"]["keys"][0], old);
    assert_eq!(v["roles"]["root"]["version"], 2);

    // A root key to retire must be named, and named unambiguously.
    let (ok, _, err) = run(with(
        &["channel", "rotate-key", "root"],
        &["--keys", s(&keys)],
    ));
    assert!(!ok && err.contains("needs --retire KEY_ID"), "{err}");
    let (ok, _, err) = run(with(
        &["channel", "rotate-key", "root"],
        &["--keys", s(&keys), "--retire", "0000000000"],
    ));
    assert!(!ok && err.contains("no root key id starts with"), "{err}");
    assert!(!repo.join("tuf/stable/metadata/3.root.json").exists());

    // Withdrawing a release the channel does not have: a clear error,
    // nothing signed; no version at all: a usage error.
    let (ok, _, err) = run(with(
        &["channel", "withdraw", "1.0.0"],
        &["--keys", s(&keys)],
    ));
    assert!(!ok && err.contains("has no release 1.0.0"), "{err}");
    let (ok, _, err) = run(with(&["channel", "withdraw"], &["--keys", s(&keys)]));
    assert!(!ok && err.contains("<VERSION>"), "{err}");
    assert_eq!(
        show()["roles"]["targets"]["version"],
        v["roles"]["targets"]["version"]
    );
}
