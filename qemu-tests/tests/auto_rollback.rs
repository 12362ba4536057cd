//! Automatic rollback (issue 6): an update whose boot fails brings the
//! machine back to the version it ran, on its own, and is never installed
//! again. Two ways a boot fails, on one machine one after the other:
//!
//! 1. 3.0.0 boots, but a health check (a unit `RequiredBy=`
//!    `boot-complete.target`) fails, so the slot is never marked
//!    successful; the agent sees the failed check and reboots, and the
//!    stage, finding the slot's tries used up, boots the previous one.
//! 2. 3.0.1 has a kernel command line its kernel cannot start with (no
//!    init: the kernel panics, `panic=5` reboots it); the stage again
//!    falls back.
//!
//! The machine starts on 1.0.0 (the shared test image) rather than on a
//! 2.0.0 reached by an update first: the property is the same, "back to the
//! version that ran before", and one update cycle less keeps the test
//! inside a few TCG boots.

use std::time::Duration;

use drover_qemu_tests::guest::Guest;
use drover_qemu_tests::image::{self, publish};
use drover_qemu_tests::snapshot;
use drover_qemu_tests::web::Nginx;

const BOOT: Duration = Duration::from_secs(600);

/// The health check of release 3.0.0: a unit that fails, required by
/// `boot-complete.target` (systemd's boot assessment hook).
const FAILING_HEALTH_CHECK: &str = r#"
[[files]]
path = "/usr/lib/systemd/system/drover-test-health.service"
contents = """[Unit]
Description=A health check that fails (Drover test release only)
Before=boot-complete.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -c 'echo DROVER-TEST-HEALTH failing on purpose > /dev/ttyS0; exit 1'
"""

[[files]]
path = "/usr/lib/systemd/system/boot-complete.target.requires/drover-test-health.service"
link = "../drover-test-health.service"
"#;

/// Requests for `version`'s files (payload, frames, index: TUF targets
/// named by their digests) in nginx's access log.
fn payload_requests(web: &Nginx, version: &str) -> usize {
    let needle = format!("/targets/releases/{version}/");
    web.access_log()
        .lines()
        .filter(|l| l.contains(&needle))
        .count()
}

/// Waits for the agent, on the old slot again, to report the rollback of
/// `failed` (not a manual one) and to have given that slot priority 0.
/// `reason`: what the report must say of why (absent when the failed boot
/// never reached the agent).
fn expect_rollback(g: &mut Guest, failed: &str, reason: Option<&str>) {
    g.expect("DROVER-TEST-REPORT slot=USR-A version=1.0.0", BOOT);
    g.wait_for_agent(Duration::from_secs(120))
        .unwrap_or_else(|e| g.fail(&format!("{e:#}")));
    let st = g.wait_status(
        Duration::from_secs(120),
        &format!("the rollback of {failed} reported"),
        |st| st["last-rollback"]["from-version"] == failed,
    );
    if st["booted"]["slot"] != "USR-A"
        || st["booted"]["version"] != "1.0.0"
        || st["booted-successful"] != true
        || st["last-rollback"]["to-version"] != "1.0.0"
        || st["last-rollback"]["manual"] != false
        || !st["failed-versions"]
            .as_array()
            .is_some_and(|v| v.iter().any(|x| x == failed))
        || st["other"]["state"] != "unbootable"
        || match reason {
            Some(r) => !st["last-rollback"]["reason"]
                .as_str()
                .is_some_and(|s| s.contains(r)),
            None => !st["last-rollback"]["reason"].is_null(),
        }
    {
        g.fail(&format!("status after the rollback of {failed}: {st:#}"));
    }
}

#[test]
fn failed_boots_roll_back_on_their_own_and_are_not_retried() {
    let health = image::release("v3-health", "3.0.0", FAILING_HEALTH_CHECK);
    let cmdline = "console=tty0 console=ttyS0,115200 panic=5\"";
    let spec = image::spec("3.0.1", "");
    assert!(spec.contains(cmdline), "the test spec's command line moved");
    // No init in the slot's initramfs and no root device: the kernel panics.
    let panics = image::release_spec(
        "v3-panic",
        &spec.replace(
            cmdline,
            "console=tty0 console=ttyS0,115200 panic=5 rdinit=/drover-test-no-such-init\"",
        ),
    );

    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let web = Nginx::serve(&repo, None);
    // 1.0.0 booted: the saved node, restored (the failed boots below are
    // real boots).
    let (mut g, _disk) = snapshot::idle_node().restore("auto-rollback", dir.path(), web.port);
    g.expect("DROVER-TEST-REPORT slot=USR-A version=1.0.0", BOOT);

    // 1. A failing health check.
    publish(&repo, &health);
    // Only 3.0.0 has this unit: the line shows the new slot booted. The
    // agent sees the check failed and reboots at once (no timeout), so
    // the test image's report may not get to print on this boot.
    g.expect("DROVER-TEST-HEALTH failing on purpose", BOOT);
    expect_rollback(
        &mut g,
        "3.0.0",
        Some("boot check failed: drover-test-health.service"),
    );
    // The agent rebooted because the check failed, not after a timeout
    // (the test image's is 900 s): its journal from that boot says so.
    let line = g.expect(
        "boot assessment failed (boot check failed: drover-test-health.service)",
        BOOT,
    );
    assert!(line.contains("DROVER-PREVIOUS-BOOT agent:"), "{line}");

    // 2. A kernel that cannot start.
    publish(&repo, &panics);
    g.expect("Kernel panic", BOOT);
    expect_rollback(&mut g, "3.0.1", None);

    // Not installed again: more polls of the channel, which still
    // offers 3.0.1, fetch no payload and leave USR-B alone.
    let fetched = payload_requests(&web, "3.0.1");
    let checked = g.status().unwrap_or_else(|e| g.fail(&format!("{e:#}")))["last-check"].clone();
    let st = g.wait_status(Duration::from_secs(120), "two more checks", |st| {
        st["last-check"].as_u64().unwrap_or(0) > checked.as_u64().unwrap_or(0) + 15
    });
    if payload_requests(&web, "3.0.1") != fetched
        || !matches!(st["operation"].as_str(), Some("idle" | "checking"))
        || st["other"]["state"] != "unbootable"
    {
        g.fail(&format!(
            "3.0.1 was tried again: status {st:#}\naccess log:\n{}",
            web.access_log()
        ));
    }
}

/// The health check of releases 3.0.2 and 3.0.3: a unit required by
/// `boot-complete.target` that never finishes, so the new slot is never
/// marked successful on its own.
const HANGING_HEALTH_CHECK: &str = r#"
[[files]]
path = "/usr/lib/systemd/system/drover-test-hang.service"
contents = """[Unit]
Description=A health check that never finishes (Drover test release only)
Before=boot-complete.target

[Service]
Type=oneshot
RemainAfterExit=yes
TimeoutStartSec=infinity
ExecStart=/bin/sh -c 'echo DROVER-TEST-HANG never finishing > /dev/ttyS0; exec sleep infinity'
"""

[[files]]
path = "/usr/lib/systemd/system/boot-complete.target.requires/drover-test-hang.service"
link = "../drover-test-hang.service"
"#;

/// Two more ways a boot fails, on one machine one after the other (issue
/// 20):
///
/// 1. 3.0.2 never reaches `boot-complete.target` (a check that hangs): the
///    agent gives up after `boot-complete-timeout-secs` (60 s here, from a
///    drop-in on the node) and reboots, and the stage boots 1.0.0 again.
/// 2. 3.0.3 is corrupted while it runs: a block of USR-B under the
///    mounted dm-verity device is overwritten, then read; dm-verity
///    (`restart_on_corruption`) restarts the machine at once, and the
///    stage, with USR-B's one try used up and never confirmed, boots 1.0.0.
#[test]
fn a_boot_that_hangs_and_a_slot_corrupted_while_running_roll_back() {
    let hang = image::release("v3-hang", "3.0.2", HANGING_HEALTH_CHECK);
    let corrupt = image::release("v3-corrupt", "3.0.3", HANGING_HEALTH_CHECK);
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let web = Nginx::serve(&repo, None);
    let (mut g, _disk) = snapshot::idle_node().restore("hang-corrupt", dir.path(), web.port);
    g.expect("DROVER-TEST-REPORT slot=USR-A version=1.0.0", BOOT);

    // 1. The timeout. The drop-in is on ROOT, so the boot of 3.0.2 reads it.
    g.sh_ok(
        "printf 'boot-complete-timeout-secs = 60\\n' > /etc/drover/agent.toml.d/60-timeout.toml",
    );
    publish(&repo, &hang);
    // Only 3.0.x has this unit: the line shows the new slot booted (the
    // test image's report waits for multi-user.target, which may not
    // come before the agent gives up).
    g.expect("DROVER-TEST-HANG never finishing", BOOT);
    expect_rollback(
        &mut g,
        "3.0.2",
        Some("boot-complete.target not reached within 60 s"),
    );

    // 2. Corruption at run time. The test image's timeout (900 s) again, so
    // that only the corruption can end the boot of 3.0.3.
    g.sh_ok("rm /etc/drover/agent.toml.d/60-timeout.toml");
    publish(&repo, &corrupt);
    g.expect("DROVER-TEST-HANG never finishing", BOOT);
    g.wait_for_agent(Duration::from_secs(180))
        .unwrap_or_else(|e| g.fail(&format!("{e:#}")));
    let st = g.wait_status(Duration::from_secs(180), "the agent up on 3.0.3", |st| {
        st["booted"]["version"] == "3.0.3"
    });
    if st["booted-successful"] != false {
        g.fail(&format!("3.0.3 should be booted, unconfirmed: {st:#}"));
    }
    // USR-B is /dev/vda4 and its data starts at the partition's start:
    // block 1000 of the partition is block 1000 of the verity device that
    // holds /usr. Overwritten beneath the device, then read through it
    // (direct I/O: not from the page cache). The guest restarts while the
    // command runs, so it is not waited for.
    g.exec(
        &[
            "/bin/sh",
            "-c",
            "usr=$(findmnt -no SOURCE /usr); \
             echo DROVER-TEST-CORRUPTING $usr > /dev/ttyS0; \
             dd if=/dev/urandom of=/dev/vda4 bs=4096 seek=1000 count=1 conv=notrunc,fsync oflag=direct 2>/dev/null; \
             dd if=$usr of=/dev/null bs=4096 skip=1000 count=1 iflag=direct",
        ],
        false,
    )
    .unwrap_or_else(|e| g.fail(&format!("{e:#}")));
    g.expect("DROVER-TEST-CORRUPTING /dev/", BOOT);
    g.expect("is corrupted", BOOT);
    expect_rollback(&mut g, "3.0.3", None);
}
