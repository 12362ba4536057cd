//! The ChromeOS/CoreOS "gptprio" attribute bits of a GPT partition entry.
//!
//! | bits  | meaning                         |
//! |-------|---------------------------------|
//! | 48–51 | priority, 0–15 (0 never boots)  |
//! | 52–55 | tries remaining, 0–15           |
//! | 56    | successful (has booted fully)   |
//!
//! Every other bit of the 64-bit attribute field (the UEFI bits 0–2 and the
//! rest of the type-specific bits) is carried through untouched.

use std::fmt;

const PRIORITY_SHIFT: u32 = 48;
const TRIES_SHIFT: u32 = 52;
const SUCCESSFUL_SHIFT: u32 = 56;
const NIBBLE: u64 = 0xf;

/// The largest value the priority and tries fields can hold.
pub const MAX_FIELD: u8 = 15;

/// A GPT partition entry's attribute field, read through the gptprio lens.
///
/// All setters change this value only; nothing is written anywhere.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct GptPrio(u64);

impl GptPrio {
    /// Wraps the raw 64-bit attribute field.
    pub const fn from_raw(raw: u64) -> Self {
        Self(raw)
    }

    /// The raw attribute field, including bits gptprio does not own.
    pub const fn raw(self) -> u64 {
        self.0
    }

    /// Boot priority, 0–15. Priority 0 never boots.
    pub const fn priority(self) -> u8 {
        ((self.0 >> PRIORITY_SHIFT) & NIBBLE) as u8
    }

    /// Boot attempts left before the slot stops being a candidate, 0–15.
    pub const fn tries(self) -> u8 {
        ((self.0 >> TRIES_SHIFT) & NIBBLE) as u8
    }

    /// Whether the slot has booted successfully.
    pub const fn successful(self) -> bool {
        (self.0 >> SUCCESSFUL_SHIFT) & 1 == 1
    }

    /// A slot is a candidate when it has tries left or has booted
    /// successfully (its priority is judged separately by the rule).
    pub const fn is_candidate(self) -> bool {
        self.tries() > 0 || self.successful()
    }

    /// A slot is bootable when it is a candidate with a priority above 0.
    pub const fn is_bootable(self) -> bool {
        self.priority() > 0 && self.is_candidate()
    }

    /// Sets the priority; values above 15 are clamped to 15.
    #[must_use]
    pub const fn with_priority(self, priority: u8) -> Self {
        self.with_nibble(PRIORITY_SHIFT, priority)
    }

    /// Sets the tries; values above 15 are clamped to 15.
    #[must_use]
    pub const fn with_tries(self, tries: u8) -> Self {
        self.with_nibble(TRIES_SHIFT, tries)
    }

    /// Sets or clears the successful bit.
    #[must_use]
    pub const fn with_successful(self, successful: bool) -> Self {
        let cleared = self.0 & !(1 << SUCCESSFUL_SHIFT);
        Self(cleared | ((successful as u64) << SUCCESSFUL_SHIFT))
    }

    const fn with_nibble(self, shift: u32, value: u8) -> Self {
        let value = if value > MAX_FIELD { MAX_FIELD } else { value };
        let cleared = self.0 & !(NIBBLE << shift);
        Self(cleared | ((value as u64) << shift))
    }
}

impl fmt::Debug for GptPrio {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GptPrio")
            .field("priority", &self.priority())
            .field("tries", &self.tries())
            .field("successful", &self.successful())
            .field("raw", &format_args!("{:#018x}", self.0))
            .finish()
    }
}

impl fmt::Display for GptPrio {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "priority={} tries={} successful={}",
            self.priority(),
            self.tries(),
            self.successful() as u8
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_round_trip_and_other_bits_survive() {
        let other_bits = 0x8000_0000_0000_0007_u64 | (1 << 60) | (1 << 47);
        let p = GptPrio::from_raw(other_bits)
            .with_priority(9)
            .with_tries(3)
            .with_successful(true);
        assert_eq!(p.priority(), 9);
        assert_eq!(p.tries(), 3);
        assert!(p.successful());
        assert_eq!(p.raw() & !(0x1ff << 48), other_bits);
        let q = p.with_priority(0).with_tries(0).with_successful(false);
        assert_eq!(q.raw(), other_bits);
    }

    #[test]
    fn values_clamp_to_fifteen() {
        let p = GptPrio::default().with_priority(200).with_tries(16);
        assert_eq!(p.priority(), 15);
        assert_eq!(p.tries(), 15);
        assert_eq!(p.raw(), 0x00ff_0000_0000_0000);
    }

    #[test]
    fn bit_positions_match_cgpt() {
        // cgpt add -P 1 -T 0 -S 1  ->  attribute 0x0101000000000000
        let p = GptPrio::default().with_priority(1).with_successful(true);
        assert_eq!(p.raw(), 0x0101_0000_0000_0000);
        // cgpt add -P 2 -T 1 -S 0  ->  0x0012000000000000
        let p = GptPrio::default().with_priority(2).with_tries(1);
        assert_eq!(p.raw(), 0x0012_0000_0000_0000);
    }
}
