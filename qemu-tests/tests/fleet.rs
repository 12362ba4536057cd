//! Two nodes, one channel, one reboot at a time: both restored from the
//! saved 1.0.0 node, each with its own machine-id, both on `etcd-lock`
//! with the group's lock at one holder, etcd (Debian's, on the host's
//! loopback) reached through QEMU user networking at 10.0.2.101:2379.
//! 2.0.0 is published; both write it; the lock lets one reboot, and the
//! other only after the first is up on 2.0.0, confirmed, and has given the
//! lock back. Shown twice: from the lock's history (polled from etcd
//! throughout) and from the consoles (when each kernel restarted and when
//! each came up on 2.0.0, host time).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use drover_core::agent_config;
use drover_qemu_tests::etcd::Etcd;
use drover_qemu_tests::image::{self, publish};
use drover_qemu_tests::snapshot;
use drover_qemu_tests::web::Nginx;
use drover_update_agent::fleet::{etcd::EtcdLock, node_id, Lock as _};

const BOOT: Duration = Duration::from_secs(900);

/// The lock's holders as they changed: when (since the start) and who.
type History = Arc<Mutex<Vec<(Duration, Vec<String>)>>>;

#[test]
fn two_nodes_on_an_etcd_lock_of_one_reboot_one_after_the_other() {
    let etcd = Etcd::start(1);
    let store = EtcdLock::new(&agent_config::EtcdLock {
        endpoints: etcd.endpoints(),
        ca: None,
        cert: None,
        key: None,
        group: "default".into(),
    })
    .unwrap();
    store.set_max(1).unwrap();
    let etcd_port: u16 = etcd.endpoints()[0]
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();

    let v2 = image::release("v2", "2.0.0", "");
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let web = Nginx::serve(&repo, None);
    let nodes = [
        ("fleet-a", "a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1"),
        ("fleet-b", "b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2"),
    ];
    let mut guests = Vec::new();
    for (name, machine_id) in nodes {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        let (g, _disk) = snapshot::idle_node().restore_with(
            name,
            &d,
            web.port,
            &[("10.0.2.101:2379", etcd_port)],
        );
        // Its own machine-id (the lock's node id derives from it), and the
        // reboot lock; /etc is on ROOT and survives the reboot.
        g.sh_ok(&format!(
            "printf '%s\\n' {machine_id} > /etc/machine-id && \
             printf '[reboot]\\nstrategy = \"etcd-lock\"\\n[reboot.etcd]\\nendpoints = [\"http://10.0.2.101:2379\"]\\n' \
               > /etc/drover/agent.toml.d/60-fleet.toml && \
             systemctl restart drover-agent"
        ));
        g.wait_status(Duration::from_secs(120), "the agent back, idle", |st| {
            st["operation"] == "idle"
        });
        guests.push(g);
    }

    // The lock's history, from etcd, until the end.
    let history: History = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let poller = {
        let (history, stop) = (Arc::clone(&history), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                if let Ok(s) = store.status() {
                    let ids: Vec<String> = s.holders.into_iter().map(|h| h.id).collect();
                    let mut h = history.lock().unwrap();
                    if h.last().map(|(_, last)| last != &ids).unwrap_or(true) {
                        h.push((t0.elapsed(), ids));
                    }
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };

    publish(&repo, &v2);
    // Each node: when its kernel restarts (the reboot into 2.0.0), when it
    // reports 2.0.0 on B, and its status once confirmed.
    let runs: Vec<_> = guests
        .into_iter()
        .map(|mut g| {
            std::thread::spawn(move || {
                g.expect("reboot: Restarting system", BOOT);
                let restarted = t0.elapsed();
                g.expect("DROVER-TEST-REPORT slot=USR-B version=2.0.0", BOOT);
                let up = t0.elapsed();
                g.wait_for_agent(Duration::from_secs(180))
                    .unwrap_or_else(|e| g.fail(&format!("{e:#}")));
                let st = g.wait_status(
                    Duration::from_secs(300),
                    "2.0.0 confirmed, lock given back",
                    |st| st["booted-successful"] == true && st["reboot-lock"].is_null(),
                );
                (g, restarted, up, st)
            })
        })
        .collect();
    let results: Vec<_> = runs.into_iter().map(|r| r.join().unwrap()).collect();
    // The lock empty at the end.
    let end = Instant::now();
    while !history
        .lock()
        .unwrap()
        .last()
        .is_some_and(|(_, ids)| ids.is_empty())
    {
        assert!(
            end.elapsed() < Duration::from_secs(60),
            "the lock was not emptied"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::SeqCst);
    poller.join().unwrap();

    let history = history.lock().unwrap().clone();
    let shown: Vec<String> = history
        .iter()
        .map(|(t, ids)| format!("{:>7.1}s {ids:?}", t.as_secs_f64()))
        .collect();
    let ids: Vec<String> = nodes.iter().map(|(_, m)| node_id(m)).collect();
    for (g, restarted, up, st) in &results {
        if st["booted"]["version"] != "2.0.0" || st["other"]["version"] != "1.0.0" {
            g.fail(&format!("status: {st:#}"));
        }
        eprintln!(
            "fleet: a node restarted at {:.1} s and was up on 2.0.0 at {:.1} s",
            restarted.as_secs_f64(),
            up.as_secs_f64()
        );
    }
    eprintln!("fleet: lock history\n{}", shown.join("\n"));
    // Never two holders; each node held it once, one after the other.
    assert!(
        history.iter().all(|(_, h)| h.len() <= 1),
        "two holders at once:\n{}",
        shown.join("\n")
    );
    let holders: Vec<&String> = history.iter().filter_map(|(_, h)| h.first()).collect();
    for id in &ids {
        assert!(
            holders.contains(&id),
            "{id} never held the lock:\n{}",
            shown.join("\n")
        );
    }
    // The consoles agree: the second kernel restarted after the first node
    // was up on 2.0.0.
    let mut spans: Vec<(Duration, Duration)> = results.iter().map(|r| (r.1, r.2)).collect();
    spans.sort();
    assert!(
        spans[1].0 > spans[0].1,
        "the reboots overlap: {spans:?}\nlock history:\n{}",
        shown.join("\n")
    );
}
