//! The update agent (`drover-agent`) and its CLI (`droverctl`).
//!
//! So far: the slot commands of `droverctl`, which work offline on a disk
//! image file or block device with `--disk` (see [`ctl`]). The daemon, the
//! channel client and the D-Bus API come with issue 5.

pub mod ctl;
