//! Test support shared by the crates' TPM tests (included with
//! `#[path]`): a `swtpm` process on loopback, started by the test and
//! stopped by its PID when dropped. It stands for the machine's TPM.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A swtpm process on two loopback ports, killed on drop.
pub struct Swtpm {
    child: Child,
    port: u16,
    _state: tempfile::TempDir,
}

impl Swtpm {
    /// Starts a fresh TPM (its own state directory).
    pub fn start() -> Swtpm {
        Self::start_in(tempfile::tempdir().unwrap())
    }

    /// Starts a TPM set up as `swtpm_setup` (and libvirt, and many
    /// machines' firmware) leaves it: PCR banks `banks` allocated only
    /// (e.g. `sha256`), an EK made, owned.
    #[allow(dead_code)] // not every test file that includes this uses it
    pub fn start_manufactured(banks: &str) -> Swtpm {
        let state = tempfile::tempdir().unwrap();
        let out = Command::new("swtpm_setup")
            .arg("--tpm2")
            .arg("--tpm-state")
            .arg(state.path())
            .args(["--pcr-banks", banks, "--createek", "--overwrite"])
            .output()
            .expect("swtpm_setup (Debian package swtpm-tools)");
        assert!(
            out.status.success(),
            "swtpm_setup: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Self::start_in(state)
    }

    fn start_in(state: tempfile::TempDir) -> Swtpm {
        for _ in 0..20 {
            // Two free neighbouring ports: the TPM and its control channel.
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            if port == u16::MAX || TcpListener::bind(("127.0.0.1", port + 1)).is_err() {
                continue;
            }
            let mut child = Command::new("swtpm")
                .arg("socket")
                .arg("--tpm2")
                .arg("--tpmstate")
                .arg(format!("dir={}", state.path().display()))
                .arg("--server")
                .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
                .arg("--ctrl")
                .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1))
                .arg("--flags")
                .arg("not-need-init,startup-clear")
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("swtpm (Debian package swtpm; `cargo xtask deps` installs it)");
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(10) {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Swtpm {
                        child,
                        port,
                        _state: state,
                    };
                }
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("swtpm did not start");
    }

    /// The TCTI name of this TPM (`swtpm:host=127.0.0.1,port=N`).
    pub fn tcti_name(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
