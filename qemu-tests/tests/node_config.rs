//! The node config (issue 7) in QEMU: a config through fw_cfg is applied
//! on first boot before systemd starts (hostname, a user's SSH key, a
//! file, a unit, a sysctl, the kubelet), not again on the next boot, and
//! an invalid one stops the first boot with its message. containerd runs
//! in the image, reaches a registry on the host (Debian's docker-registry,
//! plain HTTP) through the config's `[[containerd.registries]]` entry,
//! pulls an image the test built (`FROM scratch`, a static busybox) and
//! runs it, and the container answers; the config's containerd drop-in is
//! in containerd's configuration. The kubelet starts with its rendered
//! config when a binary is there and is skipped, saying why, when it is
//! not.

use std::path::Path;
use std::time::Duration;

use drover_qemu_tests::guest::Guest;
use drover_qemu_tests::image::test_image;
use drover_qemu_tests::registry::{push_scratch_image, static_busybox, Registry};
use sha2::{Digest as _, Sha256};

const BOOT: Duration = Duration::from_secs(600);
const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGa3d2C2Y9Y5wE8pCk2xQe2mC0vF0k3h1mJk6m1yN0tR ops@drover-test";

/// A test stand-in for the kubelet (the real one is not a Debian package
/// and this machine cannot fetch it): records its arguments and idles.
const KUBELET_STAND_IN: &str = "#!/bin/sh\n\
# Test stand-in for the kubelet: records its arguments, then idles.\n\
echo \"$@\" > /var/lib/kubelet/stand-in-args\n\
exec sleep infinity\n";

fn start(name: &str, disk: &Path, sock: &Path, config: &Path) -> Guest {
    test_image()
        .node(name, disk, sock)
        .fw_cfg("opt/org.drover/config", config)
        .start()
        .unwrap()
}

/// Where the guest reaches the test's registry (QEMU forwards it to the
/// registry on the host's loopback).
const REGISTRY: &str = "10.0.2.101:5000";
/// The page the test's container serves.
const PAGE: &str = "hello from a container on a Drover node\n";

/// Runs a shell command in the guest until its output contains `want`.
fn expect_sh(g: &Guest, script: &str, want: &str) -> String {
    let mut out = String::new();
    for _ in 0..60 {
        out = g.sh(script).1;
        if out.contains(want) {
            return out;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    g.fail(&format!("`{script}` never printed '{want}'; last: {out}"))
}

#[test]
fn a_config_from_fw_cfg_is_applied_once_and_the_kubelet_runs_beside_containerd() {
    let img = test_image();
    let dir = tempfile::tempdir().unwrap();
    let disk = img.fresh_disk(dir.path());
    let sock = dir.path().join("qga.sock");
    let sha = hex::encode(Sha256::digest(KUBELET_STAND_IN.as_bytes()));
    // A registry on the host with an image the test builds: FROM scratch,
    // a static binary (busybox) that serves a page.
    let registry = Registry::start(dir.path()).unwrap();
    push_scratch_image(
        &dir.path().join("hello-oci"),
        registry.port,
        "drover/hello:1",
        &[
            (
                "bin/busybox",
                std::fs::read(static_busybox()).expect("busybox-static"),
                0o755,
            ),
            ("www/index.html", PAGE.as_bytes().to_vec(), 0o644),
        ],
        &["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"],
    )
    .unwrap();
    let config = format!(
        r#"
hostname = "drover-test-node"

[[users]]
name = "core"
ssh-authorized-keys = ["{KEY}"]

[[files]]
path = "/etc/drover-test/hello"
mode = "0640"
owner = "core"
contents = "hello from the node config\n"

[[files]]
path = "/opt/bin/kubelet"
mode = "0755"
contents = '''{KUBELET_STAND_IN}'''

[[units]]
name = "drover-test-hello.service"
enabled = true
contents = """
[Unit]
Description=A unit from the node config (Drover test)
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -c 'echo DROVER-TEST-HELLO-UNIT > /dev/ttyS0'
[Install]
WantedBy=multi-user.target
"""

[sysctl]
"vm.swappiness" = 7

[kubelet]
binary-sha256 = "{sha}"
cluster-domain = "cluster.local"
max-pods = 42
node-labels = {{ "drover.test/role" = "worker" }}

[[containerd.registries]]
host = "{REGISTRY}"
server = "http://{REGISTRY}"
insecure = true

[[containerd.drop-ins]]
name = "50-drover-test.toml"
contents = """
version = 2
[plugins."io.containerd.internal.v1.opt"]
  path = "/var/lib/containerd/opt-drover-test"
"""
"#
    );
    let cfg = dir.path().join("node.toml");
    std::fs::write(&cfg, config).unwrap();

    let mut g = test_image()
        .node("node-config", &disk, &sock)
        .fw_cfg("opt/org.drover/config", &cfg)
        // A NIC; the update channel's address leads to the registry too
        // (the agent finds no channel there, which this test ignores).
        .channel(registry.port)
        .forward(REGISTRY, registry.port)
        .start()
        .unwrap();
    let line = g.expect("node config applied", BOOT);
    if !line.contains("fw_cfg opt/org.drover/config") {
        g.fail(&format!("applied from where? {line}"));
    }
    g.expect("DROVER-TEST-HELLO-UNIT", BOOT);
    g.expect("DROVER-TEST-REPORT slot=USR-A", BOOT);
    g.wait_for_agent(Duration::from_secs(180))
        .unwrap_or_else(|e| g.fail(&format!("{e:#}")));

    let checks = [
        ("hostname", "drover-test-node"),
        ("cat /home/core/.ssh/authorized_keys", KEY),
        (
            "stat -c '%U %G %a' /home/core/.ssh/authorized_keys",
            "core core 600",
        ),
        (
            "getent passwd core",
            "core:x:1000:1000::/home/core:/bin/bash",
        ),
        ("cat /etc/drover-test/hello", "hello from the node config"),
        ("stat -c '%U %a' /etc/drover-test/hello", "core 640"),
        ("systemctl is-active drover-test-hello.service", "active"),
        ("cat /proc/sys/vm/swappiness", "7"),
        ("cat /etc/kubernetes/kubelet-config.yaml", "maxPods: 42"),
    ];
    for (script, want) in checks {
        let (_, out) = g.sh(script);
        if !out.contains(want) {
            g.fail(&format!(
                "`{script}` printed '{}', not '{want}'",
                out.trim()
            ));
        }
    }
    expect_sh(&g, "systemctl is-active containerd.service", "active");
    container_runs(&g);
    // The kubelet runs with the rendered config and the node labels.
    let args = expect_sh(
        &g,
        "systemctl is-active kubelet.service; cat /var/lib/kubelet/stand-in-args",
        "--config=/etc/kubernetes/kubelet-config.yaml",
    );
    if !args.starts_with("active") || !args.contains("--node-labels=drover.test/role=worker") {
        g.fail(&format!("kubelet: {args}"));
    }

    // The second boot does not apply the config again: a change made by
    // hand stays. Without its binary, the kubelet is skipped and says why.
    g.sh("echo changed-by-hand > /etc/hostname && rm /opt/bin/kubelet && sync");
    g.exec(&["/usr/bin/systemctl", "reboot"], false)
        .unwrap_or_else(|e| g.fail(&format!("{e:#}")));
    g.expect("node config: applied on first boot", BOOT);
    g.expect("DROVER-TEST-REPORT slot=USR-A", BOOT);
    g.wait_for_agent(Duration::from_secs(180))
        .unwrap_or_else(|e| g.fail(&format!("{e:#}")));
    let (_, host) = g.sh("hostname");
    if host.trim() != "changed-by-hand" {
        g.fail(&format!("the config was applied again: hostname {host}"));
    }
    let status = expect_sh(
        &g,
        "systemctl status kubelet.service; true",
        "ConditionFileIsExecutable=/opt/bin/kubelet",
    );
    let (_, active) = g.sh("systemctl is-active kubelet.service; true");
    if active.trim() != "inactive" {
        g.fail(&format!("kubelet without a binary: {active}\n{status}"));
    }
}

#[test]
fn an_invalid_config_stops_the_first_boot_with_its_message() {
    let img = test_image();
    let dir = tempfile::tempdir().unwrap();
    let disk = img.fresh_disk(dir.path());
    let sock = dir.path().join("qga.sock");
    let cfg = dir.path().join("node.toml");
    std::fs::write(
        &cfg,
        "hostname = \"fine\"\n[[files]]\npath = \"/usr/lib/evil\"\ncontents = \"x\"\n",
    )
    .unwrap();
    let mut g = start("node-config-invalid", &disk, &sock, &cfg);
    let line = g.expect("RESCUE: node config refused", BOOT);
    for want in [
        "fw_cfg opt/org.drover/config",
        "files[0].path",
        "/usr is the verified, read-only image",
    ] {
        if !line.contains(want) {
            g.fail(&format!("the message does not say '{want}': {line}"));
        }
    }
    // The boot stops there: systemd never starts.
    std::thread::sleep(Duration::from_secs(10));
    if g.console().contains("Welcome to") || g.console().contains("DROVER-TEST-REPORT") {
        g.fail("the boot went on after an invalid config");
    }
}

/// containerd pulls the test's image through the registry entry of the
/// node config (plain HTTP, which it refuses without it), runs it, and the
/// container answers a second process in it; the config's drop-in is part
/// of containerd's configuration.
fn container_runs(g: &Guest) {
    let image = format!("{REGISTRY}/drover/hello:1");
    let (code, out) = g.sh(&format!("ctr images pull {image} 2>&1"));
    if code == 0 {
        g.fail(&format!(
            "a plain-HTTP pull worked without the registry entry, so the test proves nothing: {out}"
        ));
    }
    let (code, out) = g.sh(&format!(
        "cat /etc/containerd/certs.d/{REGISTRY}/hosts.toml; ctr images pull --hosts-dir /etc/containerd/certs.d {image} 2>&1"
    ));
    if code != 0 {
        g.fail(&format!(
            "ctr pull through the node config's registry entry: {out}"
        ));
    }
    // Its own network namespace (ctr sets up loopback only); the answer is
    // fetched by a second process in the container.
    let (code, out) = g.sh(&format!("ctr run -d {image} drover-hello 2>&1"));
    if code != 0 {
        g.fail(&format!("ctr run: {out}"));
    }
    let answer = expect_sh(
        g,
        "ctr task exec --exec-id probe drover-hello /bin/busybox wget -q -O - http://127.0.0.1:8080/ 2>&1",
        PAGE.trim(),
    );
    assert!(answer.contains(PAGE.trim()), "{answer}");
    let (_, tasks) = g.sh("ctr task ls");
    if !tasks
        .lines()
        .any(|l| l.starts_with("drover-hello ") && l.contains("RUNNING"))
    {
        g.fail(&format!("the container is not running: {tasks}"));
    }
    let (_, dump) = g.sh("containerd config dump");
    if !dump.contains("/var/lib/containerd/opt-drover-test")
        || !dump.contains("config_path = \"/etc/containerd/certs.d\"")
    {
        g.fail(&format!(
            "containerd's configuration lacks the drop-in or the registry path:\n{dump}"
        ));
    }
    g.sh("ctr task kill -s KILL drover-hello; sleep 1; ctr task rm drover-hello; ctr container rm drover-hello");
}
