//! The schema: every field read, every refusal with the key's path and a
//! reason, merging in order, and the plan and its application on a tree
//! shaped like a Drover root file system.

use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

use drover_os_config::firstboot::{self, Outcome, Places};
use drover_os_config::{check, plan, settle, Action, Source};

const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGa3d2C2Y9Y5wE8pCk2xQe2mC0vF0k3h1mJk6m1yN0tR ops@example";

fn src(name: &str, text: &str) -> Source {
    Source {
        name: name.into(),
        text: text.into(),
    }
}

/// Every field of the schema.
fn full() -> String {
    format!(
        r#"
hostname = "node-1"

[[users]]
name = "core"
uid = 1500
gecos = "Core user"
shell = "/bin/sh"
groups = ["sudo"]
ssh-authorized-keys = ["{KEY}"]

[[users]]
name = "root"
ssh-authorized-keys = ["{KEY}"]

[[files]]
path = "/etc/motd"
contents = "hello\n"

[[files]]
path = "/var/lib/app/blob"
mode = "0600"
owner = "core"
group = "sudo"
contents-base64 = "AAEC"

[[units]]
name = "hello.service"
enabled = true
contents = """
[Unit]
Description=hello
[Service]
ExecStart=/bin/true
[Install]
WantedBy=multi-user.target
"""
[[units.drop-ins]]
name = "10-env.conf"
contents = "[Service]\nEnvironment=A=1\n"

[sysctl]
"net.ipv4.ip_forward" = 1
"kernel.printk" = "4 4 1 7"

[update]
server = "https://updates.example.com/drover/"
channel = "beta"
reboot-strategy = "window"
poll-interval-secs = 600
require-measured-boot = true
window = {{ days = ["sat", "sun"], start = "02:30", length-minutes = 90 }}

[kubelet]
enabled = true
binary-sha256 = "{}"
kubeconfig = "/etc/kubernetes/kubelet.conf"
cluster-dns = ["10.96.0.10"]
cluster-domain = "cluster.local"
node-labels = {{ "role" = "worker" }}
max-pods = 50

[[containerd.registries]]
host = "registry.internal:5000"
mirrors = ["https://mirror.internal/v2/"]
ca = """
-----BEGIN CERTIFICATE-----
MIIBfake
-----END CERTIFICATE-----
"""

[[containerd.registries]]
host = "10.0.2.100:5000"
server = "http://10.0.2.100:5000"
insecure = true

[[containerd.drop-ins]]
name = "50-opt.toml"
contents = """
version = 2
[plugins."io.containerd.internal.v1.opt"]
  path = "/var/lib/containerd/opt-node"
"""
"#,
        "ab".repeat(32)
    )
}

/// A node config with a reboot lock renders a drop-in the agent's own
/// types read back as written.
#[test]
fn a_lock_strategy_renders_what_the_agent_reads() {
    let text = "[update]\nreboot-strategy = \"etcd-lock\"\nhalt-after-failures = 3\n\
                etcd = { endpoints = [\"https://10.0.0.1:2379\", \"https://10.0.0.2:2379\"], ca = \"/etc/drover/etcd/ca.pem\", cert = \"/etc/drover/etcd/node.pem\", key = \"/etc/drover/etcd/node-key.pem\", group = \"workers\" }\n";
    let s = settle(&[src("lock.toml", text)]).unwrap();
    let plan = plan(&s, None).unwrap();
    let drop_in = plan
        .iter()
        .find_map(|a| match a {
            Action::Write { path, contents, .. }
                if path == "/etc/drover/agent.toml.d/50-node-config.toml" =>
            {
                Some(String::from_utf8(contents.clone()).unwrap())
            }
            _ => None,
        })
        .unwrap();
    let w: drover_core::agent_config::Written = toml::from_str(&drop_in).unwrap();
    assert_eq!(w.halt_after_failures, Some(3));
    let r = w.reboot.unwrap();
    assert_eq!(r.strategy, drover_core::agent_config::Strategy::EtcdLock);
    let e = r.etcd.unwrap();
    assert_eq!(e.endpoints.len(), 2);
    assert_eq!(e.group, "workers");
    assert_eq!(e.key.unwrap(), Path::new("/etc/drover/etcd/node-key.pem"));
}

#[test]
fn every_field_is_read() {
    let s = settle(&[src("full.toml", &full())]).unwrap();
    assert_eq!(s.hostname.as_ref().unwrap().as_str(), "node-1");
    assert_eq!(s.users.len(), 2);
    assert_eq!(s.users[0].uid, 1500);
    assert_eq!(s.users[0].shell.as_str(), "/bin/sh");
    assert_eq!(s.users[1].uid, 0);
    assert_eq!(s.files[1].contents, vec![0, 1, 2]);
    assert_eq!(s.files[1].mode.bits(), 0o600);
    assert!(s.units[0].enabled);
    assert_eq!(s.units[0].drop_ins.len(), 1);
    assert_eq!(s.sysctl.len(), 2);
    let u = s.update.as_ref().unwrap();
    assert_eq!(u.channel.as_ref().unwrap().as_str(), "beta");
    assert_eq!(u.poll_interval_secs, Some(600));
    let k = s.kubelet.as_ref().unwrap();
    assert!(k.enabled);
    assert_eq!(k.more.max_pods, Some(50));
    assert_eq!(s.containerd.registries.len(), 2);
    assert!(s.containerd.registries[1].insecure);
    assert_eq!(s.containerd.drop_ins[0].name.as_str(), "50-opt.toml");
}

/// containerd's registry host files, as containerd reads them: TOML with
/// the server, its TLS settings, and each mirror as a `host` table.
#[test]
fn registries_render_containerd_hosts_files() {
    let (_, actions) = check(&[src("full.toml", &full())]).unwrap();
    let file = |p: &str| {
        actions
            .iter()
            .find_map(|a| match a {
                Action::Write { path, contents, .. } if path == p => {
                    Some(String::from_utf8(contents.clone()).unwrap())
                }
                _ => None,
            })
            .unwrap_or_else(|| panic!("no {p}"))
    };
    let private: toml::Table = file("/etc/containerd/certs.d/registry.internal:5000/hosts.toml")
        .parse()
        .unwrap();
    assert_eq!(
        private["server"].as_str(),
        Some("https://registry.internal:5000")
    );
    let ca = "/etc/containerd/certs.d/registry.internal:5000/ca.crt";
    assert_eq!(private["ca"].as_str(), Some(ca));
    assert!(file(ca).starts_with("-----BEGIN CERTIFICATE-----"));
    let mirror = &private["host"]["https://mirror.internal/v2"];
    assert_eq!(mirror["ca"].as_str(), Some(ca));
    assert_eq!(
        mirror["capabilities"].as_array().unwrap().len(),
        2,
        "{mirror}"
    );
    let plain: toml::Table = file("/etc/containerd/certs.d/10.0.2.100:5000/hosts.toml")
        .parse()
        .unwrap();
    assert_eq!(plain["server"].as_str(), Some("http://10.0.2.100:5000"));
    assert_eq!(plain["skip_verify"].as_bool(), Some(true));
    // The server is a host table too: containerd 1.6 refuses a hosts.toml
    // without one.
    let own = &plain["host"]["http://10.0.2.100:5000"];
    assert_eq!(own["skip_verify"].as_bool(), Some(true), "{plain}");
    assert_eq!(own["capabilities"].as_array().unwrap().len(), 3);
    assert_eq!(
        private["host"]["https://registry.internal:5000"]["ca"].as_str(),
        Some(ca)
    );
    assert!(file("/etc/containerd/conf.d/50-opt.toml").contains("opt-node"));
    // docker.io's registry is not at https://docker.io.
    let (_, actions) = check(&[src(
        "d.toml",
        "[[containerd.registries]]\nhost = \"docker.io\"\nmirrors = [\"https://mirror.gcr.io\"]\n",
    )])
    .unwrap();
    let docker = actions
        .iter()
        .find(|a| a.path() == "/etc/containerd/certs.d/docker.io/hosts.toml")
        .unwrap();
    let Action::Write { contents, .. } = docker else {
        panic!()
    };
    assert!(String::from_utf8_lossy(contents).contains("server = \"https://registry-1.docker.io\""));
}

/// `(fragment, key in the message, words of the reason)`.
const REFUSED: &[(&str, &str, &str)] = &[
    ("hostnme = \"x\"", "hostnme", "unknown field `hostnme`"),
    ("hostname = \"Node_1\"", "hostname", "not a hostname"),
    ("hostname = 5", "hostname", "invalid type"),
    ("[[users]]\nname = \"1x\"", "users[0].name", "not a user name"),
    ("[[users]]\nname = \"a\"\nuid = -1", "users[0].uid", "invalid value"),
    ("[[users]]\nname = \"a\"\nshell = \"bash\"", "users[0].shell", "absolute"),
    ("[[users]]\nname = \"a\"\nssh-authorized-keys = [\"ssh-ed25519 zz\"]", "users[0].ssh-authorized-keys[0]", "not base64"),
    ("[[users]]\nname = \"a\"\npassword = \"x\"", "users[0].password", "unknown field `password`"),
    ("[[files]]\npath = \"etc/x\"", "files[0].path", "not an absolute path"),
    ("[[files]]\npath = \"/usr/bin/x\"", "files[0].path", "read-only"),
    ("[[files]]\npath = \"/etc/../x\"", "files[0].path", "not a normal path"),
    ("[[files]]\npath = \"/etc/x\"\nmode = \"0999\"", "files[0].mode", "octal"),
    ("[[files]]\npath = \"/etc/x\"\nmode = 420", "files[0].mode", "invalid type"),
    ("[[files]]\npath = \"/etc/x\"\nowner = \"Bad Name\"", "files[0].owner", "not a user name"),
    ("[[files]]\npath = \"/etc/x\"\ncontents = \"a\"\ncontents-base64 = \"YQ==\"", "files[\"/etc/x\"]", "not both"),
    ("[[files]]\npath = \"/etc/x\"\ncontents-base64 = \"!!\"", "files[\"/etc/x\"].contents-base64", "not base64"),
    ("[[units]]\nname = \"x\"", "units[0].name", "suffix"),
    ("[[units]]\nname = \"x.service\"", "units[\"x.service\"]", "nothing to do"),
    ("[[units]]\nname = \"x.service\"\ncontents = \"ExecStart=/bin/true\"", "units[\"x.service\"].contents", "sections"),
    ("[[units]]\nname = \"x.service\"\nenabled = true\ncontents = \"[Service]\\nExecStart=/bin/true\\n\"", "units[\"x.service\"].enabled", "WantedBy"),
    ("[[units]]\nname = \"x.service\"\n[[units.drop-ins]]\nname = \"a\"\ncontents = \"\"", "units[0].drop-ins[0].name", "NAME.conf"),
    ("[sysctl]\n\"net ipv4\" = 1", "sysctl.net ipv4", "not a sysctl key"),
    ("[update]\nserver = \"ftp://x\"", "update.server", "http"),
    ("[update]\nchannel = \"Beta\"", "update.channel", "channel name"),
    ("[update]\nreboot-strategy = \"later\"", "update.reboot-strategy", "unknown variant"),
    ("[update]\nreboot-strategy = \"window\"", "update.window", "needs a window"),
    ("[update]\nwindow = { days = [\"sunday\"], start = \"02:00\", length-minutes = 60 }", "update.window.days[0]", "unknown variant"),
    ("[update]\nwindow = { days = [\"sun\"], start = \"25:00\", length-minutes = 60 }", "update.window.start", "HH:MM"),
    ("[update]\nwindow = { days = [\"sun\"], start = \"02:00\", length-minutes = 0 }", "update.window.length-minutes", "1 to 1440"),
    ("[update]\npoll-interval-secs = 1", "update.poll-interval-secs", "10 seconds"),
    ("[update]\nwindow = { days = [\"sun\"], start = \"7:5\", length-minutes = 60 }", "update.window.start", "HH:MM"),
    ("[update]\nreboot-strategy = \"etcd-lock\"", "update.etcd", "needs the etcd cluster"),
    ("[update]\nreboot-strategy = \"fleetlock\"", "update.fleetlock", "needs the FleetLock server"),
    ("[update]\nreboot-strategy = \"etcd-lock\"\netcd = { endpoints = [\"10.0.0.1:2379\"] }", "update.etcd.endpoints", "not an http"),
    ("[update]\netcd = { endpoints = [\"https://e:2379\"], cert = \"/c.pem\" }", "update.etcd", "needs its key"),
    ("[update]\nfleetlock = { url = \"http://f\", group = \"a b\" }", "update.fleetlock.group", "group name"),
    ("[update]\nhalt-after-failures = 0", "update.halt-after-failures", "above 0"),
    ("[kubelet]\nenabled = false\nshutdown-grace-period-secs = 1", "kubelet.shutdown-grace-period-secs", "3 to 3600"),
    ("[kubelet]\nenabled = true", "kubelet.binary-sha256", "required"),
    ("[kubelet]\nbinary-sha256 = \"xyz\"", "kubelet.binary-sha256", "SHA-256"),
    ("[kubelet]\ncluster-dns = [\"10.0.0.300\"]", "kubelet.cluster-dns[0]", "invalid"),
    ("[kubelet]\nbinary = \"/opt/k\"", "kubelet.binary", "unknown field `binary`"),
    ("[[containerd.registries]]\nhost = \"http://r.example\"", "containerd.registries[0].host", "not a registry host"),
    ("[[containerd.registries]]\nhost = \"r.example:99999\"", "containerd.registries[0].host", "not a registry host"),
    ("[[containerd.registries]]\nhost = \"r.example\"\nserver = \"http://r.example\"", "containerd.registries[\"r.example\"]", "insecure = true"),
    ("[[containerd.registries]]\nhost = \"r.example\"\nmirrors = [\"http://m.example\"]", "containerd.registries[\"r.example\"]", "plain HTTP"),
    ("[[containerd.registries]]\nhost = \"r.example\"\nca = \"not pem\"", "containerd.registries[\"r.example\"].ca", "PEM"),
    ("[[containerd.registries]]\nhost = \"r.example\"\ninsecur = true", "containerd.registries[0].insecur", "unknown field"),
    ("[[containerd.drop-ins]]\nname = \"x.conf\"\ncontents = \"\"", "containerd.drop-ins[0].name", "NAME.toml"),
    ("[[containerd.drop-ins]]\nname = \"x.toml\"\ncontents = \"[a\"", "containerd.drop-ins[\"x.toml\"].contents", "not TOML"),
    ("[[containerd.drop-ins]]\nname = \"x.toml\"\ncontents = \"imports = []\"", "containerd.drop-ins[\"x.toml\"].contents", "cannot import"),
    ("[[containerd.drop-ins]]\nname = \"x.toml\"\ncontents = \"[plugins.\\\"io.containerd.grpc.v1.cri\\\"]\\nsandbox_image = \\\"p\\\"\"", "containerd.drop-ins[\"x.toml\"].contents", "replaces the image's whole CRI table"),
    ("not toml", "", "expected"),
];

#[test]
fn every_refusal_names_the_key_and_the_source() {
    for (text, key, reason) in REFUSED {
        let e = match check(&[src("test.toml", text)]) {
            Ok(_) => panic!("accepted: {text}"),
            Err(e) => e.to_string(),
        };
        assert!(e.starts_with("test.toml: "), "{text}: {e}");
        if !key.is_empty() {
            assert!(
                e.contains(&format!(" {key}: ")),
                "{text}: the message does not name {key}: {e}"
            );
        }
        assert!(e.contains(reason), "{text}: no '{reason}' in: {e}");
    }
}

#[test]
fn later_fragments_override_and_merge() {
    let a = src(
        "a.toml",
        "hostname = \"a\"\n[[files]]\npath = \"/etc/x\"\ncontents = \"a\"\n[sysctl]\n\"vm.a\" = 1\n[update]\nchannel = \"stable\"\nserver = \"https://a/\"\n",
    );
    let b = src(
        "b.toml",
        "hostname = \"b\"\n[[files]]\npath = \"/etc/x\"\ncontents = \"b\"\n[[files]]\npath = \"/etc/y\"\n[sysctl]\n\"vm.b\" = 2\n[update]\nchannel = \"beta\"\n",
    );
    let s = settle(&[a, b]).unwrap();
    assert_eq!(s.hostname.unwrap().as_str(), "b");
    assert_eq!(s.files.len(), 2);
    assert_eq!(s.files[0].contents, b"b");
    assert_eq!(s.sysctl.len(), 2);
    let u = s.update.unwrap();
    assert_eq!(u.channel.unwrap().as_str(), "beta");
    assert_eq!(u.server.unwrap().as_str(), "https://a/");
    assert_eq!(s.sources, vec!["a.toml", "b.toml"]);
}

#[test]
fn a_merged_error_names_the_fragment_it_came_from() {
    let a = src("a.toml", "[[files]]\npath = \"/etc/x\"\ncontents = \"a\"\n");
    let b = src(
        "b.toml",
        "[[files]]\npath = \"/etc/y\"\ncontents = \"a\"\ncontents-base64 = \"YQ==\"\n",
    );
    let e = settle(&[a, b]).unwrap_err().to_string();
    assert!(e.starts_with("b.toml: files[\"/etc/y\"]"), "{e}");
}

#[test]
fn check_lists_the_actions() {
    let (_, actions) = check(&[src("full.toml", &full())]).unwrap();
    let paths: Vec<&str> = actions.iter().map(Action::path).collect();
    for p in [
        "/etc/hostname",
        "/home/core/.ssh/authorized_keys",
        "/root/.ssh/authorized_keys",
        "/etc/motd",
        "/var/lib/app/blob",
        "/etc/systemd/system/hello.service",
        "/etc/systemd/system/hello.service.d/10-env.conf",
        "/etc/systemd/system/multi-user.target.wants/hello.service",
        "/etc/sysctl.d/90-drover-node-config.conf",
        "/etc/drover/agent.toml.d/50-node-config.toml",
        "/etc/kubernetes/kubelet-config.yaml",
        "/etc/drover/kubelet.env",
        "/etc/systemd/system/multi-user.target.wants/kubelet.service",
        "/etc/containerd/certs.d/registry.internal:5000/hosts.toml",
        "/etc/containerd/certs.d/registry.internal:5000/ca.crt",
        "/etc/containerd/certs.d/10.0.2.100:5000/hosts.toml",
        "/etc/containerd/conf.d/50-opt.toml",
    ] {
        assert!(paths.contains(&p), "no action for {p}: {paths:?}");
    }
}

/// A tree shaped like a Drover root: /etc from the factory, units in /usr.
fn image_root() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let w = |p: &str, t: &str| {
        let p = d.path().join(p);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, t).unwrap();
    };
    w(
        "etc/passwd",
        "root:x:0:0:root:/root:/bin/bash\nmessagebus:x:100:101::/nonexistent:/usr/sbin/nologin\n",
    );
    w("etc/group", "root:x:0:\nsudo:x:27:\nmessagebus:x:101:\n");
    w("etc/shadow", "root:*:19000:0:99999:7:::\n");
    std::fs::set_permissions(
        d.path().join("etc/shadow"),
        std::os::unix::fs::PermissionsExt::from_mode(0o640),
    )
    .unwrap();
    w(
        "usr/lib/systemd/system/kubelet.service",
        "[Unit]\nDescription=kubelet\n[Service]\nExecStart=/opt/bin/kubelet\n[Install]\nWantedBy=multi-user.target\n",
    );
    std::fs::create_dir_all(d.path().join("root")).unwrap();
    d
}

#[test]
fn applying_writes_what_the_config_says_and_only_once() {
    let root = image_root();
    let fw = root.path().join("fw_cfg");
    std::fs::write(&fw, full()).unwrap();
    let places = Places {
        sysroot: root.path(),
        fw_cfg: &fw,
        oem: None,
        cmdline: "console=ttyS0",
    };
    let Outcome::Applied(stamp) = firstboot::run(&places).unwrap() else {
        panic!("not applied");
    };
    assert_eq!(stamp.sources, vec!["fw_cfg opt/org.drover/config"]);
    let r = |p: &str| std::fs::read_to_string(root.path().join(p)).unwrap();
    let meta = |p: &str| std::fs::symlink_metadata(root.path().join(p)).unwrap();
    assert_eq!(r("etc/hostname"), "node-1\n");
    assert!(r("etc/passwd").contains("core:x:1500:1500:Core user:/home/core:/bin/sh\n"));
    assert!(r("etc/passwd").starts_with("root:x:0:0"));
    assert!(r("etc/group").contains("core:x:1500:\n"));
    assert!(r("etc/group").contains("sudo:x:27:core\n"));
    assert!(r("etc/shadow").contains("core:*:"));
    assert_eq!(meta("etc/shadow").mode() & 0o7777, 0o640);
    assert_eq!(r("home/core/.ssh/authorized_keys"), format!("{KEY}\n"));
    let m = meta("home/core/.ssh/authorized_keys");
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o777), (1500, 1500, 0o600));
    let m = meta("home/core");
    assert_eq!((m.uid(), m.mode() & 0o777), (1500, 0o700));
    assert_eq!(r("root/.ssh/authorized_keys"), format!("{KEY}\n"));
    let m = meta("var/lib/app/blob");
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o777), (1500, 27, 0o600));
    assert_eq!(meta("var/lib/app").uid(), 0);
    assert_eq!(
        std::fs::read_link(
            root.path()
                .join("etc/systemd/system/multi-user.target.wants/hello.service")
        )
        .unwrap(),
        Path::new("/etc/systemd/system/hello.service")
    );
    assert_eq!(
        std::fs::read_link(
            root.path()
                .join("etc/systemd/system/multi-user.target.wants/kubelet.service")
        )
        .unwrap(),
        Path::new("/usr/lib/systemd/system/kubelet.service")
    );
    assert!(r("etc/sysctl.d/90-drover-node-config.conf").contains("net.ipv4.ip_forward = 1\n"));
    let agent = r("etc/drover/agent.toml.d/50-node-config.toml");
    let v: toml::Value = toml::from_str(&agent).unwrap();
    assert_eq!(v["channel"].as_str(), Some("beta"));
    assert_eq!(v["reboot"]["strategy"].as_str(), Some("window"));
    assert_eq!(v["require-measured-boot"].as_bool(), Some(true));
    assert_eq!(
        v["reboot"]["window"]["length-minutes"].as_integer(),
        Some(90)
    );
    let kc = r("etc/kubernetes/kubelet-config.yaml");
    assert!(kc.contains("kind: KubeletConfiguration"));
    assert!(kc.contains("containerRuntimeEndpoint: \"unix:///run/containerd/containerd.sock\""));
    assert!(kc.contains("maxPods: 50"));
    assert!(kc.contains("shutdownGracePeriod: \"30s\""), "{kc}");
    let logind = r("etc/systemd/logind.conf.d/90-drover-kubelet.conf");
    assert!(
        logind.contains("[Login]\nInhibitDelayMaxSec=45\n"),
        "{logind}"
    );
    let env = r("etc/drover/kubelet.env");
    assert!(env.contains(&format!("KUBELET_SHA256={}", "ab".repeat(32))));
    assert!(env.contains("--node-labels=role=worker"));

    // A second boot: the stamp is there, nothing is applied again.
    std::fs::write(root.path().join("etc/hostname"), "changed-by-hand\n").unwrap();
    assert!(matches!(
        firstboot::run(&places).unwrap(),
        Outcome::AlreadyApplied(_)
    ));
    assert_eq!(r("etc/hostname"), "changed-by-hand\n");
}

#[test]
fn an_invalid_config_changes_nothing() {
    let root = image_root();
    let before = std::fs::read(root.path().join("etc/passwd")).unwrap();
    // Valid fragment by fragment, but the file's owner does not exist: the
    // plan fails after the users were settled, before anything is written.
    let fw = root.path().join("fw_cfg");
    std::fs::write(
        &fw,
        format!("hostname = \"n\"\n[[users]]\nname = \"core\"\nssh-authorized-keys = [\"{KEY}\"]\n[[files]]\npath = \"/etc/x\"\nowner = \"nobody-here\"\n"),
    )
    .unwrap();
    let places = Places {
        sysroot: root.path(),
        fw_cfg: &fw,
        oem: None,
        cmdline: "",
    };
    let e = firstboot::run(&places).unwrap_err().to_string();
    assert!(
        e.contains("files[\"/etc/x\"].owner: no user nobody-here"),
        "{e}"
    );
    assert!(!root.path().join("etc/hostname").exists());
    assert!(!root.path().join("home").exists());
    assert!(!root.path().join(firstboot::STAMP).exists());
    assert_eq!(
        std::fs::read(root.path().join("etc/passwd")).unwrap(),
        before
    );
    // A user the image has already.
    std::fs::write(&fw, "[[users]]\nname = \"messagebus\"\n").unwrap();
    let e = firstboot::run(&places).unwrap_err().to_string();
    assert!(
        e.contains("users.messagebus: user messagebus exists in the image"),
        "{e}"
    );
    // A unit to enable that the image does not have.
    std::fs::write(&fw, "[[units]]\nname = \"nope.service\"\nenabled = true\n").unwrap();
    let e = firstboot::run(&places).unwrap_err().to_string();
    assert!(e.contains("no unit nope.service in the image"), "{e}");
}

#[test]
fn sources_are_merged_in_order_fw_cfg_oem_cmdline() {
    let root = image_root();
    let oem = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join(firstboot::IMAGE_DEFAULTS)).unwrap();
    std::fs::write(
        root.path()
            .join(firstboot::IMAGE_DEFAULTS)
            .join("10-image.toml"),
        "hostname = \"from-image\"\n[sysctl]\n\"vm.swappiness\" = 10\n",
    )
    .unwrap();
    let fw = root.path().join("fw_cfg");
    std::fs::write(&fw, "hostname = \"from-fw-cfg\"\n").unwrap();
    std::fs::write(oem.path().join("config.toml"), "hostname = \"from-oem\"\n").unwrap();
    std::fs::write(
        oem.path().join("late.toml"),
        "hostname = \"from-cmdline\"\n",
    )
    .unwrap();
    let places = Places {
        sysroot: root.path(),
        fw_cfg: &fw,
        oem: Some(oem.path()),
        cmdline: "quiet drover.config=/oem/late.toml",
    };
    let srcs = firstboot::gather(&places).unwrap();
    let names: Vec<&str> = srcs.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        vec![
            "/usr/share/drover/config.d/10-image.toml",
            "fw_cfg opt/org.drover/config",
            "OEM partition config.toml",
            "drover.config=/oem/late.toml"
        ]
    );
    let s = settle(&srcs).unwrap();
    assert_eq!(s.hostname.unwrap().as_str(), "from-cmdline");
    assert_eq!(s.sysctl.len(), 1);
    // A command-line path that is not there stops the boot.
    let places = Places {
        cmdline: "drover.config=/etc/missing.toml",
        ..places
    };
    let e = firstboot::gather(&places).unwrap_err().to_string();
    assert!(
        e.contains("drover.config=/etc/missing.toml") && e.contains("does not exist"),
        "{e}"
    );
    // The plan against the image resolves the image's groups.
    let s = settle(&[src(
        "x",
        "[[files]]\npath = \"/etc/y\"\ngroup = \"messagebus\"\n",
    )])
    .unwrap();
    let a = plan(&s, Some(root.path())).unwrap();
    assert!(a
        .iter()
        .any(|a| matches!(a, Action::Write { path, gid: 101, .. } if path == "/etc/y")));
}
