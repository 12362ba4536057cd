//! drover-agent as a process on a private D-Bus (dbus-daemon started by the
//! test), with nginx serving the channel, a disk image as the node's disk
//! and a boot record standing for what drover-boot hands on. logind is a
//! test double on the same bus that records reboots.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use drover_core::SlotId;

mod common;
use common::*;
use drover_test_support::{set_bits, write_slot};

/// The machine-id every test agent reads.
const MACHINE_ID: &str = "0b5e8d1c7a9f4e2d8c6b4a2f1e3d5c7b";

struct Agent {
    child: Child,
    bus: String,
    metrics: u16,
    log: PathBuf,
}

impl Agent {
    /// Starts drover-agent for `disk`, booted from `slot` running `version`.
    fn start(fx: &Fx, bus: &Bus, disk: &Path, slot: SlotId, version: &str, extra: &str) -> Agent {
        Agent::start_as(fx, bus, disk, slot, version, extra, MACHINE_ID)
    }

    /// [`Agent::start`] with another machine-id.
    fn start_as(
        fx: &Fx,
        bus: &Bus,
        disk: &Path,
        slot: SlotId,
        version: &str,
        extra: &str,
        machine_id: &str,
    ) -> Agent {
        let dir = fx.p(&format!("agent-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("conf.d")).unwrap();
        let record = dir.join("boot-record.json");
        std::fs::write(
            &record,
            serde_json::json!({
                "slot": slot.label(), "decision": "candidate", "version": version,
                "refused": [], "measured": false, "not_measured_reason": "no TPM device",
                "pcr": 8, "banks": [], "events": []
            })
            .to_string(),
        )
        .unwrap();
        let metrics = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let conf = format!(
            "channel = \"stable\"\nauto-update = false\npoll-interval-secs = 3600\n\
             trusted-keys = [\"{}\"]\nstate-dir = \"{}\"\ndisk = \"{}\"\nboot-record = \"{}\"\n\
             bus = \"{}\"\nmetrics-listen = \"127.0.0.1:{metrics}\"\n",
            fx.p("release.pub.pem").display(),
            fx.p("state").display(),
            disk.display(),
            record.display(),
            bus.address,
        );
        std::fs::write(dir.join("conf.d/10-test.toml"), conf).unwrap();
        // The test's own settings override the base ones, as a node's
        // drop-ins do.
        std::fs::write(dir.join("conf.d/20-test-extra.toml"), extra).unwrap();
        let log = dir.join("agent.log");
        std::fs::write(dir.join("machine-id"), format!("{machine_id}\n")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_drover-agent"))
            .arg("--machine-id-file")
            .arg(dir.join("machine-id"))
            .arg("--config")
            .arg(dir.join("none.toml"))
            .arg("--config-dir")
            .arg(dir.join("conf.d"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut a = Agent {
            child,
            bus: bus.address.clone(),
            metrics,
            log,
        };
        let t = Instant::now();
        loop {
            if a.ctl(&["status", "--json"]).0 {
                return a;
            }
            if let Some(st) = a.child.try_wait().unwrap() {
                panic!("drover-agent exited ({st}):\n{}", a.log());
            }
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "no agent on the bus:\n{}",
                a.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn ctl(&self, args: &[&str]) -> (bool, String) {
        // `timeout`: a hang fails the test instead of stalling the run.
        let o = Command::new("timeout")
            .arg("120")
            .arg(env!("CARGO_BIN_EXE_droverctl"))
            .arg("--bus")
            .arg(&self.bus)
            .args(args)
            .output()
            .unwrap();
        let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
        s.push_str(&String::from_utf8_lossy(&o.stderr));
        (o.status.success(), s)
    }

    fn status(&self) -> serde_json::Value {
        let (ok, out) = self.ctl(&["status", "--json"]);
        assert!(ok, "{out}");
        serde_json::from_str(out.trim()).unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn metrics(&self) -> String {
        use std::io::{Read as _, Write as _};
        let mut c = std::net::TcpStream::connect(("127.0.0.1", self.metrics)).unwrap();
        c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut s = String::new();
        c.read_to_string(&mut s).unwrap();
        s
    }

    fn wait_until(&self, what: &str, f: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let t = Instant::now();
        loop {
            let s = self.status();
            if f(&s) {
                return s;
            }
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "{what}: status is {s:#}\nagent log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_for(what: &str, f: impl Fn() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < Duration::from_secs(30), "{what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn update_through_dbus_writes_the_slot_and_reboots_through_logind() {
    let fx = Fx::new();
    let v1 = fx.payload("v1.img", "1.0.0", 1, 4, &fx.key);
    let v2 = fx.payload("v2.img", "1.1.0", 1, 6, &fx.key);
    let repo = fx.p("repo");
    publish(&repo, "stable", &[&v1, &v2], &fx.key, |_| {});
    let web = Nginx::serve(&repo, None);
    let disk = fx.disk(&v1);
    let bus = Bus::start();
    let (_logind_conn, logind) = fake_logind(&bus);
    let agent = Agent::start(
        &fx,
        &bus,
        &disk,
        SlotId::A,
        "1.0.0",
        &format!("server = \"{}\"", web.url()),
    );
    let s = agent.status();
    assert_eq!(s["booted"]["slot"], "USR-A");
    assert_eq!(s["operation"], "idle");
    assert_eq!(s["other"]["state"], "empty");

    let (ok, out) = agent.ctl(&["check", "--json"]);
    assert!(ok, "{out}");
    let c: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(c["verdict"]["result"], "available");
    assert_eq!(c["verdict"]["version"], "1.1.0");

    let (ok, out) = agent.ctl(&["update", "--json"]);
    assert!(ok, "{out}\n{}", agent.log());
    assert!(out.contains("1.1.0 written"), "{out}");
    let payload = std::fs::read(&v2).unwrap();
    assert_eq!(&slot_bytes(&disk, SlotId::B)[..payload.len()], &payload[..]);
    assert_eq!(bits(&disk, SlotId::B), (2, 1, false));
    wait_for("no reboot asked of logind", || {
        logind.lock().unwrap().reboots == 1
    });
    let s = agent.status();
    assert_eq!(s["operation"], "rebooting");
    assert_eq!(s["other"]["state"], "staged");
    assert_eq!(s["other"]["version"], "1.1.0");
    let m = agent.metrics();
    assert!(
        m.contains("drover_booted_info{slot=\"USR-A\",version=\"1.0.0\""),
        "{m}"
    );
    assert!(
        m.contains("drover_update_operation{operation=\"rebooting\"} 1"),
        "{m}"
    );
    assert!(m.contains("drover_last_check_timestamp_seconds "), "{m}");
    assert!(
        agent.log().contains("update written and verified"),
        "{}",
        agent.log()
    );
}

#[test]
fn a_shutdown_inhibitor_holds_the_reboot_until_it_is_released() {
    let fx = Fx::new();
    let v1 = fx.payload("v1.img", "1.0.0", 1, 4, &fx.key);
    let v2 = fx.payload("v2.img", "1.1.0", 1, 6, &fx.key);
    let repo = fx.p("repo");
    publish(&repo, "stable", &[&v2], &fx.key, |_| {});
    let web = Nginx::serve(&repo, None);
    let disk = fx.disk(&v1);
    let bus = Bus::start();
    let (_c, logind) = fake_logind(&bus);
    logind.lock().unwrap().inhibitors.push((
        "shutdown:sleep".into(),
        "etcd".into(),
        "compacting".into(),
        "block".into(),
        0,
        4242,
    ));
    let agent = Agent::start(
        &fx,
        &bus,
        &disk,
        SlotId::A,
        "1.0.0",
        &format!("server = \"{}\"", web.url()),
    );
    let (ok, out) = agent.ctl(&["update"]);
    assert!(ok, "{out}");
    let s = agent.wait_until("reboot pending", |s| s["operation"] == "reboot-pending");
    assert!(
        s["reboot-blocked"]
            .as_str()
            .unwrap_or("")
            .contains("etcd (pid 4242)"),
        "{s:#}"
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        logind.lock().unwrap().reboots,
        0,
        "rebooted through an inhibitor"
    );
    logind.lock().unwrap().inhibitors.clear();
    wait_for("no reboot after the inhibitor went", || {
        logind.lock().unwrap().reboots == 1
    });
}

#[test]
fn a_failed_update_is_detected_after_boot_marked_and_not_installed_again() {
    let fx = Fx::new();
    let v1 = fx.payload("v1.img", "1.0.0", 1, 4, &fx.key);
    let v2 = fx.payload("v2.img", "1.1.0", 1, 6, &fx.key);
    let repo = fx.p("repo");
    publish(&repo, "stable", &[&v2], &fx.key, |_| {});
    let web = Nginx::serve(&repo, None);
    let disk = fx.disk(&v1);
    // 1.1.0 was written to B and chosen; its one try was used up without
    // success, and the stage fell back to A.
    write_slot(&disk, SlotId::B, &v2);
    set_bits(&disk, SlotId::B, 2, 0, false);
    std::fs::create_dir_all(fx.p("state")).unwrap();
    std::fs::write(
        fx.p("state/agent-state.json"),
        r#"{"pending": {"version": "1.1.0", "slot": "USR-B", "from-version": "1.0.0"}}"#,
    )
    .unwrap();
    let bus = Bus::start();
    let (_c, logind) = fake_logind(&bus);
    let agent = Agent::start(
        &fx,
        &bus,
        &disk,
        SlotId::A,
        "1.0.0",
        &format!("server = \"{}\"", web.url()),
    );
    let s = agent.status();
    assert_eq!(s["last-rollback"]["from-version"], "1.1.0", "{s:#}");
    assert_eq!(s["last-rollback"]["to-version"], "1.0.0");
    assert_eq!(s["last-rollback"]["manual"], false);
    assert_eq!(s["failed-versions"][0], "1.1.0");
    assert_eq!(
        bits(&disk, SlotId::B).0,
        0,
        "the failed slot keeps a priority"
    );
    assert!(agent.log().contains("ROLLBACK"), "{}", agent.log());
    // Never again on its own.
    let (ok, out) = agent.ctl(&["check", "--json"]);
    assert!(ok, "{out}");
    let c: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(c["verdict"]["result"], "up-to-date", "{c:#}");
    assert_eq!(c["skipped"][0][0], "1.1.0");
    let (ok, out) = agent.ctl(&["update"]);
    assert!(ok, "{out}");
    assert!(out.contains("up to date"), "{out}");
    assert_eq!(logind.lock().unwrap().reboots, 0);
    let (ok, out) = agent.ctl(&["status"]);
    assert!(ok && out.contains("automatic from 1.1.0 to 1.0.0"), "{out}");
    // Until an operator allows it again; an unknown version is refused.
    let (ok, out) = agent.ctl(&["forget-failed", "9.9.9"]);
    assert!(
        !ok && out.contains("9.9.9 is not among the versions that failed here (1.1.0)"),
        "{out}"
    );
    let (ok, out) = agent.ctl(&["forget-failed", "1.1.0"]);
    assert!(ok, "{out}");
    assert_eq!(agent.status()["failed-versions"], serde_json::json!([]));
    let (ok, out) = agent.ctl(&["check", "--json"]);
    assert!(ok, "{out}");
    let c: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(c["verdict"]["version"], "1.1.0", "{c:#}");
    assert_eq!(c["skipped"], serde_json::json!([]));
}

/// A disk where B runs 1.1.0 (successful) and A still holds the good
/// 1.0.0: a machine a manual rollback can take back.
fn updated_disk(fx: &Fx) -> PathBuf {
    let v1 = fx.payload("v1.img", "1.0.0", 1, 4, &fx.key);
    let v2 = fx.payload("v2.img", "1.1.0", 1, 6, &fx.key);
    let disk = fx.disk(&v1);
    write_slot(&disk, SlotId::B, &v2);
    set_bits(&disk, SlotId::B, 2, 0, true);
    set_bits(&disk, SlotId::A, 1, 0, true);
    disk
}

#[test]
fn manual_rollback_through_dbus_reboots_into_the_previous_slot() {
    let fx = Fx::new();
    let disk = updated_disk(&fx);
    let bus = Bus::start();
    let (_c, logind) = fake_logind(&bus);
    let agent = Agent::start(&fx, &bus, &disk, SlotId::B, "1.1.0", "");
    assert_eq!(agent.status()["other"]["state"], "good");
    let (ok, out) = agent.ctl(&["rollback", "--reboot"]);
    assert!(ok, "{out}");
    assert!(out.contains("USR-A boots next"), "{out}");
    assert_eq!(bits(&disk, SlotId::A), (2, 0, true));
    assert_eq!(bits(&disk, SlotId::B), (1, 0, true));
    wait_for("no reboot", || logind.lock().unwrap().reboots == 1);
    let s = agent.status();
    assert_eq!(s["last-rollback"]["manual"], true);
    assert_eq!(s["last-rollback"]["from-version"], "1.1.0");
    assert_eq!(s["last-rollback"]["to-version"], "1.0.0");
}

#[test]
fn cancel_stops_the_write_and_leaves_the_slot_unbootable() {
    let fx = Fx::new();
    let v1 = fx.payload("v1.img", "1.0.0", 1, 4, &fx.key);
    let v2 = fx.payload("v2.img", "1.1.0", 1, 100, &fx.key);
    let repo = fx.p("repo");
    publish(&repo, "stable", &[&v2], &fx.key, |_| {});
    let web = Nginx::serve(&repo, Some("10m"));
    let disk = fx.disk_with(&v1, 128);
    let a_before = slot_bytes(&disk, SlotId::A);
    let bus = Bus::start();
    let (_c, logind) = fake_logind(&bus);
    let agent = Agent::start(
        &fx,
        &bus,
        &disk,
        SlotId::A,
        "1.0.0",
        &format!("server = \"{}\"", web.url()),
    );
    let bus_addr = bus.address.clone();
    let upd = std::thread::spawn(move || {
        let o = Command::new("timeout")
            .arg("120")
            .arg(env!("CARGO_BIN_EXE_droverctl"))
            .args(["--bus", &bus_addr, "update", "--json"])
            .output()
            .unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr),
        )
    });
    agent.wait_until("applying with progress", |s| {
        s["operation"] == "applying" && s["progress"][0].as_u64().unwrap_or(0) > 0
    });
    let (ok, out) = agent.ctl(&["cancel"]);
    assert!(ok, "{out}");
    let (ok, out) = upd.join().unwrap();
    assert!(!ok && out.contains("cancelled"), "{out}");
    assert_eq!(slot_bytes(&disk, SlotId::A), a_before);
    assert_eq!(bits(&disk, SlotId::B).0, 0);
    assert_eq!(logind.lock().unwrap().reboots, 0);
    assert_eq!(agent.status()["operation"], "idle");
}

/// A manual rollback that arrives while the agent checks the channel waits
/// for the check instead of being refused as "an update is running" (the
/// QEMU life-cycle test lost a rollback to a routine poll that way).
#[test]
fn a_rollback_during_a_check_of_the_channel_waits_for_it() {
    let fx = Fx::new();
    let disk = updated_disk(&fx);
    // Test double for a channel server that hangs: it accepts and never
    // answers, so a check lasts the agent's stall timeout (10 s: long
    // enough for the test to see the check under way on a loaded machine;
    // with 3 s it sometimes ended before the test looked).
    let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = hung.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in hung.incoming().flatten() {
            held.push(c);
        }
    });
    let bus = Bus::start();
    let (_c, _logind) = fake_logind(&bus);
    let agent = Agent::start(
        &fx,
        &bus,
        &disk,
        SlotId::B,
        "1.1.0",
        &format!("server = \"http://127.0.0.1:{port}/\"\ndownload-stall-timeout-secs = 10"),
    );
    std::thread::scope(|s| {
        // `droverctl update` checks the channel under the agent's work lock,
        // as the agent's own polls do.
        let check = s.spawn(|| agent.ctl(&["update"]));
        agent.wait_until("a check under way", |st| st["operation"] == "checking");
        let (ok, out) = agent.ctl(&["rollback"]);
        assert!(ok, "the rollback was refused during a check: {out}");
        assert!(out.contains("USR-A boots next"), "{out}");
        let (ok, out) = check.join().unwrap();
        assert!(!ok, "an update from a hung server passed: {out}");
    });
    assert_eq!(bits(&disk, SlotId::A), (2, 0, true));
}

/// `droverctl lock ARGS --etcd ENDPOINTS`.
fn lock_ctl(etcd: &drover_qemu_tests::etcd::Etcd, args: &[&str]) -> (bool, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_droverctl"))
        .arg("lock")
        .args(args)
        .arg("--etcd")
        .arg(etcd.endpoints().join(","))
        .output()
        .unwrap();
    let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
    s.push_str(&String::from_utf8_lossy(&o.stderr));
    (o.status.success(), s)
}

fn etcd_lock_config(web: &Nginx, etcd: &drover_qemu_tests::etcd::Etcd, extra: &str) -> String {
    format!(
        "server = \"{}\"\n{extra}\n[reboot]\nstrategy = \"etcd-lock\"\n[reboot.etcd]\nendpoints = {:?}\n",
        web.url(),
        etcd.endpoints()
    )
}

#[test]
fn the_etcd_lock_holds_the_reboot_until_a_slot_frees_and_is_given_back_once_confirmed() {
    let etcd = drover_qemu_tests::etcd::Etcd::start(1);
    let fx = Fx::new();
    let v1 = fx.payload("v1.img", "1.0.0", 1, 4, &fx.key);
    let v2 = fx.payload("v2.img", "1.1.0", 1, 6, &fx.key);
    let repo = fx.p("repo");
    publish(&repo, "stable", &[&v2], &fx.key, |_| {});
    let web = Nginx::serve(&repo, None);
    let disk = fx.disk(&v1);
    let bus = Bus::start();
    let (_c, logind) = fake_logind(&bus);
    // Another node is rebooting: the group's one slot is taken.
    let (ok, out) = lock_ctl(&etcd, &["acquire", "--id", "other-node"]);
    assert!(ok, "{out}");
    let agent = Agent::start(
        &fx,
        &bus,
        &disk,
        SlotId::A,
        "1.0.0",
        &etcd_lock_config(&web, &etcd, ""),
    );
    let (ok, out) = agent.ctl(&["update"]);
    assert!(ok, "{out}");
    let s = agent.wait_until("waiting for the lock", |s| {
        s["reboot-blocked"]
            .as_str()
            .unwrap_or("")
            .contains("other-node")
    });
    assert_eq!(s["operation"], "reboot-pending", "{s:#}");
    assert!(
        s["reboot-blocked"]
            .as_str()
            .unwrap()
            .contains("the reboot lock is full"),
        "{s:#}"
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        logind.lock().unwrap().reboots,
        0,
        "rebooted without the lock"
    );

    // The other node is done: this one takes the slot (after its backoff)
    // and reboots, holding it.
    let (ok, out) = lock_ctl(&etcd, &["release", "--id", "other-node"]);
    assert!(ok, "{out}");
    wait_for("no reboot once the lock was free", || {
        logind.lock().unwrap().reboots == 1
    });
    let id = drover_update_agent::fleet::node_id(MACHINE_ID);
    let (ok, out) = lock_ctl(&etcd, &["status", "--json"]);
    assert!(ok, "{out}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["holders"][0]["id"], id.as_str(), "{v:#}");
    assert!(!out.contains(MACHINE_ID), "the machine-id itself was sent");
    let state = std::fs::read_to_string(fx.p("state/agent-state.json")).unwrap();
    assert!(
        state.contains(&id),
        "the held lock is not remembered: {state}"
    );
    assert!(
        agent.log().contains("took the reboot lock"),
        "{}",
        agent.log()
    );
    drop(agent);

    // After the reboot: B booted and was marked successful. The agent
    // confirms the update and gives the slot back.
    set_bits(&disk, SlotId::B, 2, 0, true);
    let agent = Agent::start(
        &fx,
        &bus,
        &disk,
        SlotId::B,
        "1.1.0",
        &etcd_lock_config(&web, &etcd, ""),
    );
    wait_for("the lock was not given back", || {
        let (_, out) = lock_ctl(&etcd, &["status", "--json"]);
        out.contains("\"holders\":[]")
    });
    // The agent logs it and forgets the lock after etcd has it back.
    wait_for("no 'gave back the reboot lock' in the agent's log", || {
        agent.log().contains("gave back the reboot lock")
    });
    wait_for("the state still names the lock", || {
        !std::fs::read_to_string(fx.p("state/agent-state.json"))
            .unwrap()
            .contains(&id)
    });
}

#[test]
fn a_rollback_is_counted_in_etcd_and_a_release_that_failed_often_enough_is_halted() {
    let etcd = drover_qemu_tests::etcd::Etcd::start(1);
    let fx = Fx::new();
    let v1 = fx.payload("v1.img", "1.0.0", 1, 4, &fx.key);
    let v2 = fx.payload("v2.img", "1.1.0", 1, 6, &fx.key);
    let v3 = fx.payload("v3.img", "1.2.0", 1, 5, &fx.key);
    let repo = fx.p("repo");
    publish(&repo, "stable", &[&v2, &v3], &fx.key, |_| {});
    let web = Nginx::serve(&repo, None);
    let disk = fx.disk(&v1);
    // Two other nodes failed to boot 1.2.0.
    let store = etcd_lock(etcd.endpoints(), "default");
    use drover_update_agent::fleet::Lock as _;
    store.record_failure("1.2.0", "n1").unwrap();
    store.record_failure("1.2.0", "n2").unwrap();
    // This node failed 1.1.0: it was written to B, its try used up, and
    // the stage fell back to A; the node held the lock for that reboot.
    let id = drover_update_agent::fleet::node_id(MACHINE_ID);
    let (ok, out) = lock_ctl(&etcd, &["acquire", "--id", &id]);
    assert!(ok, "{out}");
    write_slot(&disk, SlotId::B, &v2);
    set_bits(&disk, SlotId::B, 2, 0, false);
    std::fs::create_dir_all(fx.p("state")).unwrap();
    std::fs::write(
        fx.p("state/agent-state.json"),
        serde_json::json!({
            "pending": {"version": "1.1.0", "slot": "USR-B", "from-version": "1.0.0"},
            "lock": {"lock": "etcd", "id": id, "since": 1},
        })
        .to_string(),
    )
    .unwrap();
    let bus = Bus::start();
    let (_c, logind) = fake_logind(&bus);
    let agent = Agent::start(
        &fx,
        &bus,
        &disk,
        SlotId::A,
        "1.0.0",
        &etcd_lock_config(&web, &etcd, "halt-after-failures = 2"),
    );
    // The rollback is counted fleet-wide, then the lock given back.
    wait_for(
        "the failed boot was not counted, or the lock not given back",
        || {
            let (_, out) = lock_ctl(&etcd, &["status", "--json"]);
            out.contains("\"holders\":[]") && out.contains("\"1.1.0\"")
        },
    );
    let (ok, out) = lock_ctl(&etcd, &["status"]);
    assert!(
        ok && out.contains("failed boots of 1.1.0: 1 node(s) (default: 1)"),
        "{out}"
    );
    assert!(out.contains("failed boots of 1.2.0: 2 node(s)"), "{out}");
    // 1.2.0 is newest, but halted: the agent does not start it.
    let (ok, out) = agent.ctl(&["check", "--json"]);
    assert!(ok, "{out}");
    let c: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(c["verdict"]["result"], "halted", "{c:#}");
    assert_eq!(c["verdict"]["version"], "1.2.0");
    assert_eq!(c["verdict"]["failures"], 2);
    let (ok, out) = agent.ctl(&["update"]);
    assert!(ok, "{out}");
    assert_eq!(logind.lock().unwrap().reboots, 0);
    assert!(
        agent.status()["other"]["version"] == "1.1.0",
        "the halted release was written"
    );
    let (ok, out) = agent.ctl(&["status"]);
    assert!(ok && out.contains("1.2.0 is HALTED: 2 node(s)"), "{out}");
    let m = agent.metrics();
    assert!(
        m.contains("drover_release_halted{version=\"1.2.0\"} 1"),
        "{m}"
    );
    assert!(m.contains("drover_reboot_lock_held 0"), "{m}");
    // The operator lifts the halt.
    let (ok, out) = lock_ctl(&etcd, &["clear-failures", "1.2.0"]);
    assert!(ok, "{out}");
    let (ok, out) = agent.ctl(&["check", "--json"]);
    assert!(ok, "{out}");
    let c: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(c["verdict"]["result"], "available", "{c:#}");
    assert_eq!(c["verdict"]["version"], "1.2.0");
}

#[test]
fn waves_hold_the_nodes_after_the_rollouts_progress_and_let_those_before_it_update() {
    use drover_core::channel::Rollout;
    // A rollout that began 5 h ago over 10 h: half the fleet's turn has come.
    let now = drover_core::channel::now();
    let rollout = Rollout {
        canary: None,
        start: now - 5 * 3600,
        hours: 10,
    };
    let id_at = |want: &dyn Fn(f64) -> bool| {
        (0u64..)
            .map(|i| format!("{i:032x}"))
            .find(|m| want(Rollout::wave(m, "1.1.0")))
            .unwrap()
    };
    let early = id_at(&|w| w < 0.4);
    let late = id_at(&|w| w > 0.6);
    let late_turn = rollout.node_start(Rollout::wave(&late, "1.1.0"));
    let mut agents = Vec::new();
    for machine_id in [&early, &late] {
        let fx = Fx::new();
        let v1 = fx.payload("v1.img", "1.0.0", 1, 4, &fx.key);
        let v2 = fx.payload("v2.img", "1.1.0", 1, 6, &fx.key);
        let repo = fx.p("repo");
        publish(&repo, "stable", &[&v2], &fx.key, |m| {
            m.releases[0].rollout = rollout
        });
        let web = Nginx::serve(&repo, None);
        let disk = fx.disk(&v1);
        let bus = Bus::start();
        let (c, logind) = fake_logind(&bus);
        // The timer's poll: auto-update, at once (no jitter).
        let agent = Agent::start_as(
            &fx,
            &bus,
            &disk,
            SlotId::A,
            "1.0.0",
            &format!(
                "server = \"{}\"\nauto-update = true\npoll-jitter-secs = 0\n",
                web.url()
            ),
            machine_id,
        );
        agents.push((agent, logind, c, bus, web, disk, fx));
    }
    // Before the rollout's progress: updated and rebooted on its own.
    let (early_agent, early_logind, ..) = &agents[0];
    wait_for("the early node did not update", || {
        early_logind.lock().unwrap().reboots == 1
    });
    assert_eq!(early_agent.status()["other"]["version"], "1.1.0");
    // After it: waits, says until when, and has written nothing.
    let (late_agent, late_logind, _, _, _, late_disk, _) = &agents[1];
    let s = late_agent.wait_until("the late node did not check", |s| {
        !s["last-verdict"].is_null()
    });
    assert_eq!(s["last-verdict"]["result"], "waiting", "{s:#}");
    assert_eq!(s["last-verdict"]["at"], late_turn, "{s:#}");
    let pct = s["last-verdict"]["wave-percent"].as_u64().unwrap();
    assert!(pct > 60, "{s:#}");
    let (ok, out) = late_agent.ctl(&["status"]);
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!(
            "1.1.0 is rolling out; this node is at {pct} % of the rollout, its turn comes at"
        )),
        "{out}"
    );
    assert_eq!(late_logind.lock().unwrap().reboots, 0);
    assert_eq!(
        bits(late_disk, SlotId::B).0,
        0,
        "the late node wrote the update"
    );
    // An operator's explicit update skips the wave, and says it did.
    let (ok, out) = late_agent.ctl(&["check"]);
    assert!(
        ok && out.contains("`droverctl update` installs it now, ahead of the wave"),
        "{out}"
    );
    let (ok, out) = late_agent.ctl(&["update"]);
    assert!(
        ok && out.contains("1.1.0 written ahead of this node's wave"),
        "{out}"
    );
    wait_for(
        "the late node did not reboot after its explicit update",
        || late_logind.lock().unwrap().reboots == 1,
    );
}

#[test]
fn the_pre_reboot_units_run_before_the_reboot() {
    let fx = Fx::new();
    let v1 = fx.payload("v1.img", "1.0.0", 1, 4, &fx.key);
    let v2 = fx.payload("v2.img", "1.1.0", 1, 6, &fx.key);
    let repo = fx.p("repo");
    publish(&repo, "stable", &[&v2], &fx.key, |_| {});
    let web = Nginx::serve(&repo, None);
    let disk = fx.disk(&v1);
    let bus = Bus::start();
    let (_c, logind) = fake_logind(&bus);
    let (_s, systemd) = fake_systemd(
        &bus,
        &logind,
        "drover-pre-reboot.target",
        &[("drain.service", false)],
        "done",
    );
    let agent = Agent::start(
        &fx,
        &bus,
        &disk,
        SlotId::A,
        "1.0.0",
        &format!("server = \"{}\"", web.url()),
    );
    let (ok, out) = agent.ctl(&["update"]);
    assert!(ok, "{out}");
    wait_for("no reboot", || logind.lock().unwrap().reboots == 1);
    let s = systemd.lock().unwrap();
    assert_eq!(
        s.started,
        vec![(
            "drover-pre-reboot.target".to_string(),
            "replace".to_string()
        )]
    );
    assert_eq!(
        s.reboots_seen,
        vec![0],
        "the target ran after the reboot was asked"
    );
}

#[test]
fn a_failing_pre_reboot_unit_calls_the_reboot_off_and_gives_the_lock_back() {
    let etcd = drover_qemu_tests::etcd::Etcd::start(1);
    let fx = Fx::new();
    let v1 = fx.payload("v1.img", "1.0.0", 1, 4, &fx.key);
    let v2 = fx.payload("v2.img", "1.1.0", 1, 6, &fx.key);
    let repo = fx.p("repo");
    publish(&repo, "stable", &[&v2], &fx.key, |_| {});
    let web = Nginx::serve(&repo, None);
    let disk = fx.disk(&v1);
    let bus = Bus::start();
    let (_c, logind) = fake_logind(&bus);
    let (_s, systemd) = fake_systemd(
        &bus,
        &logind,
        "drover-pre-reboot.target",
        &[("drain.service", true), ("notify.service", false)],
        "dependency",
    );
    let agent = Agent::start(
        &fx,
        &bus,
        &disk,
        SlotId::A,
        "1.0.0",
        &etcd_lock_config(&web, &etcd, ""),
    );
    let (ok, out) = agent.ctl(&["update"]);
    assert!(ok, "{out}");
    let s = agent.wait_until("the failure is not reported", |s| {
        s["reboot-blocked"]
            .as_str()
            .unwrap_or("")
            .contains("pre-reboot")
    });
    let why = s["reboot-blocked"].as_str().unwrap();
    assert!(
        why.contains("drover-pre-reboot.target ended 'dependency': drain.service failed"),
        "{why}"
    );
    assert_eq!(s["operation"], "reboot-pending");
    assert!(s["reboot-lock"].is_null(), "{s:#}");
    assert_eq!(systemd.lock().unwrap().started.len(), 1);
    // The lock was taken for the reboot, and given back when it was called off.
    assert!(
        agent.log().contains("took the reboot lock"),
        "{}",
        agent.log()
    );
    wait_for("no 'the reboot is called off' in the agent's log", || {
        agent.log().contains("the reboot is called off")
    });
    let (ok, out) = lock_ctl(&etcd, &["status", "--json"]);
    assert!(ok && out.contains("\"holders\":[]"), "{out}");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(logind.lock().unwrap().reboots, 0);
    assert_eq!(systemd.lock().unwrap().started.len(), 1, "retried at once");
}

#[test]
fn the_fleetlock_strategy_waits_for_the_server_and_tells_it_when_the_node_is_steady() {
    let etcd = drover_qemu_tests::etcd::Etcd::start(1);
    let server = FleetLockServer::start(etcd.endpoints());
    let fx = Fx::new();
    let v1 = fx.payload("v1.img", "1.0.0", 1, 4, &fx.key);
    let v2 = fx.payload("v2.img", "1.1.0", 1, 6, &fx.key);
    let repo = fx.p("repo");
    publish(&repo, "stable", &[&v2], &fx.key, |_| {});
    let web = Nginx::serve(&repo, None);
    let disk = fx.disk(&v1);
    let bus = Bus::start();
    let (_c, logind) = fake_logind(&bus);
    // A Fedora CoreOS node of the same group is rebooting.
    let (ok, out) = lock_ctl(
        &etcd,
        &["acquire", "--id", "fcos-node", "--group", "workers"],
    );
    assert!(ok, "{out}");
    let conf = format!(
        "server = \"{}\"\n[reboot]\nstrategy = \"fleetlock\"\n[reboot.fleetlock]\nurl = \"{}\"\ngroup = \"workers\"\n",
        web.url(),
        server.url()
    );
    let agent = Agent::start(&fx, &bus, &disk, SlotId::A, "1.0.0", &conf);
    let (ok, out) = agent.ctl(&["update"]);
    assert!(ok, "{out}");
    let s = agent.wait_until("waiting for the lock server", |s| {
        s["reboot-blocked"]
            .as_str()
            .unwrap_or("")
            .contains("failed_lock")
    });
    assert!(
        s["reboot-blocked"].as_str().unwrap().contains("fcos-node"),
        "{s:#}"
    );
    let (ok, out) = lock_ctl(
        &etcd,
        &["release", "--id", "fcos-node", "--group", "workers"],
    );
    assert!(ok, "{out}");
    let t = Instant::now();
    while logind.lock().unwrap().reboots != 1 {
        assert!(
            t.elapsed() < Duration::from_secs(40),
            "no reboot once the server granted the lock:\n{}\n{:#?}",
            agent.log(),
            server.requests.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(agent);
    // Up on 1.1.0 and confirmed: the agent tells the server.
    set_bits(&disk, SlotId::B, 2, 0, true);
    let agent = Agent::start(&fx, &bus, &disk, SlotId::B, "1.1.0", &conf);
    wait_for("no steady-state call", || {
        server
            .requests
            .lock()
            .unwrap()
            .iter()
            .any(|r| r.starts_with("POST /v1/steady-state "))
    });
    // The agent logs once the server answered (the request is seen
    // before that: waiting for the log, not asserting it, avoids a race).
    wait_for("no 'gave back the reboot lock' in the agent's log", || {
        agent.log().contains("gave back the reboot lock")
    });
    let id = drover_update_agent::fleet::node_id(MACHINE_ID);
    let requests = server.requests.lock().unwrap().clone();
    let want = format!(r#"{{"client_params":{{"id":"{id}","group":"workers"}}}}"#);
    assert!(requests.iter().all(|r| r.ends_with(&want)), "{requests:#?}");
    let (ok, out) = lock_ctl(&etcd, &["status", "--group", "workers", "--json"]);
    assert!(ok && out.contains("\"holders\":[]"), "{out}");
}
