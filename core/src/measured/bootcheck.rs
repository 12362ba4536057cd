//! Verifying a measured boot on the node: the firmware's event log and the
//! stage's own events replayed and compared with the PCR values the TPM
//! holds, and the stage's events compared with what the booted slot's
//! signed manifest predicts. Pure: the caller reads the log, the PCRs and
//! the boot record, and gets back every check with its verdict.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::manifest::ReferenceValue;
use crate::measured::eventlog::{self, EventLog};
use crate::measured::measure::{self, Bank, Event};

/// The boot stage's components on the ESP, as the firmware's log shows
/// them: the first two EFI programs started from the boot option (PCR 4,
/// Authenticode digests), the stage kernel's command line as systemd-boot
/// passes it (PCR 12, and PCR 9 by the kernel's EFI stub), the stage
/// initramfs as the EFI stub loads it (PCR 9, `Linux initrd`).
pub const STAGE_COMPONENTS: [&str; 4] = [
    "systemd-boot",
    "stage-kernel",
    "stage-cmdline",
    "stage-initramfs",
];

/// `EV_IPL`: systemd-boot's record of the command line it passes on.
const EV_IPL: u32 = 0xd;
/// `EV_EVENT_TAG`: the Linux EFI stub's tagged events in PCR 9.
const EV_EVENT_TAG: u32 = 0x6;
/// The EFI stub's tag for the initrd it loaded.
const TAG_LINUX_INITRD: u32 = 0x8F3B_22EC;
/// The EFI stub's tag for its load options (the command line).
const TAG_LOAD_OPTIONS: u32 = 0x8F3B_22ED;

/// What the firmware log says of the boot stage: `(component, PCR,
/// SHA-256 hex)` in log order. An EFI program after the first two is named
/// `efi-program-N`: nothing of Drover's, and never expected.
pub fn stage_measurements(log: &EventLog) -> Vec<(String, u32, String)> {
    let sha256 = |e: &eventlog::LogEvent| {
        e.digests
            .get(&eventlog::BankKey(Bank::Sha256.tpm_alg()))
            .map(hex::encode)
    };
    let mut out = Vec::new();
    let mut programs = 0;
    for e in &log.events {
        let component = match (e.pcr, e.event_type) {
            (4, eventlog::EV_EFI_BOOT_SERVICES_APPLICATION) => {
                programs += 1;
                match programs {
                    1 => "systemd-boot".to_string(),
                    2 => "stage-kernel".to_string(),
                    n => format!("efi-program-{n}"),
                }
            }
            (12, EV_IPL) => "stage-cmdline".into(),
            (9, EV_EVENT_TAG) => {
                let tag = e
                    .data
                    .get(..4)
                    .map(|b| u32::from_le_bytes(b.try_into().expect("4")));
                match tag {
                    Some(TAG_LINUX_INITRD) => "stage-initramfs".into(),
                    Some(TAG_LOAD_OPTIONS) => "stage-cmdline".into(),
                    _ => continue,
                }
            }
            _ => continue,
        };
        out.push((component, e.pcr, sha256(e).unwrap_or_default()));
    }
    out
}

/// Compares what the firmware measured of the boot stage with the signed
/// reference values: every measurement of a component must equal its
/// reference, each component must have been measured, and no other EFI
/// program may have run.
pub fn check_stage(log: &EventLog, reference: &[ReferenceValue]) -> (Vec<EventCheck>, Vec<String>) {
    let mut checks = Vec::new();
    let mut problems = Vec::new();
    let measured = stage_measurements(log);
    let expected = |c: &str| {
        reference
            .iter()
            .find(|r| r.component == c)
            .map(|r| r.sha256.clone())
    };
    for (component, pcr, value) in &measured {
        let want = expected(component);
        let ok = want.as_deref() == Some(value.as_str());
        if !ok {
            problems.push(match &want {
                Some(w) => format!(
                    "{component} (PCR {pcr}): the firmware measured {value}, the signed reference value is {w}"
                ),
                None => format!(
                    "{component} (PCR {pcr}): the firmware measured {value}, which no signed reference value explains"
                ),
            });
        }
        checks.push(EventCheck {
            component: component.clone(),
            pcr: *pcr,
            recorded: Some(value.clone()),
            expected: want,
            ok,
        });
    }
    for c in STAGE_COMPONENTS {
        if !measured.iter().any(|(m, _, _)| m == c) {
            problems.push(format!("{c}: the firmware log has no measurement of it"));
            checks.push(EventCheck {
                component: c.into(),
                pcr: 0,
                recorded: None,
                expected: expected(c),
                ok: false,
            });
        }
    }
    (checks, problems)
}

/// Which log a PCR was replayed from.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Log {
    /// The firmware's TCG event log.
    Firmware,
    /// The boot stage's events (the boot record).
    Drover,
}

/// One PCR of one bank.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
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
    pub log: Log,
    /// Whether they are equal.
    pub ok: bool,
}

/// One measured component against its signed reference value.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct EventCheck {
    /// `slot`, `manifest`, `root-hash`, `slot-kernel`, … (the stage's
    /// events) or `systemd-boot`, `stage-kernel`, `stage-cmdline`,
    /// `stage-initramfs` (the firmware's events).
    pub component: String,
    /// The PCR the measurement went into.
    pub pcr: u32,
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
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
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
    stage: Option<&[ReferenceValue]>,
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
                                log: Log::Firmware,
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
            log: Log::Drover,
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
            pcr: measure::PCR,
            recorded: r.map(|x| x.value.clone()),
            expected: e.map(|x| x.value.clone()),
            ok,
        });
    }
    match (firmware, stage) {
        (Some(log), Some(reference)) => {
            let (checks, p) = check_stage(log, reference);
            events.extend(checks);
            problems.extend(p);
        }
        (Some(_), None) => problems.push(
            "no signed reference values for the boot stage: the ESP's stage cannot be checked"
                .into(),
        ),
        (None, _) => {}
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
    use crate::measured::eventlog;

    fn initrd_tag(data: &[u8]) -> Vec<u8> {
        // The stub's tagged event data; its digest is over the initrd, but
        // the builder hashes the event data, so the reference below is the
        // hash of these bytes.
        let mut v = TAG_LINUX_INITRD.to_le_bytes().to_vec();
        v.extend_from_slice(&(data.len() as u32).to_le_bytes());
        v.extend_from_slice(data);
        v
    }

    fn stage_events() -> Vec<(u32, u32, Vec<u8>)> {
        vec![
            (0, 8, b"fw".to_vec()),
            (
                4,
                eventlog::EV_EFI_BOOT_SERVICES_APPLICATION,
                b"sd-boot".to_vec(),
            ),
            (
                4,
                eventlog::EV_EFI_BOOT_SERVICES_APPLICATION,
                b"vmlinuz".to_vec(),
            ),
            (12, EV_IPL, b"cmdline".to_vec()),
            (9, EV_EVENT_TAG, initrd_tag(b"Linux initrd")),
        ]
    }

    fn reference(events: &[(u32, u32, Vec<u8>)]) -> Vec<ReferenceValue> {
        let names = [
            "systemd-boot",
            "stage-kernel",
            "stage-cmdline",
            "stage-initramfs",
        ];
        events[1..]
            .iter()
            .zip(names)
            .map(|((_, _, data), c)| ReferenceValue {
                component: c.into(),
                sha256: hex::encode(Bank::Sha256.hash(data)),
            })
            .collect()
    }

    fn setup(fw: &[(u32, u32, Vec<u8>)]) -> (EventLog, PcrValues, Vec<Event>) {
        let bytes = eventlog::build(&[Bank::Sha256], fw);
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
        let fw = stage_events();
        let (log, tpm, ev) = setup(&fw);
        let v = verify(Some(&log), &tpm, &ev, &ev, Some(&reference(&fw)));
        assert!(v.verified, "{:?}", v.problems);
        assert_eq!(v.pcrs.len(), 5);
        assert_eq!(v.events.len(), 2 + 4);
    }

    #[test]
    fn every_difference_is_named() {
        let fw = stage_events();
        let refs = reference(&fw);
        let (log, mut tpm, ev) = setup(&fw);
        // A PCR the firmware log does not explain.
        tpm.insert((Bank::Sha256, 4), vec![1; 32]);
        // The stage measured another root hash than the manifest says.
        let mut other = ev.clone();
        other[1].value = "cd".into();
        let v = verify(Some(&log), &tpm, &ev, &other, Some(&refs));
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
        let (log, mut tpm, ev) = setup(&fw);
        tpm.insert((Bank::Sha256, 8), vec![0; 32]);
        let v = verify(Some(&log), &tpm, &ev, &ev, Some(&refs));
        assert!(v
            .problems
            .iter()
            .any(|p| p.starts_with("PCR 8 (sha256): Drover's events")));
        // No log; no stage references.
        let v = verify(None, &tpm, &ev, &ev, Some(&refs));
        assert!(!v.verified);
        let (log, tpm, ev) = setup(&fw);
        let v = verify(Some(&log), &tpm, &ev, &ev, None);
        assert!(!v.verified);
        assert!(
            v.problems[0].contains("no signed reference values"),
            "{:?}",
            v.problems
        );
    }

    #[test]
    fn a_changed_stage_is_named_even_when_the_log_is_consistent() {
        let fw = stage_events();
        let refs = reference(&fw);
        // Another initramfs: the log and the TPM agree with each other.
        let mut changed = fw.clone();
        changed[4].2 = initrd_tag(b"Linux initrd, modified");
        let (log, tpm, ev) = setup(&changed);
        let v = verify(Some(&log), &tpm, &ev, &ev, Some(&refs));
        assert!(!v.verified);
        assert_eq!(v.problems.len(), 1, "{:?}", v.problems);
        assert!(v.problems[0].starts_with("stage-initramfs (PCR 9): the firmware measured"));
        // A third EFI program, and no command line.
        let mut changed = fw.clone();
        changed[3] = (
            4,
            eventlog::EV_EFI_BOOT_SERVICES_APPLICATION,
            b"shell".to_vec(),
        );
        let (log, tpm, ev) = setup(&changed);
        let v = verify(Some(&log), &tpm, &ev, &ev, Some(&refs));
        assert!(
            v.problems
                .iter()
                .any(|p| p.starts_with("efi-program-3 (PCR 4)")),
            "{:?}",
            v.problems
        );
        assert!(v
            .problems
            .iter()
            .any(|p| p == "stage-cmdline: the firmware log has no measurement of it"));
    }
}
