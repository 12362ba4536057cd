//! The stage's TPM code against a real software TPM (`swtpm`, started by
//! the test on loopback and stopped by its PID): every allocated bank of
//! PCR 8 ends at the value the recorded events replay to.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::str::FromStr as _;
use std::time::{Duration, Instant};

use drover_boot::tpm;
use drover_core::measure::{self, Event};
use tss_esapi::tcti_ldr::{NetworkTPMConfig, TctiNameConf};

/// A swtpm process on two loopback ports, killed on drop.
struct Swtpm {
    child: Child,
    port: u16,
    _state: tempfile::TempDir,
}

impl Swtpm {
    fn start() -> Swtpm {
        let state = tempfile::tempdir().unwrap();
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

    fn tcti(&self) -> TctiNameConf {
        TctiNameConf::Swtpm(
            NetworkTPMConfig::from_str(&format!("host=127.0.0.1,port={}", self.port)).unwrap(),
        )
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn events(slot: &str) -> Vec<Event> {
    vec![
        Event::new("slot", slot, slot),
        Event::new("manifest", "ab".repeat(32), "test 1.0.0"),
        Event::new("slot-cmdline", "cd".repeat(32), "console=ttyS0"),
    ]
}

#[test]
fn every_bank_of_pcr8_replays_from_the_events() {
    let tpm_sim = Swtpm::start();
    let before = tpm::read_tcti(tpm_sim.tcti()).unwrap();
    assert!(!before.is_empty());
    for (bank, value) in &before {
        assert_eq!(value, &vec![0u8; bank.size()], "{bank:?} starts at zero");
    }
    let ev = events("USR-A");
    let banks = tpm::extend_tcti(tpm_sim.tcti(), &ev).unwrap();
    assert_eq!(banks.len(), before.len());
    let after = tpm::read_tcti(tpm_sim.tcti()).unwrap();
    for (bank, value) in &after {
        assert_eq!(value, &measure::replay(*bank, &ev), "{bank:?}");
    }
    // The other slot's events give another value: what was chosen is in it.
    for (bank, value) in &after {
        assert_ne!(value, &measure::replay(*bank, &events("USR-B")));
    }
}

#[test]
fn measuring_twice_is_the_replay_of_both() {
    let tpm_sim = Swtpm::start();
    let mut all = events("USR-B");
    tpm::extend_tcti(tpm_sim.tcti(), &all).unwrap();
    let more = events("USR-A");
    tpm::extend_tcti(tpm_sim.tcti(), &more).unwrap();
    all.extend(more);
    for (bank, value) in tpm::read_tcti(tpm_sim.tcti()).unwrap() {
        assert_eq!(value, measure::replay(bank, &all), "{bank:?}");
    }
}
