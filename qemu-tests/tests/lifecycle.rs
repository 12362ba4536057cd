//! The life cycle (issue 6): v1 boots with the agent pointed at a channel
//! served by nginx on the host's loopback (the guest reaches it only
//! through QEMU user networking), a TUF repository whose root the image
//! carries (issue 18); v2 is published (after v1, as a channel
//! holds them); the agent fetches only the frames of the blocks v1 lacks
//! (a delta: nginx's log shows ranges of `usr.blocks`, no stream of the
//! payload), writes USR-B, flips and reboots; the machine comes up on v2 and marks it
//! successful; then `droverctl rollback --reboot` brings v1 back. The
//! node starts from the saved, booted v1 ([`drover_qemu_tests::snapshot`]).

use std::time::Duration;

use drover_qemu_tests::guest::json_after;
use drover_qemu_tests::image::{self, publish};
use drover_qemu_tests::snapshot;
use drover_qemu_tests::web::Nginx;

const BOOT: Duration = Duration::from_secs(600);

#[test]
fn update_over_the_channel_then_manual_rollback() {
    let v2 = image::release("v2", "2.0.0", "");
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let web = Nginx::serve(&repo, None);
    // The booted v1 node, restored (boot.rs tests booting itself).
    let (mut g, _disk) = snapshot::idle_node().restore("lifecycle", dir.path(), web.port);

    // v1 up, nothing published yet.
    g.expect("DROVER-TEST-REPORT slot=USR-A version=1.0.0", BOOT);
    let v1 = image::test_image().usr_img.parent().unwrap().to_owned();
    publish(&repo, &v1);
    publish(&repo, &v2);

    // The agent polls, writes B, reboots; v2 comes up on B.
    let line = g.expect("DROVER-TEST-REPORT slot=USR-B version=2.0.0", BOOT);
    if !line.contains("multi_user=active") {
        g.fail(&format!("v2 did not reach multi-user: {line}"));
    }
    let log = web.access_log();
    // The channel is read as a TUF repository (the image carries its
    // root), never as the format-1 file beside it.
    for want in [
        "GET /tuf/stable/metadata/2.root.json HTTP/1.1 404",
        "GET /tuf/stable/metadata/timestamp.json HTTP/1.1 200",
    ] {
        if !log.contains(want) {
            g.fail(&format!("no '{want}' in nginx's log:\n{log}"));
        }
    }
    if log.contains("/channels/") {
        g.fail(&format!("the format-1 channel file was read:\n{log}"));
    }
    // The header of the payload by small range reads, then frames only
    // (TUF targets, named by their digests).
    let release = "/tuf/stable/targets/releases/2.0.0/";
    let stream = log
        .lines()
        .any(|l| l.contains(release) && l.contains(".usr.img HTTP/") && l.contains("bytes=0- "));
    let fetched: u64 = log
        .lines()
        .filter(|l| {
            l.starts_with("GET ")
                && l.contains(release)
                && l.contains(".usr.blocks HTTP/")
                && l.contains(" 206 bytes=")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    let full = std::fs::metadata(repo.join("releases/2.0.0/usr.blocks"))
        .unwrap()
        .len();
    eprintln!("lifecycle: the delta fetched {fetched} of {full} bytes of frames");
    if stream || fetched == 0 || fetched * 10 > full {
        g.fail(&format!(
            "expected a delta (frames of usr.blocks, under a tenth of them), got {fetched} of {full} bytes:\n{log}"
        ));
    }
    g.wait_for_agent(Duration::from_secs(120))
        .unwrap_or_else(|e| g.fail(&format!("{e:#}")));
    // Marked successful once boot-complete.target was reached.
    let status = g.wait_status(Duration::from_secs(120), "v2 marked successful", |st| {
        st["booted-successful"] == true
    });
    if status["booted"]["slot"] != "USR-B"
        || status["booted"]["version"] != "2.0.0"
        || status["other"]["version"] != "1.0.0"
        || status["other"]["state"] != "good"
    {
        g.fail(&format!("droverctl status on v2: {status:#}"));
    }

    // Manual rollback: back to v1, reported as such.
    g.exec(&["/usr/bin/droverctl", "rollback", "--reboot"], false)
        .unwrap_or_else(|e| g.fail(&format!("{e:#}")));
    g.expect("DROVER-TEST-REPORT slot=USR-A version=1.0.0", BOOT);
    // The report prints the agent's status on the next lines.
    let last = g.expect("DROVER-STATUS ", BOOT);
    let st = json_after(&last, "DROVER-STATUS ");
    if st["booted"]["version"] != "1.0.0"
        || st["last-rollback"]["manual"] != true
        || st["last-rollback"]["from-version"] != "2.0.0"
        || st["last-rollback"]["to-version"] != "1.0.0"
    {
        g.fail(&format!("status after the manual rollback: {st:#}"));
    }
}
