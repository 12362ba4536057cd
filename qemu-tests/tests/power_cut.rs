//! Power cuts during an update (issue 6): QEMU is killed (SIGKILL, the
//! guest gets no warning) at points of the write of 2.0.0 into USR-B
//! chosen from a fixed seed. After every cut the machine must boot 1.0.0
//! from USR-A, verified, with USR-B never made bootable; the agent then
//! resumes the download from its last synced point, and after the last cut
//! the update completes: 2.0.0 boots from USR-B and is marked successful.

use std::path::Path;
use std::time::{Duration, Instant};

use drover_core::SlotId;
use drover_qemu_tests::crash;
use drover_qemu_tests::guest::Guest;
use drover_qemu_tests::image::{self, publish_full, slot_bits};
use drover_qemu_tests::snapshot;
use drover_qemu_tests::web::{first_stream_after, Nginx};

const BOOT: Duration = Duration::from_secs(600);
const SEED: u64 = 0x6d72_6f76_6572;
const CUTS: usize = 3;
/// The agent's resume granularity (`drover_update_agent::apply::CHECKPOINT_BYTES`).
const CHECKPOINT: u64 = 32 << 20;

/// `CUTS` points in (0.1, 0.9) of the payload, ascending, from [`SEED`]
/// (xorshift64*, so the test cuts at the same points every run).
fn cut_points() -> Vec<f64> {
    let mut x = SEED;
    let mut v: Vec<f64> = (0..CUTS)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            let r = x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11;
            0.1 + 0.8 * (r as f64 / (1u64 << 53) as f64)
        })
        .collect();
    v.sort_by(f64::total_cmp);
    v
}

/// Boots the machine again after a cut: the saved node's machine (same
/// devices, same TPM state directory), booting for real.
fn start(name: &str, disk: &Path, dir: &Path, port: u16) -> Guest {
    snapshot::builder(name, disk, dir, port).start().unwrap()
}

/// Expects 1.0.0 booted from USR-A through dm-verity.
fn expect_v1_verified(g: &mut Guest) {
    let line = g.expect("DROVER-TEST-REPORT slot=USR-A version=1.0.0", BOOT);
    if !line.contains("usr=ro usr_source=/dev/dm-") || !line.contains("multi_user=active") {
        g.fail(&format!("1.0.0 did not come up verified: {line}"));
    }
}

/// The access log's length once the cut-off stream is in it: nginx logs a
/// request when it ends, and the stream the cut broke ends when nginx
/// notices the closed connection (a moment later, throttled). Waits until
/// the log has not grown for 3 s (at most 30 s).
fn settled_log_lines(web: &Nginx) -> usize {
    let start = Instant::now();
    let mut n = web.access_log().lines().count();
    let mut still = Instant::now();
    while still.elapsed() < Duration::from_secs(3) && start.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(250));
        let m = web.access_log().lines().count();
        if m != n {
            n = m;
            still = Instant::now();
        }
    }
    n
}

/// The resume check of one cut: the first stream after the cut started
/// past zero and at or below what was durable when the power went.
fn check_resume(log: &str, from: usize, durable: u64) -> Result<u64, String> {
    match first_stream_after(log, from) {
        None => Err("no stream of the payload after the cut".into()),
        Some(0) => Err("the download after the cut started again from byte 0".into()),
        Some(n) if n > durable => Err(format!(
            "the download after the cut resumed at {n}, past the {durable} bytes durable before it"
        )),
        Some(n) => Ok(n),
    }
}

#[test]
fn the_resume_check_fails_when_nothing_resumed() {
    let header = "GET /releases/2.0.0/usr.img HTTP/1.1 206 bytes=357000000-357004095 4096";
    let log = |stream: &str| {
        format!("GET /stable/channel.json HTTP/1.1 200 - 900\n{header}\nGET /releases/2.0.0/usr.img HTTP/1.1 206 {stream} 1000\n")
    };
    // Resumed from a synced point: passes.
    assert_eq!(
        check_resume(&log("bytes=67108864-"), 0, 95_000_000),
        Ok(67_108_864)
    );
    // Started again, not resumed; a range past what was written; no stream
    // at all (the header read's large start must not count): each fails.
    assert!(check_resume(&log("bytes=0-"), 0, 95_000_000).is_err());
    assert!(check_resume(&log("-"), 0, 95_000_000).is_err());
    assert!(check_resume(&log("bytes=134217728-"), 0, 95_000_000).is_err());
    assert!(check_resume(&format!("{header}\n"), 0, 95_000_000).is_err());
    // Lines before the cut are not looked at.
    assert!(check_resume(&log("bytes=67108864-"), 3, 95_000_000).is_err());
}

#[test]
fn power_cuts_during_the_write_leave_the_old_slot_booting_and_the_update_completes() {
    let v2 = image::release("v2", "2.0.0", "");
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    // Throttled so that the cut points can be hit by polling the agent.
    let web = Nginx::serve(&repo, Some("12m"));
    let points = cut_points();
    eprintln!("power_cut: seed {SEED:#x}, cuts at {points:.3?} of the payload");

    // 1.0.0 booted: the saved node, restored. Every boot after a cut is
    // a real one.
    let (mut g, disk) = snapshot::idle_node().restore("power-cut-0", dir.path(), web.port);
    expect_v1_verified(&mut g);
    publish_full(&repo, &v2);
    // (access-log line at the cut, bytes durable at the cut) per cut.
    let mut cuts: Vec<(usize, u64)> = Vec::new();
    for (i, &at) in points.iter().enumerate() {
        g.wait_for_agent(Duration::from_secs(180))
            .unwrap_or_else(|e| g.fail(&format!("{e:#}")));
        // Poll the agent's progress; cut the power once it passes `at`.
        let t = Instant::now();
        let written = loop {
            if t.elapsed() > BOOT {
                g.fail(&format!("the write never reached {at:.3} of the payload"));
            }
            if let Ok(st) = g.status() {
                let p = &st["progress"];
                if let (Some(done), Some(all)) = (p[0].as_u64(), p[1].as_u64()) {
                    if all > 0 && done as f64 >= at * all as f64 {
                        break (done, all);
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(250));
        };
        g.stop();
        // What the agent had made durable when the power went, from its
        // state file on the disk (the progress polled above lags it by up
        // to one poll): the download must resume at or below it.
        let durable = crash::agent_state_on_disk(&disk, dir.path())
            .unwrap_or_else(|e| panic!("cut {}: reading the agent's state: {e:#}", i + 1))
            .and_then(|s| s.download)
            .map_or(0, |d| d.durable);
        cuts.push((settled_log_lines(&web), durable));
        eprintln!(
            "power_cut: cut {} at {} of {} bytes ({durable} durable)",
            i + 1,
            written.0,
            written.1
        );
        let (prio_b, ..) = slot_bits(&disk, SlotId::B);
        let (prio_a, _, good_a) = slot_bits(&disk, SlotId::A);
        assert_eq!(prio_b, 0, "cut {}: USR-B bootable mid-write", i + 1);
        assert!(prio_a > 0 && good_a, "cut {}: USR-A no longer good", i + 1);
        g = start(&format!("power-cut-{}", i + 1), &disk, dir.path(), web.port);
        expect_v1_verified(&mut g);
    }

    // The last boot: the agent resumes, finishes, flips and reboots.
    let line = g.expect("DROVER-TEST-REPORT slot=USR-B version=2.0.0", BOOT);
    if !line.contains("usr_source=/dev/dm-") || !line.contains("multi_user=active") {
        g.fail(&format!("2.0.0 did not come up verified: {line}"));
    }
    g.wait_for_agent(Duration::from_secs(180))
        .unwrap_or_else(|e| g.fail(&format!("{e:#}")));
    g.wait_status(Duration::from_secs(180), "2.0.0 marked successful", |st| {
        st["booted"]["version"] == "2.0.0" && st["booted-successful"] == true
    });
    // After every cut the download resumed, not restarted: the first
    // stream of the payload after it started past zero and at or below
    // what the agent's state file on the disk recorded as durable.
    let log = web.access_log();
    for (i, &(line, durable)) in cuts.iter().enumerate() {
        match check_resume(&log, line, durable) {
            Ok(n) => eprintln!(
                "power_cut: after cut {} the download resumed at {n} ({} checkpoints of {CHECKPOINT} bytes; {durable} durable before the cut)",
                i + 1,
                n / CHECKPOINT
            ),
            Err(e) => g.fail(&format!("cut {}: {e}; access log:\n{log}", i + 1)),
        }
    }
}
