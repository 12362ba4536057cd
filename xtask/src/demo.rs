//! `cargo xtask demo`: the main job, narrated. Builds v1 and v2 of the
//! default image (examples/container-host.toml) with a development key,
//! publishes v2 to a signed channel served by nginx on loopback, boots v1 in
//! QEMU through OVMF and systemd-boot with a software TPM (swtpm) and the
//! agent pointed at the channel (reachable from the guest only through QEMU
//! user networking), shows the measured boot verified on the node and a
//! quote with a fresh nonce checked on the host, then the agent updating to
//! v2, rebooting, confirming, and a manual rollback.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use drover_qemu_tests::guest::{Firmware, Guest, GuestBuilder};
use drover_qemu_tests::web::Nginx;

fn say(start: Instant, msg: &str) {
    println!("\n[demo {:>4}s] {msg}", start.elapsed().as_secs());
}

fn show(start: Instant, g: &mut Guest, marker: &str, timeout: Duration) -> anyhow::Result<String> {
    let line = g.wait_for(marker, timeout).map_err(|e| {
        let console = g.console();
        let tail: Vec<&str> = console.lines().rev().take(60).collect();
        anyhow::anyhow!(
            "{e}\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
    })?;
    println!(
        "[demo {:>4}s]   console: {}",
        start.elapsed().as_secs(),
        strip(&line)
    );
    Ok(line)
}

fn strip(s: &str) -> String {
    // Drop terminal escape sequences systemd prints.
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else if !c.is_control() {
            out.push(c);
        }
    }
    out.trim().to_string()
}

fn run_quiet(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether an earlier build in `out` is from the same spec text and newer
/// than the binaries that made it.
fn reusable(spec_path: &Path, spec: &str, out: &Path, bins: &[PathBuf]) -> bool {
    let Ok(built) = std::fs::metadata(out.join("build.json")).and_then(|m| m.modified()) else {
        return false;
    };
    std::fs::read_to_string(spec_path).ok().as_deref() == Some(spec)
        && bins.iter().all(|b| {
            std::fs::metadata(b)
                .and_then(|m| m.modified())
                .map(|t| t < built)
                .unwrap_or(false)
        })
}

/// Runs the demo.
pub fn run() -> anyhow::Result<()> {
    let start = Instant::now();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()?;
    say(
        start,
        &format!(
            "checking the Debian packages the demo needs ({})",
            crate::deps::packages().join(", ")
        ),
    );
    crate::deps::install()?;
    say(
        start,
        "building drover, droverctl and drover-boot (release)",
    );
    crate::run(
        crate::cargo()
            .args([
                "build",
                "--release",
                "-p",
                "drover-image-builder",
                "-p",
                "drover-boot",
                "-p",
                "drover-update-agent",
            ])
            .current_dir(&root),
    )?;
    let bin = |n: &str| root.join("target/release").join(n);
    let dir = root.join("target/demo");
    std::fs::create_dir_all(&dir)?;
    let (key, public) = (dir.join("dev.pem"), dir.join("dev.pub.pem"));
    if !key.is_file() {
        run_quiet(
            Command::new(bin("drover"))
                .arg("keygen")
                .arg("--secret")
                .arg(&key)
                .arg("--public")
                .arg(&public),
        )?;
    }
    say(
        start,
        &format!(
            "development key {} (never use it for real releases)",
            key.display()
        ),
    );

    // The channel is a TUF repository: its keys (root 2 of 3, targets,
    // snapshot, timestamp) and the root the image carries, made once.
    let tuf_keys = dir.join("tuf-keys");
    let tuf_root = dir.join("tuf-root.json");
    if !tuf_root.is_file() {
        let template = dir.join("tuf-template");
        let _ = std::fs::remove_dir_all(&template);
        run_quiet(
            Command::new(bin("drover"))
                .args(["channel", "init", "--channel", "stable", "--repo"])
                .arg(&template)
                .arg("--keys")
                .arg(&tuf_keys),
        )?;
        std::fs::copy(template.join("tuf/stable/metadata/1.root.json"), &tuf_root)?;
    }
    say(
        start,
        &format!(
            "TUF channel keys {} (root keys 2 of 3, targets, snapshot, timestamp); the image carries the root",
            tuf_keys.display()
        ),
    );

    let spec = std::fs::read_to_string(root.join("examples/container-host.toml"))?;
    // The demo's node: the agent follows the channel at 10.0.2.100 (QEMU
    // forwards it to nginx on the host's loopback), networkd brings up the
    // NIC, and the QEMU guest agent lets the demo run droverctl inside.
    let spec =
        spec.replace(
            "    \"linux-image-amd64\",",
            "    \"qemu-guest-agent\",\n    \"linux-image-amd64\",",
        )
        .replace(
            "# server = \"https://updates.example.com/drover/\"",
            "server = \"http://10.0.2.100/\"\npoll-interval-secs = 15",
        )
        .replace(
            "# tuf-root = \"keys/stable.root.json\"",
            &format!("tuf-root = \"{}\"", tuf_root.display()),
        ) + DEMO_SPEC_EXTRA;
    if !spec.contains("server = \"http://10.0.2.100/\"")
        || !spec.contains("qemu-guest-agent")
        || !spec.contains("tuf-root = \"/")
    {
        bail!(
            "examples/container-host.toml changed: the demo cannot point its agent at the channel"
        );
    }
    let mut outs: Vec<PathBuf> = Vec::new();
    for (v, sv) in [("1.0.0", 1), ("1.1.0", 1)] {
        let s = spec
            .replace("version = \"1.0.0\"", &format!("version = \"{v}\""))
            .replace("security-version = 1", &format!("security-version = {sv}"));
        let spec_path = dir.join(format!("container-host-{v}.toml"));
        let out = dir.join(format!("out-{v}"));
        let bins = [
            bin("drover"),
            bin("drover-boot"),
            bin("drover-agent"),
            bin("droverctl"),
        ];
        if reusable(&spec_path, &s, &out, &bins) {
            say(
                start,
                &format!(
                    "reusing Drover {v} from an earlier run ({}; remove it to rebuild)",
                    out.display()
                ),
            );
            outs.push(out);
            continue;
        }
        std::fs::write(&spec_path, s)?;
        say(start, &format!("building Drover {v} from examples/container-host.toml (mmdebstrap, EROFS, verity, signed manifest, disk image)"));
        crate::run(
            Command::new(bin("drover"))
                .env("SOURCE_DATE_EPOCH", "1700000000")
                .args(["build", "--spec"])
                .arg(&spec_path)
                .arg("--key")
                .arg(&key)
                .arg("--out")
                .arg(&out)
                .arg("--boot-binary")
                .arg(bin("drover-boot")),
        )?;
        outs.push(out);
    }
    let disk = dir.join("node.raw");
    let st = Command::new("cp")
        .arg("--sparse=always")
        .arg(outs[0].join("disk.raw"))
        .arg(&disk)
        .status()?;
    if !st.success() {
        bail!("copying the disk image");
    }
    // The stage kernel, for the KVM probe (KVM only when a guest really runs).
    run_quiet(
        Command::new("mcopy")
            .env("MTOOLS_SKIP_CHECK", "1")
            .arg("-o")
            .arg("-i")
            .arg(format!("{}@@1M", disk.display()))
            .arg("::/drover/vmlinuz")
            .arg(dir.join("stage-vmlinuz")),
    )?;
    say(start, "the node's disk: v1.0.0 in USR-A, USR-B empty");
    print!(
        "{}",
        run_quiet(
            Command::new(bin("droverctl"))
                .arg("slots")
                .arg("--disk")
                .arg(&disk)
        )?
    );

    let repo = dir.join("repo");
    let _ = std::fs::remove_dir_all(&repo);
    let web = Nginx::serve(&repo, None);
    say(
        start,
        &format!(
            "an empty update channel served by nginx on 127.0.0.1:{} (the guest sees it as http://10.0.2.100/)",
            web.port
        ),
    );
    let sock = dir.join("qga.sock");
    let _ = std::fs::remove_file(&sock);
    // A new machine, a new TPM.
    let tpm = dir.join("tpm");
    let _ = std::fs::remove_dir_all(&tpm);
    say(start, "booting the node in QEMU (OVMF, systemd-boot, drover-boot stage, kexec into the slot) with a software TPM (swtpm); TCG takes a minute or two");
    let mut g = GuestBuilder::new(
        "demo",
        &disk,
        Firmware::Ovmf {
            vars: dir.join("demo-vars.fd"),
        },
    )
    .probe_kernel(&dir.join("stage-vmlinuz"))
    .channel(web.port)
    .guest_agent(&sock)
    .tpm(&tpm)
    .allow_reboot()
    .start()?;
    let t = Duration::from_secs(900);
    show(start, &mut g, "chose USR-A", t)?;
    show(start, &mut g, "kexec into", t)?;
    show(start, &mut g, "Welcome to", t)?;
    // Not the login prompt: it ends without a newline, and the console is
    // matched by whole lines. The guest agent answering is the sign.
    g.wait_for_agent(t)?;
    status(start, &g, "droverctl status on the node")?;
    attest(start, &g, &dir, &outs[0], &bin("drover"))?;

    say(
        start,
        "publishing 1.0.0 and 1.1.0 to the channel (drover channel init, then drover publish --tuf-keys: payload, its zstd frames and signed block index, manifest as TUF targets; targets, snapshot and timestamp metadata)",
    );
    run_quiet(
        Command::new(bin("drover"))
            .args(["channel", "init", "--channel", "stable", "--repo"])
            .arg(&repo)
            .arg("--keys")
            .arg(&tuf_keys),
    )?;
    // 1.0.0 first, as a channel holds it: 1.1.0's frames are cut along it.
    for out in &outs[..2] {
        print!(
            "{}",
            run_quiet(
                Command::new(bin("drover"))
                    .args(["publish", "--channel", "stable", "--repo"])
                    .arg(&repo)
                    .arg("--image")
                    .arg(out)
                    .arg("--key")
                    .arg(&key)
                    .arg("--tuf-keys")
                    .arg(&tuf_keys)
            )?
        );
    }
    say(start, "the agent polls every 15 s: it walks the TUF metadata from the root its image carries (root, timestamp, snapshot, targets), fetches only the frames of the blocks of 1.1.0 its USR-A lacks (a delta), copies the rest from USR-A, checks every block against the signed verity tree, flips the priorities and reboots through logind");
    show(start, &mut g, "drover-boot: ", t)?;
    show(start, &mut g, "chose USR-B", t)?;
    show(start, &mut g, "every block was checked", t)?;
    show(start, &mut g, "kexec into USR-B", t)?;
    show(start, &mut g, "Welcome to", t)?;
    g.wait_for_agent(t)?;
    say(start, "1.1.0 is up; drover-boot-complete.service marks USR-B successful once boot-complete.target is reached");
    // The agent starts after the login prompt: no answer yet is not an
    // error, only no success within the time.
    g.try_wait_status(Duration::from_secs(300), "USR-B marked successful", |st| {
        st["booted"]["version"] == "1.1.0" && st["booted-successful"] == true
    })?;
    status(start, &g, "droverctl status on the node")?;
    let log = web.access_log();
    let fetched: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("usr.img") || l.contains("usr.blocks"))
        .collect();
    say(
        start,
        &format!(
            "what the node fetched from the channel (nginx log): {}",
            fetched.join(" | ")
        ),
    );

    say(
        start,
        "manual rollback: droverctl rollback --reboot on the node",
    );
    g.exec(&["/usr/bin/droverctl", "rollback", "--reboot"], false)?;
    show(start, &mut g, "chose USR-A", t)?;
    show(start, &mut g, "kexec into", t)?;
    show(start, &mut g, "Welcome to", t)?;
    g.wait_for_agent(t)?;
    status(start, &g, "done: the node runs 1.0.0 again, reported as a manual rollback; the agent will not reinstall 1.1.0 on its own")?;
    g.stop();
    Ok(())
}

/// The secure-site path: the node's own check of its measured boot, then a
/// quote over its PCRs with a nonce the host just drew, checked on the
/// host against the build's signed manifest and `build.json`.
fn attest(
    start: Instant,
    g: &Guest,
    dir: &Path,
    build: &Path,
    drover: &Path,
) -> anyhow::Result<()> {
    say(
        start,
        "measured boot: firmware and drover-boot measured the boot into the TPM; droverctl verify-boot replays the event log against the signed reference values",
    );
    let (code, out) = g.exec(&["/usr/bin/droverctl", "verify-boot"], true)?;
    for l in out.lines() {
        println!("    {l}");
    }
    if code != 0 {
        bail!("droverctl verify-boot failed on the demo node (exit {code})");
    }
    let nonce = format!("{:032x}", fastrand::u128(..));
    say(
        start,
        &format!("remote attestation: droverctl attest on the node quotes the PCRs with the host's fresh nonce {nonce}"),
    );
    let (code, out) = g.exec(
        &[
            "/usr/bin/droverctl",
            "attest",
            "--nonce",
            &nonce,
            "--out",
            "/run/evidence.json",
            "--ak-public-out",
            "/run/ak.pub",
        ],
        true,
    )?;
    if code != 0 {
        bail!("droverctl attest failed (exit {code}): {out}");
    }
    let evidence = dir.join("evidence.json");
    std::fs::write(
        &evidence,
        g.exec(&["/bin/cat", "/run/evidence.json"], true)?.1,
    )?;
    let (_, ak_hex) = g.exec(
        &["/bin/sh", "-c", "od -An -tx1 -v /run/ak.pub | tr -d ' \\n'"],
        true,
    )?;
    let ak = dir.join("ak.pub");
    std::fs::write(
        &ak,
        hex::decode(ak_hex.trim()).context("the AK's public part")?,
    )?;
    say(
        start,
        "drover attest-verify on this host: the quote's signature and nonce, the event log against the PCRs, the events against the signed reference values",
    );
    let o = Command::new(drover)
        .arg("attest-verify")
        .arg(&evidence)
        .args(["--nonce", &nonce, "--manifest"])
        .arg(build.join("manifest.json"))
        .arg("--build-json")
        .arg(build.join("build.json"))
        .arg("--ak-public")
        .arg(&ak)
        .output()?;
    for l in String::from_utf8_lossy(&o.stdout)
        .lines()
        .chain(String::from_utf8_lossy(&o.stderr).lines())
    {
        println!("    {l}");
    }
    if !o.status.success() {
        bail!("drover attest-verify refused the demo node's quote");
    }
    Ok(())
}

/// Prints `droverctl status` from inside the guest (waiting for the agent,
/// which starts after the login prompt).
fn status(start: Instant, g: &Guest, what: &str) -> anyhow::Result<()> {
    say(start, what);
    let t0 = Instant::now();
    let out = loop {
        let (code, out) = g.exec(&["/usr/bin/droverctl", "status"], true)?;
        if code == 0 || t0.elapsed() > Duration::from_secs(180) {
            break out;
        }
        std::thread::sleep(Duration::from_secs(2));
    };
    for l in out.lines() {
        println!("    {l}");
    }
    Ok(())
}

/// Added to the default spec for the demo's node.
const DEMO_SPEC_EXTRA: &str = r#"
[[files]]
path = "/etc/drover/agent.toml.d/50-demo.toml"
contents = "poll-jitter-secs = 0\n"

[[files]]
path = "/etc/systemd/network/80-dhcp.network"
contents = "[Match]\nName=en* eth*\n\n[Network]\nDHCP=yes\n"

[[files]]
path = "/usr/lib/systemd/system/multi-user.target.wants/systemd-networkd.service"
link = "../systemd-networkd.service"

[[files]]
path = "/usr/lib/systemd/system/sockets.target.wants/systemd-networkd.socket"
link = "../systemd-networkd.socket"
"#;
