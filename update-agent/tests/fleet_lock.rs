//! The reboot lock against a real etcd (Debian's etcd-server, started on
//! loopback ports by the harness): a three-member cluster that loses a
//! member, concurrent acquirers that never exceed the limit, a holder that
//! keeps its slot across a restart, TLS with client certificates, the
//! failure counts, `droverctl lock`; and the FleetLock client against a
//! FleetLock server in test code that keeps its semaphore in the same
//! etcd.

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use drover_core::agent_config::{self, DEFAULT_GROUP};
use drover_qemu_tests::etcd::{Etcd, Tls};
use drover_update_agent::fleet::etcd::EtcdLock;
use drover_update_agent::fleet::fleetlock::FleetLockClient;
use drover_update_agent::fleet::{Acquired, Lock};

mod common;
use common::{etcd_lock, FleetLockServer};

#[test]
fn concurrent_nodes_never_exceed_the_limit_even_when_a_member_dies() {
    let mut etcd = Etcd::start(3);
    let admin = etcd_lock(etcd.endpoints(), "workers");
    assert_eq!(admin.set_max(2).unwrap().max, 2);

    // Eight nodes, each with its own client and the members in its own
    // order, take the lock, hold it a moment, give it back, ten times.
    let inside = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let granted = Arc::new(AtomicUsize::new(0));
    let mut nodes = Vec::new();
    for n in 0..8 {
        let mut eps = etcd.endpoints();
        eps.rotate_left(n % 3);
        let (inside, most, granted) = (inside.clone(), most.clone(), granted.clone());
        nodes.push(std::thread::spawn(move || {
            let lock = etcd_lock(eps, "workers");
            let id = format!("node-{n}");
            let mut done = 0;
            let mut errors = 0;
            while done < 10 {
                match lock.acquire(&id) {
                    Ok(Acquired::Held) => {
                        let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        granted.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(30));
                        inside.fetch_sub(1, Ordering::SeqCst);
                        // A release that fails (the member died under it)
                        // is tried again: the slot must come back.
                        while let Err(e) = lock.release(&id) {
                            errors += 1;
                            assert!(errors < 200, "{id}: {e:#}");
                            std::thread::sleep(Duration::from_millis(50));
                        }
                        done += 1;
                    }
                    Ok(Acquired::Refused(why)) => {
                        assert!(why.contains("full"), "{why}");
                        std::thread::sleep(Duration::from_millis(5 + n as u64));
                    }
                    Err(e) => {
                        // The killed member, before failover settles.
                        errors += 1;
                        assert!(errors < 200, "{id}: {e:#}");
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            }
        }));
    }
    // Kill a member once the nodes are well under way.
    while granted.load(Ordering::SeqCst) < 20 {
        std::thread::sleep(Duration::from_millis(10));
    }
    etcd.kill(1);
    for n in nodes {
        n.join().unwrap();
    }
    assert_eq!(granted.load(Ordering::SeqCst), 80);
    assert!(most.load(Ordering::SeqCst) <= 2, "three holders at once");
    assert_eq!(
        most.load(Ordering::SeqCst),
        2,
        "the limit was never reached: no contention"
    );
    let s = admin.status().unwrap();
    assert_eq!((s.max, s.holders.len()), (2, 0), "{s:?}");
    // The key reads as documented, with etcdctl.
    let kv = etcd.etcdctl_get_prefix("/drover/");
    assert!(
        kv.contains("/drover/reboot-lock/workers") && kv.contains("\"max\":2"),
        "{kv}"
    );
}

#[test]
fn a_holder_keeps_its_slot_across_a_restart_and_others_are_told_who_holds_it() {
    let etcd = Etcd::start(1);
    let before = etcd_lock(etcd.endpoints(), DEFAULT_GROUP);
    assert_eq!(before.acquire("node-a").unwrap(), Acquired::Held);
    // The node reboots: a new client, the same id.
    let after = etcd_lock(etcd.endpoints(), DEFAULT_GROUP);
    assert_eq!(after.acquire("node-a").unwrap(), Acquired::Held);
    assert_eq!(after.status().unwrap().holders.len(), 1);
    match after.acquire("node-b").unwrap() {
        Acquired::Refused(why) => {
            assert!(why.contains("node-a") && why.contains("1 of 1"), "{why}")
        }
        a => panic!("{a:?}"),
    }
    assert!(after.release("node-a").unwrap());
    assert!(!after.release("node-a").unwrap(), "released twice");
    assert_eq!(after.acquire("node-b").unwrap(), Acquired::Held);
}

#[test]
fn tls_with_client_certificates_and_nothing_without_them() {
    let dir = tempfile::tempdir().unwrap();
    let tls = Tls::generate(dir.path());
    let etcd = Etcd::start_with(1, Some(&tls));
    let with = |cert: Option<&(std::path::PathBuf, std::path::PathBuf)>| {
        EtcdLock::new(&agent_config::EtcdLock {
            endpoints: etcd.endpoints(),
            ca: Some(tls.ca.clone()),
            cert: cert.map(|c| c.0.clone()),
            key: cert.map(|c| c.1.clone()),
            group: DEFAULT_GROUP.into(),
        })
        .unwrap()
    };
    assert!(etcd.endpoints()[0].starts_with("https://"));
    let good = with(Some(&tls.client));
    assert_eq!(good.acquire("node-a").unwrap(), Acquired::Held);
    let e = with(None).status().unwrap_err();
    assert!(
        format!("{e:#}").contains("no etcd member answered"),
        "{e:#}"
    );
    let e = with(Some(&tls.stranger)).acquire("node-b").unwrap_err();
    assert!(
        format!("{e:#}").contains("no etcd member answered"),
        "{e:#}"
    );
    // And a server certificate from another CA is refused by the client.
    let wrong_ca = EtcdLock::new(&agent_config::EtcdLock {
        endpoints: etcd.endpoints(),
        ca: Some(dir.path().join("other-ca.pem")),
        cert: Some(tls.client.0.clone()),
        key: Some(tls.client.1.clone()),
        group: DEFAULT_GROUP.into(),
    })
    .unwrap();
    assert!(wrong_ca.status().is_err());
    assert_eq!(good.status().unwrap().holders[0].id, "node-a");
}

#[test]
fn failed_boots_are_counted_once_per_node_per_group_and_cleared() {
    let etcd = Etcd::start(1);
    let a = etcd_lock(etcd.endpoints(), "east");
    let b = etcd_lock(etcd.endpoints(), "west");
    assert_eq!(a.failures("2.0.0").unwrap().unwrap().count(), 0);
    a.record_failure("2.0.0", "n1").unwrap();
    a.record_failure("2.0.0", "n1").unwrap();
    a.record_failure("2.0.0", "n2").unwrap();
    let f = b.record_failure("2.0.0", "n3").unwrap().unwrap();
    assert_eq!(f.count(), 3);
    assert_eq!(f.groups.get("east"), Some(&2));
    assert_eq!(f.groups.get("west"), Some(&1));
    assert_eq!(a.all_failures().unwrap().len(), 1);
    assert!(a.clear_failures("2.0.0").unwrap());
    assert_eq!(a.failures("2.0.0").unwrap().unwrap().count(), 0);
    assert!(!a.clear_failures("2.0.0").unwrap());
}

fn droverctl(args: &[&str]) -> (bool, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_droverctl"))
        .arg("lock")
        .args(args)
        .output()
        .unwrap();
    let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
    s.push_str(&String::from_utf8_lossy(&o.stderr));
    (o.status.success(), s)
}

#[test]
fn droverctl_lock_shows_takes_frees_and_resizes() {
    let etcd = Etcd::start(1);
    let eps = etcd.endpoints().join(",");
    let (ok, out) = droverctl(&["acquire", "--etcd", &eps, "--id", "dead-node"]);
    assert!(ok, "{out}");
    let (ok, out) = droverctl(&["acquire", "--etcd", &eps, "--id", "node-b"]);
    assert!(!ok, "a second holder with max 1: {out}");
    assert!(
        out.contains("dead-node"),
        "the refusal names the holder: {out}"
    );
    let (ok, out) = droverctl(&["status", "--etcd", &eps, "--json"]);
    assert!(ok, "{out}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["group"], "default");
    assert_eq!(v["max"], 1);
    assert_eq!(v["holders"][0]["id"], "dead-node");
    assert!(v["holders"][0]["since"].as_u64().unwrap() > 1_700_000_000);
    // The operator frees a dead node's slot and allows two at once.
    let (ok, out) = droverctl(&["release", "--etcd", &eps, "--id", "dead-node"]);
    assert!(ok && out.contains("gave back"), "{out}");
    let (ok, out) = droverctl(&["set-max", "2", "--etcd", &eps, "--json"]);
    assert!(ok, "{out}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(out.trim()).unwrap()["max"],
        2
    );
    for id in ["node-b", "node-c"] {
        let (ok, out) = droverctl(&["acquire", "--etcd", &eps, "--id", id, "--group", "default"]);
        assert!(ok, "{out}");
    }
    let (ok, out) = droverctl(&["status", "--etcd", &eps]);
    assert!(ok && out.contains("group default: 2 of 2 held"), "{out}");
    // Max 0 pauses the group's reboots.
    let (ok, out) = droverctl(&["set-max", "0", "--etcd", &eps]);
    assert!(
        ok && out.contains("no node of group default reboots"),
        "{out}"
    );
    for id in ["node-b", "node-c"] {
        assert!(droverctl(&["release", "--etcd", &eps, "--id", id]).0);
    }
    let (ok, out) = droverctl(&["acquire", "--etcd", &eps, "--id", "node-d"]);
    assert!(!ok && out.contains("0 of 0"), "{out}");
    // Failures show, and clear.
    etcd_lock(etcd.endpoints(), DEFAULT_GROUP)
        .record_failure("3.1.0", "node-x")
        .unwrap();
    let (ok, out) = droverctl(&["status", "--etcd", &eps]);
    assert!(
        ok && out.contains("failed boots of 3.1.0: 1 node(s) (default: 1)"),
        "{out}"
    );
    let (ok, out) = droverctl(&["clear-failures", "3.1.0", "--etcd", &eps]);
    assert!(ok && out.contains("halt is lifted"), "{out}");
    // Without a server: the agent's configuration is read, and says why not.
    let dir = tempfile::tempdir().unwrap();
    let (ok, out) = droverctl(&[
        "status",
        "--config",
        dir.path().join("none.toml").to_str().unwrap(),
        "--config-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert!(!ok && out.contains("takes no lock"), "{out}");
}

fn fleetlock(url: &str, group: &str) -> FleetLockClient {
    FleetLockClient::new(&agent_config::FleetLock {
        url: url.into(),
        group: group.into(),
    })
    .unwrap()
}

#[test]
fn fleetlock_speaks_the_protocol_and_reports_refusals_and_broken_servers() {
    let etcd = Etcd::start(1);
    let server = FleetLockServer::start(etcd.endpoints());
    let a = fleetlock(&format!("{}/", server.url()), "web");
    assert_eq!(a.acquire("node-a").unwrap(), Acquired::Held);
    assert_eq!(a.acquire("node-a").unwrap(), Acquired::Held, "recursive");
    match a.acquire("node-b").unwrap() {
        Acquired::Refused(why) => {
            assert!(
                why.contains("409") && why.contains("failed_lock") && why.contains("node-a"),
                "{why}"
            )
        }
        x => panic!("{x:?}"),
    }
    // The same semaphore, seen through etcd.
    let kv = etcd.etcdctl_get_prefix("/drover/reboot-lock/web");
    assert!(kv.contains("node-a"), "{kv}");
    assert!(a.release("node-a").unwrap());
    assert_eq!(a.acquire("node-b").unwrap(), Acquired::Held);
    let requests = server.requests.lock().unwrap().clone();
    assert!(
        requests.contains(
            &r#"POST /v1/pre-reboot HTTP/1.1 {"client_params":{"id":"node-a","group":"web"}}"#
                .to_string()
        ),
        "{requests:#?}"
    );
    assert!(
        requests
            .iter()
            .any(|r| r.starts_with("POST /v1/steady-state ")),
        "{requests:#?}"
    );
    // What the protocol cannot do is said, not faked.
    let e = a.status().unwrap_err().to_string();
    assert!(
        e.contains("FleetLock protocol cannot list the holders"),
        "{e}"
    );
    assert_eq!(a.failures("1.0.0").unwrap(), None);
    // A server answering 500 without a body is an error, not a refusal.
    server.fail.store(true, Ordering::SeqCst);
    let e = format!("{:#}", a.acquire("node-c").unwrap_err());
    assert!(e.contains("500"), "{e}");
}
