//! `drover-boot`, run as `/init` of Drover's two kinds of initramfs.
//!
//! * **Stage mode** (the initramfs on the ESP): load modules, find the disk
//!   with USR-A and USR-B, pick the slot with the shared gptprio rule (a
//!   used-up try is written before anything of the slot runs), check its
//!   signed manifest against the keys built into the initramfs (and every
//!   block, before a slot's first successful boot), open it with dm-verity,
//!   read its kernel and initramfs and check their digests, and
//!   `kexec_file_load` into it with the verity arguments on the command
//!   line. A slot that fails any check is not booted; the rule runs again
//!   without it. With nothing left, a rescue message says why.
//! * **Slot mode** (the slot's own initramfs): open `/usr` with dm-verity
//!   (restart on corruption), mount ROOT, populate `/etc` on first boot,
//!   switch root to systemd.
//!
//! Not built yet: TPM measurement (the boot record says the boot was not
//! measured).

pub mod devices;
pub mod dm;
pub mod early;
pub mod grow;
pub mod kexec;
pub mod record;
pub mod slot_mode;
pub mod stage;
