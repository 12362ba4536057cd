//! Shared by the update-agent tests: a signing key, slot images of any
//! size, a disk with a running slot, the droverctl runner, and (for the
//! channel tests) nginx serving a published repository on loopback.

#![allow(dead_code)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;

use drover_core::keys::SigningKey;
use drover_core::{PartitionTable, SlotId, Slots};
use drover_test_support::{fake_fs, release_input, seal_release, small_layout, write_slot, Fill};

pub struct Fx {
    pub dir: tempfile::TempDir,
    pub key: SigningKey,
}

impl Fx {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (key, pem) = SigningKey::generate().unwrap();
        std::fs::write(dir.path().join("release.pem"), pem).unwrap();
        std::fs::write(
            dir.path().join("release.pub.pem"),
            key.public_key().to_pem(),
        )
        .unwrap();
        Self { dir, key }
    }

    pub fn p(&self, n: &str) -> PathBuf {
        self.dir.path().join(n)
    }

    /// A slot image of `mib` MiB of pseudo-random "file system" (the first
    /// KiB zero, as EROFS leaves it), signed by `key`.
    pub fn payload(
        &self,
        name: &str,
        version: &str,
        security: u64,
        mib: usize,
        key: &SigningKey,
    ) -> PathBuf {
        let path = self.p(name);
        let seed = security.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ version.len() as u64;
        fake_fs(&path, mib << 20, Fill::Random(seed));
        seal_release(&path, release_input(version, security, vec![7; 32]), &[key]).unwrap();
        path
    }

    /// A disk with `running` in USR-A (P1, successful) and B empty.
    pub fn disk(&self, running: &Path) -> PathBuf {
        self.disk_with(running, 16)
    }

    /// [`Fx::disk`] with slots of `usr_mib` MiB.
    pub fn disk_with(&self, running: &Path, usr_mib: u64) -> PathBuf {
        let path = self.p("disk.raw");
        drover_test_support::disk(&path, &small_layout(usr_mib));
        write_slot(&path, SlotId::A, running);
        path
    }

    pub fn update(&self, disk: &Path, from: &Path, extra: &[&str]) -> (bool, String) {
        let o = Command::new(env!("CARGO_BIN_EXE_droverctl"))
            .args(["update", "--json", "--from"])
            .arg(from)
            .arg("--disk")
            .arg(disk)
            .arg("--trust")
            .arg(self.p("release.pub.pem"))
            .args(extra)
            .output()
            .unwrap();
        let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
        s.push_str(&String::from_utf8_lossy(&o.stderr));
        (o.status.success(), s)
    }
}

/// `droverctl update --json --channel stable --from FROM` on `disk`, with
/// its state in `state`.
pub fn droverctl(fx: &Fx, disk: &Path, from: &str, state: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_droverctl"));
    c.args(["update", "--json", "--channel", "stable", "--from", from])
        .arg("--disk")
        .arg(disk)
        .arg("--trust")
        .arg(fx.p("release.pub.pem"))
        .arg("--state-dir")
        .arg(state);
    c
}

/// Runs `c`: whether it succeeded, and stdout then stderr.
pub fn run(mut c: Command) -> (bool, String) {
    let o = c.output().unwrap();
    let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
    s.push_str(&String::from_utf8_lossy(&o.stderr));
    (o.status.success(), s)
}

/// Waits until the update `child` runs has recorded a durable resume point
/// in `state`, then kills it; returns the point.
pub fn kill_once_durable(child: &mut std::process::Child, state: &Path) -> u64 {
    use std::time::{Duration, Instant};
    let t = Instant::now();
    let durable = loop {
        let d = std::fs::read(state.join("agent-state.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v["download"]["durable"].as_u64())
            .unwrap_or(0);
        if d > 0 {
            break d;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "finished before it could be killed"
        );
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "no resume point appeared"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    durable
}

pub fn slot_bytes(disk: &Path, slot: SlotId) -> Vec<u8> {
    let (t, _) = PartitionTable::open(disk).unwrap();
    let s = Slots::from_table(t, SlotId::A).unwrap();
    let st = s.get(slot);
    let all = std::fs::read(disk).unwrap();
    all[st.offset as usize..(st.offset + st.size) as usize].to_vec()
}

pub fn bits(disk: &Path, slot: SlotId) -> (u8, u8, bool) {
    let (t, _) = PartitionTable::open(disk).unwrap();
    let p = Slots::from_table(t, SlotId::A).unwrap().get(slot).prio;
    (p.priority(), p.tries(), p.successful())
}

#[allow(unused_imports)]
pub use drover_qemu_tests::web::Nginx;

/// Publishes `payload` to `repo` as `drover publish` lays a repository
/// out, signing the channel with `key`. `edit` may change the metadata
/// before it is signed (an expiry in the past, a lower sequence).
pub fn publish(
    repo: &Path,
    channel_name: &str,
    payloads: &[&Path],
    key: &SigningKey,
    edit: impl FnOnce(&mut drover_core::channel::Metadata),
) {
    use drover_core::channel::{self, Metadata, Release, Rollout, SignedChannel};
    use sha2::{Digest as _, Sha256};
    let mut releases = Vec::new();
    for p in payloads {
        let f = File::open(p).unwrap();
        let size = f.metadata().unwrap().len();
        let h = drover_core::slot_image::read_header(&f, size, p).unwrap();
        let m = drover_core::manifest::Manifest::from_bytes(&h.signed.bytes).unwrap();
        let rel = format!("releases/{}", m.os.version);
        std::fs::create_dir_all(repo.join(&rel)).unwrap();
        std::fs::copy(p, repo.join(&rel).join("usr.img")).unwrap();
        std::fs::write(repo.join(&rel).join("manifest.json"), &h.signed.bytes).unwrap();
        let data = std::fs::read(p).unwrap();
        releases.push(Release {
            version: m.os.version.clone(),
            security_version: m.os.security_version,
            payload: format!("{rel}/usr.img"),
            size,
            sha256: hex::encode(Sha256::digest(&data)),
            root_hash: m.verity.root_hash.clone(),
            manifest: format!("{rel}/manifest.json"),
            manifest_sha256: hex::encode(Sha256::digest(&h.signed.bytes)),
            blocks: None,
            rollout: Rollout {
                canary: None,
                start: channel::now(),
                hours: 0,
            },
        });
    }
    let mut meta = Metadata {
        format: channel::FORMAT,
        channel: channel_name.to_string(),
        sequence: 1,
        issued_at: channel::now(),
        expires_at: channel::now() + 86_400,
        releases,
    };
    edit(&mut meta);
    let path = channel::channel_path(repo, channel_name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, SignedChannel::sign(&meta, &[key]).to_bytes()).unwrap();
}

/// A private `dbus-daemon` (session configuration: anyone may own any
/// name) on a socket in a temporary directory, stopped by its PID on drop.
/// Stands in for the system bus.
pub struct Bus {
    child: std::process::Child,
    /// `unix:path=…`.
    pub address: String,
    _dir: tempfile::TempDir,
}

impl Bus {
    /// Starts the daemon and waits for its socket.
    pub fn start() -> Bus {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("bus");
        let address = format!("unix:path={}", sock.display());
        let child = Command::new("dbus-daemon")
            .args(["--session", "--nofork", "--nopidfile", "--address"])
            .arg(&address)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("dbus-daemon (Debian package dbus-daemon)");
        let t = std::time::Instant::now();
        while !sock.exists() {
            assert!(t.elapsed().as_secs() < 10, "dbus-daemon did not start");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Bus {
            child,
            address,
            _dir: dir,
        }
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the logind test double was asked and what it lists.
#[derive(Default)]
pub struct LogindState {
    /// Reboot calls received.
    pub reboots: u32,
    /// Inhibitor locks it lists: (what, who, why, mode, uid, pid).
    pub inhibitors: Vec<(String, String, String, String, u32, u32)>,
}

/// A test double for systemd-logind's `org.freedesktop.login1.Manager`,
/// only its `ListInhibitors` and `Reboot` methods, on the private bus: it
/// records reboots instead of rebooting.
pub struct FakeLogind {
    state: std::sync::Arc<std::sync::Mutex<LogindState>>,
}

#[zbus::interface(name = "org.freedesktop.login1.Manager")]
impl FakeLogind {
    fn list_inhibitors(&self) -> Vec<(String, String, String, String, u32, u32)> {
        self.state.lock().unwrap().inhibitors.clone()
    }
    fn reboot(&self, _interactive: bool) {
        self.state.lock().unwrap().reboots += 1;
    }
}

/// Serves a [`FakeLogind`] on `bus`; the connection must be kept alive.
pub fn fake_logind(
    bus: &Bus,
) -> (
    zbus::blocking::Connection,
    std::sync::Arc<std::sync::Mutex<LogindState>>,
) {
    let state = std::sync::Arc::new(std::sync::Mutex::new(LogindState::default()));
    let conn = zbus::blocking::connection::Builder::address(bus.address.as_str())
        .unwrap()
        .name("org.freedesktop.login1")
        .unwrap()
        .serve_at(
            "/org/freedesktop/login1",
            FakeLogind {
                state: std::sync::Arc::clone(&state),
            },
        )
        .unwrap()
        .build()
        .unwrap();
    (conn, state)
}

/// What the systemd test double was asked and how its jobs end.
pub struct SystemdState {
    /// `StartUnit` calls: (unit, mode).
    pub started: Vec<(String, String)>,
    /// The result every job ends with (`done`, `dependency`, `failed`).
    pub result: String,
    /// Units the target requires, and whether each is `failed`.
    pub requires: Vec<(String, bool)>,
    /// Logind's reboot count when each job was started (the order check).
    pub reboots_seen: Vec<u32>,
}

/// A test double for systemd's `org.freedesktop.systemd1.Manager` on the
/// private bus: `Subscribe`, `StartUnit` (ends each job at once with the
/// configured result, signalled by `JobRemoved`) and `LoadUnit`, and the
/// `Requires`/`Wants`/`ActiveState` properties of the units it knows. It
/// runs nothing.
pub struct FakeSystemd {
    state: std::sync::Arc<std::sync::Mutex<SystemdState>>,
    logind: std::sync::Arc<std::sync::Mutex<LogindState>>,
    jobs: u32,
}

/// A unit's object as the double serves it.
pub struct FakeUnit {
    requires: Vec<String>,
    failed: bool,
}

#[zbus::interface(name = "org.freedesktop.systemd1.Unit")]
impl FakeUnit {
    #[zbus(property)]
    fn requires(&self) -> Vec<String> {
        self.requires.clone()
    }
    #[zbus(property)]
    fn wants(&self) -> Vec<String> {
        Vec::new()
    }
    #[zbus(property)]
    fn active_state(&self) -> String {
        if self.failed { "failed" } else { "inactive" }.into()
    }
}

fn unit_path(name: &str) -> String {
    let mut p = String::from("/org/freedesktop/systemd1/unit/");
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() {
            p.push(b as char);
        } else {
            p.push_str(&format!("_{b:02x}"));
        }
    }
    p
}

#[zbus::interface(name = "org.freedesktop.systemd1.Manager")]
impl FakeSystemd {
    fn subscribe(&self) {}

    async fn start_unit(
        &mut self,
        name: String,
        mode: String,
        #[zbus(signal_emitter)] emitter: zbus::object_server::SignalEmitter<'_>,
    ) -> zbus::zvariant::OwnedObjectPath {
        self.jobs += 1;
        let job = zbus::zvariant::OwnedObjectPath::try_from(format!(
            "/org/freedesktop/systemd1/job/{}",
            self.jobs
        ))
        .unwrap();
        let result = {
            let mut s = self.state.lock().unwrap();
            s.started.push((name.clone(), mode));
            let reboots = self.logind.lock().unwrap().reboots;
            s.reboots_seen.push(reboots);
            s.result.clone()
        };
        let _ = FakeSystemd::job_removed(&emitter, self.jobs, job.clone(), name, result).await;
        job
    }

    fn load_unit(&self, name: String) -> zbus::zvariant::OwnedObjectPath {
        zbus::zvariant::OwnedObjectPath::try_from(unit_path(&name)).unwrap()
    }

    #[zbus(signal)]
    async fn job_removed(
        emitter: &zbus::object_server::SignalEmitter<'_>,
        id: u32,
        job: zbus::zvariant::OwnedObjectPath,
        unit: String,
        result: String,
    ) -> zbus::Result<()>;
}

/// Serves a [`FakeSystemd`] on `bus` whose `target` requires the units in
/// `requires` (name, failed); jobs end with `result`.
pub fn fake_systemd(
    bus: &Bus,
    logind: &std::sync::Arc<std::sync::Mutex<LogindState>>,
    target: &str,
    requires: &[(&str, bool)],
    result: &str,
) -> (
    zbus::blocking::Connection,
    std::sync::Arc<std::sync::Mutex<SystemdState>>,
) {
    let state = std::sync::Arc::new(std::sync::Mutex::new(SystemdState {
        started: Vec::new(),
        result: result.into(),
        requires: requires.iter().map(|(n, f)| (n.to_string(), *f)).collect(),
        reboots_seen: Vec::new(),
    }));
    let mut b = zbus::blocking::connection::Builder::address(bus.address.as_str())
        .unwrap()
        .name("org.freedesktop.systemd1")
        .unwrap()
        .serve_at(
            "/org/freedesktop/systemd1",
            FakeSystemd {
                state: std::sync::Arc::clone(&state),
                logind: std::sync::Arc::clone(logind),
                jobs: 0,
            },
        )
        .unwrap()
        .serve_at(
            unit_path(target),
            FakeUnit {
                requires: requires.iter().map(|(n, _)| n.to_string()).collect(),
                failed: false,
            },
        )
        .unwrap();
    for (n, failed) in requires {
        b = b
            .serve_at(
                unit_path(n),
                FakeUnit {
                    requires: Vec::new(),
                    failed: *failed,
                },
            )
            .unwrap();
    }
    (b.build().unwrap(), state)
}

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpListener;

use drover_update_agent::fleet::{Acquired, Lock as _};

/// Stands in for a FleetLock server (airlock): the protocol as its text
/// says (POST, the `fleet-lock-protocol: true` header, `client_params`,
/// `{"kind","value"}` error bodies), its semaphore in etcd through
/// Drover's own etcd lock, one group per request. `fail` makes it answer
/// 500 with no body, as a broken server.
pub struct FleetLockServer {
    port: u16,
    /// Every request: its line and body.
    pub requests: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    /// Answer 500 with no body.
    pub fail: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl FleetLockServer {
    /// Serves on a loopback port, the semaphore in etcd at `endpoints`.
    pub fn start(endpoints: Vec<String>) -> FleetLockServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let fail = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (log, broken) = (requests.clone(), fail.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut r = BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                let (mut len, mut header) = (0usize, false);
                loop {
                    let mut h = String::new();
                    r.read_line(&mut h).unwrap();
                    let h = h.trim_end().to_ascii_lowercase();
                    if h.is_empty() {
                        break;
                    }
                    if let Some(v) = h.strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap();
                    }
                    if h == "fleet-lock-protocol: true" {
                        header = true;
                    }
                }
                let mut body = vec![0; len];
                r.read_exact(&mut body).unwrap();
                let body = String::from_utf8(body).unwrap();
                log.lock()
                    .unwrap()
                    .push(format!("{} {body}", line.trim_end()));
                let reply = |status: &str, json: &str| {
                    format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{json}",
                        json.len()
                    )
                };
                let answer = if broken.load(std::sync::atomic::Ordering::SeqCst) {
                    "HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_string()
                } else if !line.starts_with("POST ") {
                    reply(
                        "405 Method Not Allowed",
                        r#"{"kind":"method_not_allowed","value":"POST only"}"#,
                    )
                } else if !header {
                    reply(
                        "400 Bad Request",
                        r#"{"kind":"missing_header","value":"fleet-lock-protocol"}"#,
                    )
                } else {
                    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                    let (id, group) = (
                        v["client_params"]["id"].as_str().unwrap_or("").to_string(),
                        v["client_params"]["group"]
                            .as_str()
                            .unwrap_or("")
                            .to_string(),
                    );
                    let lock = etcd_lock(endpoints.clone(), &group);
                    if id.is_empty() || group.is_empty() {
                        reply(
                            "400 Bad Request",
                            r#"{"kind":"bad_request","value":"client_params"}"#,
                        )
                    } else if line.starts_with("POST /v1/pre-reboot ") {
                        match lock.acquire(&id).unwrap() {
                            Acquired::Held => reply("200 OK", r#"{"kind":"ok","value":""}"#),
                            Acquired::Refused(why) => reply(
                                "409 Conflict",
                                &serde_json::json!({"kind": "failed_lock", "value": why})
                                    .to_string(),
                            ),
                        }
                    } else if line.starts_with("POST /v1/steady-state ") {
                        lock.release(&id).unwrap();
                        reply("200 OK", r#"{"kind":"ok","value":""}"#)
                    } else {
                        reply(
                            "404 Not Found",
                            r#"{"kind":"not_found","value":"no such endpoint"}"#,
                        )
                    }
                };
                let _ = conn.write_all(answer.as_bytes());
            }
        });
        FleetLockServer {
            port,
            requests,
            fail,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// The agent's etcd lock of `group` on plain-HTTP `endpoints` (no TLS).
pub fn etcd_lock(
    endpoints: Vec<String>,
    group: &str,
) -> drover_update_agent::fleet::etcd::EtcdLock {
    drover_update_agent::fleet::etcd::EtcdLock::new(&drover_core::agent_config::EtcdLock {
        endpoints,
        ca: None,
        cert: None,
        key: None,
        group: group.into(),
    })
    .unwrap()
}
