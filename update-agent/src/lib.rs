//! The update agent (`drover-agent`) and its CLI (`droverctl`).
//!
//! So far: the slot commands of `droverctl` and the offline update
//! (`droverctl update --from DIR --disk IMAGE`), which work on a disk image
//! file or block device (see [`ctl`] and [`apply`]). The daemon, the channel
//! client and the D-Bus API come with issue 5; they will use [`apply`].

pub mod apply;
pub mod ctl;
pub mod engine;
pub mod source;
pub mod state;
