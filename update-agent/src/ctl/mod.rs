//! `droverctl` subcommands, one file each.

pub mod attest;
pub mod lock;
pub mod mark_successful;
pub mod online;
pub mod rollback;
pub mod security_floor;
pub mod slots;
pub mod update;
pub mod verify_boot;

use drover_core::{Decision, Slots};
use serde::Serialize;

/// One slot, as `droverctl` prints it.
#[derive(Debug, Serialize)]
pub struct SlotJson {
    /// GPT label.
    pub label: &'static str,
    /// Partition number.
    pub partition: u32,
    /// gptprio priority.
    pub priority: u8,
    /// Tries remaining.
    pub tries: u8,
    /// Successful bit.
    pub successful: bool,
}

/// Both slots and what the boot stage would do next.
#[derive(Debug, Serialize)]
pub struct SlotsJson {
    /// USR-A then USR-B.
    pub slots: Vec<SlotJson>,
    /// Label of the slot that boots next; null when nothing would boot.
    pub next: Option<&'static str>,
    /// `candidate` (chosen by the rule), `fallback` (no candidate; the last
    /// successful slot) or `rescue` (nothing to boot).
    pub decision: &'static str,
    /// Why the machine would need the rescue console, when it would.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
}

impl SlotsJson {
    /// Describes the slots of a disk.
    pub fn from_slots(s: &Slots) -> Self {
        let d = s.next_boot();
        Self {
            slots: drover_core::SlotId::ALL
                .iter()
                .map(|&id| {
                    let st = s.get(id);
                    SlotJson {
                        label: id.label(),
                        partition: st.partition,
                        priority: st.prio.priority(),
                        tries: st.prio.tries(),
                        successful: st.prio.successful(),
                    }
                })
                .collect(),
            next: d.slot().map(|s| s.label()),
            decision: d.kind(),
            reason: match d {
                Decision::Rescue { reason } => Some(reason),
                _ => None,
            },
        }
    }

    /// Prints the table people read.
    pub fn print_text(&self) {
        println!(
            "{:<8} {:>4} {:>8} {:>5} {:>10}",
            "SLOT", "PART", "PRIORITY", "TRIES", "SUCCESSFUL"
        );
        for s in &self.slots {
            println!(
                "{:<8} {:>4} {:>8} {:>5} {:>10}",
                s.label,
                s.partition,
                s.priority,
                s.tries,
                if s.successful { "yes" } else { "no" }
            );
        }
        match (self.next, self.reason) {
            (Some(n), _) if self.decision == "fallback" => {
                println!("next boot: {n} (fallback: no slot is a candidate, booting the last successful one)")
            }
            (Some(n), _) => println!("next boot: {n}"),
            (None, Some(r)) => println!("next boot: none — rescue console ({r})"),
            (None, None) => println!("next boot: none"),
        }
    }
}
