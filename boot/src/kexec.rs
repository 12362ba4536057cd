//! `kexec_file_load` and the reboot into the loaded kernel.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::fs::File;
use std::os::fd::AsRawFd;

use anyhow::Context as _;

/// Loads `kernel` with `initrd` and `cmdline` for the next kexec reboot.
/// The kernel checks the image itself (and its signature, when the
/// kernel is configured to require one).
pub fn load(kernel: &File, initrd: &File, cmdline: &str) -> anyhow::Result<()> {
    let c = CString::new(cmdline).context("the command line contains a NUL byte")?;
    let len = c.as_bytes_with_nul().len();
    // SAFETY: kexec_file_load(2) takes two open file descriptors, the
    // length of the command line including its NUL, a pointer to it, and
    // flags; `c` outlives the call.
    let r = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_kexec_file_load,
            kernel.as_raw_fd(),
            initrd.as_raw_fd(),
            len,
            c.as_ptr(),
            0u64,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error()).context("kexec_file_load");
    }
    Ok(())
}

/// Reboots into the loaded kernel. Does not return on success.
pub fn exec() -> anyhow::Result<std::convert::Infallible> {
    nix::unistd::sync();
    nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_KEXEC).context("reboot(RB_KEXEC)")
}
