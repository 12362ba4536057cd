//! `drover-boot`, run as `/init` of Drover's two kinds of initramfs.
//!
//! * **Stage mode** (the initramfs on the ESP): load modules, find the disk
//!   with USR-A and USR-B, pick the slot with the shared gptprio rule (a
//!   used-up try is written before anything of the slot runs), check its
//!   signed manifest against the keys built into the initramfs (and every
//!   block, before a slot's first successful boot), open it with dm-verity,
//!   read its kernel and initramfs and check their digests, and
//!   extend TPM PCR 8 with what was chosen (see [`drover_core::measured::measure`]),
//!   and `kexec_file_load` into it with the verity arguments on the
//!   command line; the events go along in a boot record appended to the
//!   slot initramfs. A slot that fails any check is not booted; the rule
//!   runs again without it. With nothing left, a rescue message says why.
//!   Without a TPM the boot goes on and the record says it was not
//!   measured, and why.
//! * **Live boot** (`drover.live`, from the installation ISO): the same
//!   checks on the slot image file on the ISO (through a read-only loop
//!   device), and the slot's initramfs puts its root in memory; see
//!   [`live`].
//! * **Slot mode** (the slot's own initramfs): open `/usr` with dm-verity
//!   (restart on corruption), mount ROOT, populate `/etc` on first boot,
//!   switch root to systemd.

pub mod dm;
pub mod early;
pub mod grow;
pub mod kexec;
pub mod live;
pub mod slot_mode;
pub mod stage;
pub mod tpm;
