//! The stage's TPM code against a real software TPM (`swtpm`, started by
//! the test on loopback and stopped by its PID): every allocated bank of
//! PCR 8 ends at the value the recorded events replay to.

use std::str::FromStr as _;

use drover_boot::tpm;
use drover_core::measured::measure::{self, Event};
use tss_esapi::tcti_ldr::TctiNameConf;

#[path = "../../test-support/swtpm.rs"]
mod swtpm;
use swtpm::Swtpm;

trait Tcti {
    fn tcti(&self) -> TctiNameConf;
}

impl Tcti for Swtpm {
    fn tcti(&self) -> TctiNameConf {
        TctiNameConf::from_str(&self.tcti_name()).unwrap()
    }
}

fn events(slot: &str) -> Vec<Event> {
    vec![
        Event::new("slot", slot, slot),
        Event::new("manifest", "ab".repeat(32), "test 1.0.0"),
        Event::new("slot-cmdline", "cd".repeat(32), "console=ttyS0"),
    ]
}

#[test]
fn every_bank_of_pcr8_replays_from_the_events() {
    let tpm_sim = Swtpm::start();
    let before = tpm::read_tcti(tpm_sim.tcti()).unwrap();
    assert!(!before.is_empty());
    for (bank, value) in &before {
        assert_eq!(value, &vec![0u8; bank.size()], "{bank:?} starts at zero");
    }
    let ev = events("USR-A");
    let banks = tpm::extend_tcti(tpm_sim.tcti(), &ev).unwrap();
    assert_eq!(banks.len(), before.len());
    let after = tpm::read_tcti(tpm_sim.tcti()).unwrap();
    for (bank, value) in &after {
        assert_eq!(value, &measure::replay(*bank, &ev), "{bank:?}");
    }
    // The other slot's events give another value: what was chosen is in it.
    for (bank, value) in &after {
        assert_ne!(value, &measure::replay(*bank, &events("USR-B")));
    }
}

#[test]
fn measuring_twice_is_the_replay_of_both() {
    let tpm_sim = Swtpm::start();
    let mut all = events("USR-B");
    tpm::extend_tcti(tpm_sim.tcti(), &all).unwrap();
    let more = events("USR-A");
    tpm::extend_tcti(tpm_sim.tcti(), &more).unwrap();
    all.extend(more);
    for (bank, value) in tpm::read_tcti(tpm_sim.tcti()).unwrap() {
        assert_eq!(value, measure::replay(bank, &all), "{bank:?}");
    }
}
