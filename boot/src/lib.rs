//! `drover-boot`, the early-boot stage, run as `/init` of an initramfs.
//!
//! What it does today (stage mode): set up `/proc`, `/sys`, `/dev`, load
//! the kernel modules the image builder listed, find the disk that holds
//! USR-A and USR-B, apply the gptprio rule from [`drover_core::selection`]
//! (using up a try and writing the table before anything of the slot runs),
//! and check the chosen slot's signed manifest against the keys built into
//! the initramfs, falling back by the rule when it does not verify.
//!
//! Not built yet (issue 4): opening the slot with dm-verity, reading and
//! measuring its kernel, `kexec_file_load`, and slot mode (mount ROOT,
//! populate `/etc`, switch root). Until then the stage stops with a message
//! saying so.

pub mod devices;
pub mod early;
pub mod stage;
