//! The gptprio selection rule, in exactly one place.
//!
//! This is the rule of CoreOS's GRUB `gptprio.next`, which `drover-boot`
//! runs at every boot and `droverctl slots` runs to predict the next boot:
//!
//! * a slot is a *candidate* when it has tries left or has booted successfully;
//! * walking the slots in partition order, a candidate wins only with a
//!   priority strictly greater than the best so far, which starts at 0 — so
//!   priority 0 never boots and a tie goes to the lower partition number;
//! * a winner with tries left has them decremented (and the table written by
//!   the caller) before anything of the slot runs.
//!
//! When no slot wins, Drover does not leave the machine with nothing to boot:
//! the slot that last booted successfully is booted (the successful one with
//! the highest priority, a tie to the lower partition number). Only when no
//! slot has ever booted successfully is the answer a rescue console.

use crate::gptprio::GptPrio;
use crate::slot::SlotId;

/// A slot as the rule sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotView {
    /// Which slot.
    pub slot: SlotId,
    /// Its GPT partition number; decides ties.
    pub partition: u32,
    /// Its attribute bits.
    pub prio: GptPrio,
}

/// What the rule decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Boot this slot. When `consume_try` is set, its tries must be
    /// decremented and the table written before the slot runs.
    Boot {
        /// The winning slot.
        slot: SlotId,
        /// Whether a try is used up by this boot.
        consume_try: bool,
    },
    /// No slot is bootable by the rule; boot this last successful slot anyway.
    Fallback {
        /// The slot that booted successfully before.
        slot: SlotId,
    },
    /// Nothing can be booted; the reason says why.
    Rescue {
        /// A sentence for the rescue console.
        reason: &'static str,
    },
}

impl Decision {
    /// The slot that will be booted, if any.
    pub fn slot(&self) -> Option<SlotId> {
        match *self {
            Decision::Boot { slot, .. } | Decision::Fallback { slot } => Some(slot),
            Decision::Rescue { .. } => None,
        }
    }

    /// A short word for the kind of decision: `candidate`, `fallback` or `rescue`.
    pub fn kind(&self) -> &'static str {
        match self {
            Decision::Boot { .. } => "candidate",
            Decision::Fallback { .. } => "fallback",
            Decision::Rescue { .. } => "rescue",
        }
    }
}

/// Applies the gptprio rule to the slots. Pure: changes nothing.
pub fn select(slots: &[SlotView]) -> Decision {
    let mut ordered: Vec<&SlotView> = slots.iter().collect();
    ordered.sort_by_key(|s| s.partition);

    let mut best: Option<&SlotView> = None;
    let mut best_priority = 0u8;
    for s in &ordered {
        if s.prio.is_candidate() && s.prio.priority() > best_priority {
            best_priority = s.prio.priority();
            best = Some(s);
        }
    }
    if let Some(winner) = best {
        return Decision::Boot {
            slot: winner.slot,
            consume_try: winner.prio.tries() > 0,
        };
    }

    let mut fallback: Option<&SlotView> = None;
    for s in &ordered {
        if s.prio.successful() && fallback.is_none_or(|f| s.prio.priority() > f.prio.priority()) {
            fallback = Some(s);
        }
    }
    match fallback {
        Some(s) => Decision::Fallback { slot: s.slot },
        None if slots.is_empty() => Decision::Rescue {
            reason: "the disk has no USR-A or USR-B partition",
        },
        None => Decision::Rescue {
            reason: "no slot has tries left or has ever booted successfully",
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(slot: SlotId, priority: u8, tries: u8, successful: bool) -> SlotView {
        SlotView {
            slot,
            partition: slot.default_partition(),
            prio: GptPrio::default()
                .with_priority(priority)
                .with_tries(tries)
                .with_successful(successful),
        }
    }

    fn boot(slot: SlotId, consume_try: bool) -> Decision {
        Decision::Boot { slot, consume_try }
    }

    use SlotId::{A, B};

    /// (priority, tries, successful)
    type Bits = (u8, u8, bool);

    #[test]
    fn every_combination_that_matters() {
        // (A: prio, tries, ok), (B: prio, tries, ok) -> decision
        let cases: &[(Bits, Bits, Decision)] = &[
            // Fresh install: A good, B empty.
            ((1, 0, true), (0, 0, false), boot(A, false)),
            // Update staged in B: B higher priority with one try.
            ((1, 0, true), (2, 1, false), boot(B, true)),
            // B's try was used up without success: back to A.
            ((1, 0, true), (2, 0, false), boot(A, false)),
            // B blessed.
            ((1, 0, true), (2, 0, true), boot(B, false)),
            // Equal priorities: the lower partition number wins.
            ((2, 0, true), (2, 0, true), boot(A, false)),
            ((1, 3, false), (1, 3, false), boot(A, true)),
            // Equal priority but A not a candidate: B wins.
            ((2, 0, false), (2, 0, true), boot(B, false)),
            // Successful with tries left still consumes a try.
            ((1, 2, true), (0, 0, false), boot(A, true)),
            // Priority 0 never boots by the rule, even when successful.
            ((0, 5, true), (1, 1, false), boot(B, true)),
            // Higher priority but no tries and not successful: lower one wins.
            ((1, 0, true), (15, 0, false), boot(A, false)),
            // Neither bootable: fall back to the successful one.
            ((0, 0, true), (0, 0, false), Decision::Fallback { slot: A }),
            ((0, 0, false), (0, 0, true), Decision::Fallback { slot: B }),
            // Both successful but priority 0: the higher priority (tie: lower number).
            ((0, 0, true), (0, 0, true), Decision::Fallback { slot: A }),
            // Nothing at all.
            (
                (0, 0, false),
                (0, 0, false),
                Decision::Rescue {
                    reason: "no slot has tries left or has ever booted successfully",
                },
            ),
            (
                (3, 0, false),
                (2, 0, false),
                Decision::Rescue {
                    reason: "no slot has tries left or has ever booted successfully",
                },
            ),
        ];
        for (i, (a, b, want)) in cases.iter().enumerate() {
            let slots = [view(A, a.0, a.1, a.2), view(B, b.0, b.1, b.2)];
            assert_eq!(select(&slots), *want, "case {i}: A={a:?} B={b:?}");
            // The order the caller lists the slots in does not matter.
            let reversed = [slots[1], slots[0]];
            assert_eq!(select(&reversed), *want, "case {i} reversed");
        }
    }

    #[test]
    fn one_slot_only() {
        assert_eq!(select(&[view(A, 1, 0, true)]), boot(A, false));
        assert_eq!(select(&[view(B, 1, 1, false)]), boot(B, true));
        assert!(matches!(select(&[]), Decision::Rescue { .. }));
    }

    #[test]
    fn exhaustive_rule_properties() {
        // Every attribute combination of two slots: the winner is bootable,
        // no bootable slot has a higher priority, and ties go to A.
        for pa in 0..=15u8 {
            for pb in 0..=15u8 {
                for ta in [0u8, 1, 15] {
                    for tb in [0u8, 1, 15] {
                        for sa in [false, true] {
                            for sb in [false, true] {
                                let a = view(A, pa, ta, sa);
                                let b = view(B, pb, tb, sb);
                                let d = select(&[a, b]);
                                let bootable: Vec<_> = [a, b]
                                    .into_iter()
                                    .filter(|s| s.prio.is_bootable())
                                    .collect();
                                match d {
                                    Decision::Boot { slot, consume_try } => {
                                        let w = if slot == A { a } else { b };
                                        assert!(w.prio.is_bootable());
                                        assert_eq!(consume_try, w.prio.tries() > 0);
                                        for o in &bootable {
                                            assert!(o.prio.priority() <= w.prio.priority());
                                            if o.prio.priority() == w.prio.priority() {
                                                assert!(w.partition <= o.partition);
                                            }
                                        }
                                    }
                                    Decision::Fallback { slot } => {
                                        assert!(bootable.is_empty());
                                        let w = if slot == A { a } else { b };
                                        assert!(w.prio.successful());
                                    }
                                    Decision::Rescue { .. } => {
                                        assert!(bootable.is_empty());
                                        assert!(!sa && !sb);
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
