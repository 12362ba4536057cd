//! Crash states of an update (issue 20): the update of the saved node is
//! recorded through a disk with a volatile write cache ([`nbd`]), and a
//! few hundred of the states a power cut could have left are checked on
//! the host: each boots a verified slot by the stage's own rule. The long
//! run (10 000 states and more) is `cargo xtask campaign crash`.

use std::io::Write as _;

use drover_core::slots::Slots;
use drover_core::table::PartitionTable;
use drover_core::SlotId;
use drover_qemu_tests::crash::{self, Entry, Recording, WriteLog, PHASES};
use drover_qemu_tests::nbd;

const STATES: usize = 300;
const SEED: u64 = 0x0063_7261_7368;
/// The state booted in QEMU: number 2 is cut in the phase of the table
/// flip and the reboot (numbers go round the phases). The campaign boots
/// twenty.
const BOOTED: usize = 2;

#[test]
fn every_crash_state_of_an_update_boots_a_verified_slot() {
    let tmp = tempfile::tempdir_in(drover_qemu_tests::image::target_dir().join("tmp")).unwrap();
    let rec = Recording::new(&tmp.path().join("recording"));
    let recorded = crash::record(&rec).unwrap_or_else(|e| panic!("recording the update: {e:#}"));
    assert!(
        recorded.flushes > 0,
        "the guest never flushed: {recorded:?}"
    );

    let log = WriteLog::open(&rec.log()).unwrap();
    let phases: Vec<String> = log.phases().into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        phases,
        PHASES.map(String::from).to_vec(),
        "phases of the log"
    );

    let report =
        crash::campaign(&rec, STATES, SEED, 10, &[BOOTED], &tmp.path().join("work")).unwrap();
    eprintln!("crash: {}", serde_json::to_string_pretty(&report).unwrap());
    assert_eq!(report.states_checked, STATES);
    for name in PHASES {
        assert!(
            report.phases[name].checked > 0,
            "no state checked in {name}"
        );
    }
    assert!(report.agent_states_read >= STATES / 10);
    assert!(
        report
            .agent_state_results
            .get("parsed")
            .is_some_and(|&n| n > 0),
        "no state file was ever read: {:?}",
        report.agent_state_results
    );
    assert_eq!(report.booted.len(), 1, "{:?}", report.booted);
    assert!(report.booted[0].finished, "{:?}", report.booted);
    // Both slots are booted by some states: the cut before the flip boots
    // 1.0.0, after it 2.0.0.
    assert!(
        report.boots.get("USR-A").is_some_and(|&n| n > 0),
        "{:?}",
        report.boots
    );
    assert!(
        report.boots.get("USR-B").is_some_and(|&n| n > 0),
        "{:?}",
        report.boots
    );
    assert!(
        report.failures.is_empty(),
        "{} of {STATES} crash states failed: {:#?}",
        report.failures.len(),
        report.failures
    );

    // The check can fail: a log that, after the recording's start,
    // overwrites a block of USR-A's data and flushes leaves nothing to
    // boot (USR-B is not bootable then), and the checker says so; cut
    // before the flush, the write may be lost or kept, and where it is
    // kept the state fails too.
    let (table, _) = PartitionTable::open(rec.base()).unwrap();
    let a = Slots::from_table(table, SlotId::A).unwrap().get(SlotId::A);
    let bad = Recording::new(&tmp.path().join("bad"));
    std::fs::create_dir_all(&bad.dir).unwrap();
    std::fs::rename(rec.base(), bad.base()).unwrap();
    std::fs::copy(rec.key(), bad.key()).unwrap();
    let mut f = std::fs::File::create(bad.log()).unwrap();
    f.write_all(nbd::LOG_MAGIC).unwrap();
    f.write_all(&[nbd::TAG_WRITE]).unwrap();
    f.write_all(&(a.offset + (1 << 20)).to_be_bytes()).unwrap();
    f.write_all(&4096u32.to_be_bytes()).unwrap();
    f.write_all(&[0xaa; 4096]).unwrap();
    f.write_all(&[nbd::TAG_FLUSH]).unwrap();
    drop(f);
    let bad_log = WriteLog::open(&bad.log()).unwrap();
    assert!(matches!(bad_log.entries[0], Entry::Write { .. }));
    let r = crash::campaign(&bad, 20, SEED, 0, &[], &tmp.path().join("bad-work")).unwrap();
    assert!(r.unbootable > 0, "a corrupted USR-A went unnoticed: {r:?}");
    assert!(
        r.failures.iter().all(|f| f.why.contains("USR-A")),
        "{:?}",
        r.failures
    );
}
