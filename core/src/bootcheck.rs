//! Verifying a measured boot on the node: the firmware's event log and the
//! stage's own events replayed and compared with the PCR values the TPM
//! holds, and the stage's events compared with what the booted slot's
//! signed manifest predicts. Pure: the caller reads the log, the PCRs and
//! the boot record, and gets back every check with its verdict.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::eventlog::EventLog;
use crate::measure::{self, Bank, Event};

/// One PCR of one bank.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct PcrCheck {
    /// The bank.
    pub bank: Bank,
    /// The PCR.
    pub pcr: u32,
    /// What the logs replay to, hex.
    pub replayed: String,
    /// What the TPM holds, hex (empty: not read).
    pub tpm: String,
    /// Which log: `firmware` or `drover`.
    pub log: &'static str,
    /// Whether they are equal.
    pub ok: bool,
}

/// One of the stage's events against the signed manifest's prediction.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct EventCheck {
    /// `slot`, `manifest`, `root-hash`, `slot-kernel`, …
    pub component: String,
    /// What the stage recorded.
    pub recorded: Option<String>,
    /// What the manifest predicts.
    pub expected: Option<String>,
    /// Equal.
    pub ok: bool,
}

/// PCR values read from a TPM, by bank and index.
pub type PcrValues = BTreeMap<(Bank, u32), Vec<u8>>;

/// The whole verdict.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Verification {
    /// All checks passed (and there was something to check).
    pub verified: bool,
    /// PCR checks.
    pub pcrs: Vec<PcrCheck>,
    /// Event checks.
    pub events: Vec<EventCheck>,
    /// What failed, one line each, for people.
    pub problems: Vec<String>,
}

/// Checks a boot. `tpm` holds the PCR values read from the TPM by
/// `(bank, pcr)`; `recorded` the stage's events (the boot record);
/// `expected` what the booted slot's signed manifest predicts
/// ([`measure::expected_events`]). With no firmware log, only the stage's
/// PCR is checked (and that is said).
pub fn verify(
    firmware: Option<&EventLog>,
    tpm: &PcrValues,
    recorded: &[Event],
    expected: &[Event],
) -> Verification {
    let mut pcrs = Vec::new();
    let mut problems = Vec::new();
    let banks: Vec<Bank> = {
        let mut b: Vec<Bank> = tpm.keys().map(|(b, _)| *b).collect();
        b.dedup();
        b
    };
    if banks.is_empty() {
        problems.push("no PCR values from the TPM".to_string());
    }
    match firmware {
        None => problems.push("no firmware event log: PCRs 0–7 cannot be checked".into()),
        Some(log) => {
            for &bank in &banks {
                match log.replay(bank) {
                    Err(e) => problems.push(format!("{} bank: {e}", bank.name())),
                    Ok(values) => {
                        for (pcr, v) in values {
                            let actual = tpm.get(&(bank, pcr));
                            let ok = actual == Some(&v);
                            if !ok {
                                problems.push(format!(
                                    "PCR {pcr} ({}): the firmware log replays to {}, the TPM holds {}",
                                    bank.name(),
                                    hex::encode(&v),
                                    actual.map(hex::encode).unwrap_or_else(|| "nothing read".into())
                                ));
                            }
                            pcrs.push(PcrCheck {
                                bank,
                                pcr,
                                replayed: hex::encode(&v),
                                tpm: actual.map(hex::encode).unwrap_or_default(),
                                log: "firmware",
                                ok,
                            });
                        }
                    }
                }
            }
        }
    }
    for &bank in &banks {
        let v = measure::replay(bank, recorded);
        let actual = tpm.get(&(bank, measure::PCR));
        let ok = actual == Some(&v);
        if !ok {
            problems.push(format!(
                "PCR {} ({}): Drover's events replay to {}, the TPM holds {}",
                measure::PCR,
                bank.name(),
                hex::encode(&v),
                actual
                    .map(hex::encode)
                    .unwrap_or_else(|| "nothing read".into())
            ));
        }
        pcrs.push(PcrCheck {
            bank,
            pcr: measure::PCR,
            replayed: hex::encode(&v),
            tpm: actual.map(hex::encode).unwrap_or_default(),
            log: "drover",
            ok,
        });
    }

    let mut events = Vec::new();
    let n = recorded.len().max(expected.len());
    for i in 0..n {
        let r = recorded.get(i);
        let e = expected.get(i);
        let component = r.or(e).map(|x| x.component.clone()).unwrap_or_default();
        let ok = match (r, e) {
            (Some(r), Some(e)) => r.component == e.component && r.value == e.value,
            _ => false,
        };
        if !ok {
            problems.push(format!(
                "event {} ({component}): measured {}, the signed manifest says {}",
                i + 1,
                r.map(|x| format!("{}:{}", x.component, x.value))
                    .unwrap_or_else(|| "nothing".into()),
                e.map(|x| format!("{}:{}", x.component, x.value))
                    .unwrap_or_else(|| "nothing".into())
            ));
        }
        events.push(EventCheck {
            component,
            recorded: r.map(|x| x.value.clone()),
            expected: e.map(|x| x.value.clone()),
            ok,
        });
    }
    Verification {
        verified: problems.is_empty() && !pcrs.is_empty(),
        pcrs,
        events,
        problems,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eventlog;

    fn setup() -> (EventLog, PcrValues, Vec<Event>) {
        let bytes = eventlog::build(
            &[Bank::Sha256],
            &[
                (0, 8, b"fw".to_vec()),
                (4, 0x8000_0003, b"sd-boot".to_vec()),
            ],
        );
        let log = eventlog::parse(&bytes).unwrap();
        let ev = vec![
            Event::new("slot", "USR-A", "USR-A"),
            Event::new("root-hash", "ab", "root"),
        ];
        let mut tpm = BTreeMap::new();
        for (pcr, v) in log.replay(Bank::Sha256).unwrap() {
            tpm.insert((Bank::Sha256, pcr), v);
        }
        tpm.insert((Bank::Sha256, 8), measure::replay(Bank::Sha256, &ev));
        (log, tpm, ev)
    }

    #[test]
    fn a_consistent_boot_verifies() {
        let (log, tpm, ev) = setup();
        let v = verify(Some(&log), &tpm, &ev, &ev);
        assert!(v.verified, "{:?}", v.problems);
        assert_eq!(v.pcrs.len(), 3);
    }

    #[test]
    fn every_difference_is_named() {
        let (log, mut tpm, ev) = setup();
        // A PCR the firmware log does not explain.
        tpm.insert((Bank::Sha256, 4), vec![1; 32]);
        // The stage measured another root hash than the manifest says.
        let mut other = ev.clone();
        other[1].value = "cd".into();
        let v = verify(Some(&log), &tpm, &ev, &other);
        assert!(!v.verified);
        assert!(
            v.problems.iter().any(|p| p.starts_with("PCR 4 (sha256)")),
            "{:?}",
            v.problems
        );
        assert!(
            v.problems.iter().any(|p| p.contains("event 2 (root-hash)")),
            "{:?}",
            v.problems
        );
        // Events recorded but PCR 8 not extended with them.
        let (log, mut tpm, ev) = setup();
        tpm.insert((Bank::Sha256, 8), vec![0; 32]);
        let v = verify(Some(&log), &tpm, &ev, &ev);
        assert!(v
            .problems
            .iter()
            .any(|p| p.starts_with("PCR 8 (sha256): Drover's events")));
        // No log.
        let v = verify(None, &tpm, &ev, &ev);
        assert!(!v.verified);
    }
}
