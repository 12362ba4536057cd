//! The firmware's TCG event log (TCG PC Client Platform Firmware Profile,
//! crypto-agile format), as Linux exposes it in
//! `/sys/kernel/security/tpm0/binary_bios_measurements`: parsed and
//! replayed into the PCR values it claims.
//!
//! Layout: a first event in the old SHA-1 format (`TCG_PCClientPCREvent`,
//! type `EV_NO_ACTION`) whose data is the `Spec ID Event03` structure
//! listing the banks and their digest sizes; then `TCG_PCR_EVENT2` events,
//! each with one digest per bank. `EV_NO_ACTION` events are not extended;
//! a `StartupLocality` one sets PCR 0's initial value to the locality.
//!
//! Everything is read from untrusted bytes: lengths are checked against
//! what is left, counts are bounded, and a malformed log is an error that
//! says at which byte offset, never a panic.

use std::collections::BTreeMap;

use crate::measured::measure::Bank;

/// `EV_NO_ACTION`: information, not extended.
pub const EV_NO_ACTION: u32 = 0x3;
/// `EV_SEPARATOR`.
pub const EV_SEPARATOR: u32 = 0x4;
/// `EV_EFI_BOOT_SERVICES_APPLICATION`: an EFI binary the firmware loaded.
pub const EV_EFI_BOOT_SERVICES_APPLICATION: u32 = 0x8000_0003;

/// One event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEvent {
    /// Byte offset in the log (for messages).
    pub offset: usize,
    /// The PCR.
    pub pcr: u32,
    /// Event type.
    pub event_type: u32,
    /// Digest per bank (banks the parser does not know are kept by id in
    /// `other_digests`).
    pub digests: BTreeMap<BankKey, Vec<u8>>,
    /// Event data.
    pub data: Vec<u8>,
}

/// A bank as a map key (ordered).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct BankKey(pub u16);

impl BankKey {
    /// The bank, when Drover knows it.
    pub fn bank(self) -> Option<Bank> {
        Bank::from_tpm_alg(self.0)
    }
}

/// A parsed log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventLog {
    /// Banks and digest sizes from the Spec ID event.
    pub banks: Vec<(BankKey, usize)>,
    /// PCR 0's locality from a `StartupLocality` event (0 without one).
    pub startup_locality: u8,
    /// Every event after the Spec ID event, in order.
    pub events: Vec<LogEvent>,
}

/// A malformed log.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("TCG event log, byte {offset}: {reason}")]
pub struct ParseError {
    /// Where.
    pub offset: usize,
    /// What.
    pub reason: String,
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn err(&self, reason: impl Into<String>) -> ParseError {
        ParseError {
            offset: self.pos,
            reason: reason.into(),
        }
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], ParseError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.b.len())
            .ok_or_else(|| {
                self.err(format!(
                    "{what}: {n} bytes wanted, {} left",
                    self.b.len() - self.pos
                ))
            })?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u16(&mut self, what: &str) -> Result<u16, ParseError> {
        let s = self.take(2, what)?;
        Ok(u16::from_le_bytes([s[0], s[1]]))
    }

    fn u32(&mut self, what: &str) -> Result<u32, ParseError> {
        let s = self.take(4, what)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
}

const SPEC_ID: &[u8; 16] = b"Spec ID Event03\0";
const STARTUP_LOCALITY: &[u8; 16] = b"StartupLocality\0";
/// Bound on counts read from the log (banks per event, event size).
const MAX_BANKS: u32 = 16;
const MAX_EVENT_DATA: u32 = 16 << 20;

/// Parses a crypto-agile event log.
pub fn parse(bytes: &[u8]) -> Result<EventLog, ParseError> {
    let mut r = Reader { b: bytes, pos: 0 };
    // The first event, SHA-1 format.
    let pcr = r.u32("first event's PCR")?;
    let ty = r.u32("first event's type")?;
    r.take(20, "first event's SHA-1 digest")?;
    let size = r.u32("first event's size")?;
    if ty != EV_NO_ACTION || pcr != 0 {
        return Err(ParseError {
            offset: 0,
            reason: format!(
                "the first event is type {ty:#x} on PCR {pcr}, not the Spec ID event (a SHA-1-only log is not supported)"
            ),
        });
    }
    let spec_start = r.pos;
    let spec = r.take(size as usize, "Spec ID event")?;
    let mut s = Reader { b: spec, pos: 0 };
    let sig = s.take(16, "signature")?;
    if sig != SPEC_ID {
        return Err(ParseError {
            offset: spec_start,
            reason: "the first event is not 'Spec ID Event03' (not a crypto-agile log)".into(),
        });
    }
    s.take(4 + 4, "platform class and versions")?;
    let n = s.u32("number of algorithms")?;
    if n == 0 || n > MAX_BANKS {
        return Err(ParseError {
            offset: spec_start + s.pos,
            reason: format!("{n} algorithms in the Spec ID event"),
        });
    }
    let mut banks = Vec::new();
    for _ in 0..n {
        let alg = s.u16("algorithm id")?;
        let size = s.u16("digest size")? as usize;
        if let Some(b) = Bank::from_tpm_alg(alg) {
            if b.size() != size {
                return Err(ParseError {
                    offset: spec_start + s.pos,
                    reason: format!("{} with digest size {size}", b.name()),
                });
            }
        }
        if size == 0 || size > 64 {
            return Err(ParseError {
                offset: spec_start + s.pos,
                reason: format!("digest size {size} for algorithm {alg:#06x}"),
            });
        }
        banks.push((BankKey(alg), size));
    }

    let mut log = EventLog {
        banks,
        startup_locality: 0,
        events: Vec::new(),
    };
    while r.pos < bytes.len() {
        let offset = r.pos;
        let pcr = r.u32("PCR index")?;
        let event_type = r.u32("event type")?;
        let count = r.u32("digest count")?;
        if count > MAX_BANKS {
            return Err(ParseError {
                offset,
                reason: format!("{count} digests in one event"),
            });
        }
        let mut digests = BTreeMap::new();
        for _ in 0..count {
            let alg = r.u16("digest algorithm")?;
            let size = log
                .banks
                .iter()
                .find(|(k, _)| k.0 == alg)
                .map(|(_, s)| *s)
                .ok_or_else(|| {
                    r.err(format!("algorithm {alg:#06x} is not in the Spec ID event"))
                })?;
            let d = r.take(size, "digest")?.to_vec();
            digests.insert(BankKey(alg), d);
        }
        let size = r.u32("event size")?;
        if size > MAX_EVENT_DATA {
            return Err(ParseError {
                offset,
                reason: format!("event data of {size} bytes"),
            });
        }
        let data = r.take(size as usize, "event data")?.to_vec();
        if event_type == EV_NO_ACTION && data.len() >= 17 && data[..16] == STARTUP_LOCALITY[..] {
            log.startup_locality = data[16];
        }
        log.events.push(LogEvent {
            offset,
            pcr,
            event_type,
            digests,
            data,
        });
    }
    Ok(log)
}

impl EventLog {
    /// Replays `bank`: the value every PCR the log touches should have,
    /// by PCR index. `EV_NO_ACTION` events are skipped; an event without a
    /// digest for the bank is an error (the log cannot vouch for it).
    pub fn replay(&self, bank: Bank) -> Result<BTreeMap<u32, Vec<u8>>, ParseError> {
        let key = self
            .banks
            .iter()
            .find(|(k, _)| k.bank() == Some(bank))
            .map(|(k, _)| *k)
            .ok_or_else(|| ParseError {
                offset: 0,
                reason: format!("the log has no {} bank", bank.name()),
            })?;
        let mut pcrs: BTreeMap<u32, Vec<u8>> = BTreeMap::new();
        for e in &self.events {
            if e.event_type == EV_NO_ACTION {
                continue;
            }
            let d = e.digests.get(&key).ok_or_else(|| ParseError {
                offset: e.offset,
                reason: format!("event on PCR {} has no {} digest", e.pcr, bank.name()),
            })?;
            let cur = pcrs.entry(e.pcr).or_insert_with(|| {
                let mut v = vec![0u8; bank.size()];
                if e.pcr == 0 {
                    v[bank.size() - 1] = self.startup_locality;
                }
                v
            });
            *cur = bank.extend(cur, d);
        }
        Ok(pcrs)
    }
}

/// Builds a crypto-agile log (for tests and for the stage's own events in
/// the same format): the Spec ID event for `banks`, then `events` as
/// `(pcr, type, data)`, each digest the bank's hash of `data`.
pub fn build(banks: &[Bank], events: &[(u32, u32, Vec<u8>)]) -> Vec<u8> {
    let mut spec = Vec::new();
    spec.extend_from_slice(SPEC_ID);
    spec.extend_from_slice(&0u32.to_le_bytes()); // platform class
    spec.extend_from_slice(&[0, 2, 0, 2]); // minor, major, errata, uintn size
    spec.extend_from_slice(&(banks.len() as u32).to_le_bytes());
    for b in banks {
        spec.extend_from_slice(&b.tpm_alg().to_le_bytes());
        spec.extend_from_slice(&(b.size() as u16).to_le_bytes());
    }
    spec.push(0); // vendor info size
    let mut out = Vec::new();
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&EV_NO_ACTION.to_le_bytes());
    out.extend_from_slice(&[0u8; 20]);
    out.extend_from_slice(&(spec.len() as u32).to_le_bytes());
    out.extend_from_slice(&spec);
    for (pcr, ty, data) in events {
        out.extend_from_slice(&pcr.to_le_bytes());
        out.extend_from_slice(&ty.to_le_bytes());
        out.extend_from_slice(&(banks.len() as u32).to_le_bytes());
        for b in banks {
            out.extend_from_slice(&b.tpm_alg().to_le_bytes());
            out.extend_from_slice(&b.hash(data));
        }
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(data);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_built_log_parses_and_replays_like_the_tpm_would_extend() {
        let events = vec![
            (0, 0x8, b"firmware blob".to_vec()),
            (7, 0x8000_00e0, b"secure boot state".to_vec()),
            (0, EV_SEPARATOR, vec![0, 0, 0, 0]),
            (
                4,
                EV_EFI_BOOT_SERVICES_APPLICATION,
                b"systemd-boot".to_vec(),
            ),
        ];
        let bytes = build(&[Bank::Sha1, Bank::Sha256], &events);
        let log = parse(&bytes).unwrap();
        assert_eq!(log.events.len(), 4);
        assert_eq!(log.banks.len(), 2);
        let pcrs = log.replay(Bank::Sha256).unwrap();
        // PCR 0 by hand: extend(extend(0, H(blob)), H(separator)).
        let z = vec![0u8; 32];
        let e1 = Bank::Sha256.hash(&[z, Bank::Sha256.hash(b"firmware blob")].concat());
        let e2 = Bank::Sha256.hash(&[e1, Bank::Sha256.hash(&[0, 0, 0, 0])].concat());
        assert_eq!(pcrs[&0], e2);
        assert_eq!(pcrs.keys().copied().collect::<Vec<_>>(), vec![0, 4, 7]);
        assert_eq!(log.replay(Bank::Sha1).unwrap()[&4].len(), 20);
        assert!(log.replay(Bank::Sha384).is_err());
    }

    #[test]
    fn startup_locality_sets_pcr0s_start() {
        let mut loc = STARTUP_LOCALITY.to_vec();
        loc.push(3);
        let bytes = build(
            &[Bank::Sha256],
            &[(0, EV_NO_ACTION, loc), (0, 0x8, b"x".to_vec())],
        );
        let log = parse(&bytes).unwrap();
        assert_eq!(log.startup_locality, 3);
        let mut start = vec![0u8; 32];
        start[31] = 3;
        let want = Bank::Sha256.hash(&[start, Bank::Sha256.hash(b"x")].concat());
        assert_eq!(log.replay(Bank::Sha256).unwrap()[&0], want);
    }

    #[test]
    fn malformed_logs_are_errors_with_an_offset() {
        let good = build(&[Bank::Sha256], &[(0, 0x8, b"data".to_vec())]);
        // Every truncation is an error (or, at an event boundary, fewer events).
        for cut in 0..good.len() {
            match parse(&good[..cut]) {
                Ok(l) => assert!(l.events.is_empty(), "cut {cut}"),
                Err(e) => assert!(e.offset <= cut, "cut {cut}: {e}"),
            }
        }
        // Not a crypto-agile log.
        let mut bad = good.clone();
        bad[32] = b'X';
        assert!(parse(&bad).unwrap_err().reason.contains("Spec ID"));
        // A digest count far too large.
        let mut bad = good.clone();
        let ev = good.len() - (4 + 4 + 4 + 2 + 32 + 4 + 4);
        bad[ev + 8..ev + 12].copy_from_slice(&1000u32.to_le_bytes());
        assert!(parse(&bad).unwrap_err().reason.contains("1000 digests"));
        // An algorithm the Spec ID event did not announce.
        let mut bad = good;
        bad[ev + 12..ev + 14].copy_from_slice(&0x0012u16.to_le_bytes());
        assert!(parse(&bad)
            .unwrap_err()
            .reason
            .contains("not in the Spec ID"));
    }
}
