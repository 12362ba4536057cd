//! The QEMU test harness: real Drover images booted in QEMU.
//!
//! * [`image`]: the test image, built once per test run and shared by every
//!   test (a lock file keeps parallel test processes from building twice).
//! * [`guest`]: a guest builder; the console is captured, tests wait for a
//!   marker the guest prints instead of sleeping, and the console is shown
//!   only when a test fails.
//! * [`snapshot`]: a booted, idle test node saved once per run (VM and TPM
//!   state) and restored by the tests that start from it.
//! * [`accel`]: KVM when a short probe shows a KVM guest actually runs, TCG
//!   otherwise.
//! * [`web`]: nginx serving a published update repository on loopback.
//! * [`etcd`]: etcd members on loopback (plain or TLS with client
//!   certificates), for the reboot-lock tests.
//! * [`libvirt`]: a libvirt daemon (started when none runs) and domains
//!   defined from XML, for the install test that follows the docs.
//! * [`registry`]: a container registry on loopback and a `FROM scratch`
//!   image built and pushed by the test, for containers on a node.

pub mod accel;
pub mod crash;
pub mod etcd;
pub mod guest;
pub mod image;
pub mod libvirt;
pub mod nbd;
pub mod registry;
pub mod snapshot;
pub mod web;
