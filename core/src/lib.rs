//! The concepts every part of Drover shares, each held exactly once:
//!
//! * [`gptprio`], [`slot`], [`selection`], [`table`], [`slots`]: the A/B
//!   slot state in the GPT attribute bits and the rule that picks a slot.
//! * [`verity`]: dm-verity hash trees, compatible with `veritysetup`.
//! * [`keys`], [`manifest`], [`slot_image`]: the signed slot manifest and
//!   the layout of a slot image.
//! * [`devices`]: finding the slot disk and its partitions in sysfs (no
//!   udev needed: the boot stage runs before it, and early units too).
//! * [`channel`]: the signed update channel metadata.
//! * [`measured`]: measured boot, a wing of its own: the stage's events
//!   and their prediction, the firmware event log, the boot verdict,
//!   Authenticode, the ESP, TPM quotes, attestation, and (feature `tpm`)
//!   opening the TPM.
//! * [`durable`]: replacing a small file so that a power cut leaves the
//!   old one or the new one.
//! * [`location`]: a URL or a local path, as operators give them.
//! * `http` (feature `http`): files over HTTP with range requests, a size
//!   bound and resume (the agent's payloads and channels, the installer's
//!   slot image).
//! * [`paths`]: the node's file-system contract (keys, `/run/drover`,
//!   the live media, the stage initramfs's files).
//! * [`cmdline`]: the slot and verity parameters the stage puts on the
//!   slot kernel's command line, formatted and parsed by one type.
//! * [`agent_config`]: the agent's settings other parts write (the node
//!   config's `[update]`, the image spec's `[agent]`): one set of
//!   validated types, rendered with `toml`.
//! * [`boot_record`]: what the boot stage hands on to the booted system
//!   (written by the stage, read by the agent).
//!
//! `drover-boot`, `drover-agent`/`droverctl` and the `drover` image builder
//! all link this crate; none of them has GPT or verity code of its own.

pub mod agent_config;
pub mod blocks;
pub mod boot_record;
pub mod channel;
pub mod cmdline;
pub mod cpio;
pub mod devices;
pub mod durable;
pub mod gptprio;
#[cfg(feature = "http")]
pub mod http;
pub mod keys;
pub mod layout;
pub mod location;
pub mod manifest;
pub mod measured;
pub mod paths;
pub mod selection;
pub mod slot;
pub mod slot_image;
pub mod slots;
pub mod table;
pub mod time;
pub mod verity;

pub use gptprio::GptPrio;
pub use selection::{select, Decision, SlotView};
pub use slot::SlotId;
pub use slots::{SlotError, Slots};
pub use table::PartitionTable;

/// How every Drover program reports an error: `{head}{error}`, then one
/// line `{cause_prefix} -> {cause}` for each cause in its chain, each cause
/// once (the `Display` of an error does not repeat its source).
pub fn error_report(
    head: &str,
    cause_prefix: &str,
    e: &(dyn std::error::Error + 'static),
) -> String {
    let mut s = format!("{head}{e}\n");
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(&format!("{cause_prefix} -> {c}\n"));
        cause = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_error_report_names_each_cause_once() {
        let inner = std::io::Error::other("disk gone");
        let e = crate::durable::Error {
            what: "writing",
            path: "/var/lib/drover/state.json".into(),
            source: inner,
        };
        assert_eq!(
            super::error_report("error: ", "", &e),
            "error: writing /var/lib/drover/state.json\n -> disk gone\n"
        );
    }
}
