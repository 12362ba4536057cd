//! libvirt (Debian's `libvirt-daemon-system`, `qemu:///system`) for the
//! install test that follows `docs/install.md` word for word.
//!
//! When no libvirt daemon answers, [`Libvirt::start`] starts `virtlogd`
//! and `libvirtd` as its own children and stops them, by PID, when
//! dropped; a daemon that was already running is used and left alone.
//! A [`Domain`] is destroyed and undefined (NVRAM and TPM state with it)
//! when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

/// The connection the docs use.
pub const URI: &str = "qemu:///system";

/// The name tests give their domains (followed by their PID): a domain
/// with this prefix that is still defined when a test starts was left by
/// a killed run.
pub const STALE_PREFIX: &str = "drover-node-test-";

/// A libvirt daemon to talk to.
pub struct Libvirt {
    started: Vec<Child>,
}

fn virsh_raw(args: &[&str]) -> std::io::Result<std::process::Output> {
    Command::new("virsh").arg("-c").arg(URI).args(args).output()
}

impl Libvirt {
    /// Connects to the running daemon, or starts one (logs in `dir`).
    pub fn start(dir: &Path) -> anyhow::Result<Self> {
        let answers = || virsh_raw(&["version"]).is_ok_and(|o| o.status.success());
        let mut lv = Self {
            started: Vec::new(),
        };
        if answers() {
            lv.remove_stale();
            return Ok(lv);
        }
        for daemon in ["virtlogd", "libvirtd"] {
            let log = std::fs::File::create(dir.join(format!("{daemon}.log")))?;
            let child = Command::new(daemon)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .with_context(|| format!("starting {daemon} (Debian: libvirt-daemon-system)"))?;
            lv.started.push(child);
        }
        let start = Instant::now();
        while !answers() {
            if start.elapsed() > Duration::from_secs(30) {
                bail!(
                    "libvirtd did not answer within 30 s: {}",
                    std::fs::read_to_string(dir.join("libvirtd.log")).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        lv.remove_stale();
        Ok(lv)
    }

    /// Domains an earlier, killed test run left defined (libvirt keeps
    /// running a domain whose test process died): destroyed and undefined.
    fn remove_stale(&self) {
        let Ok(names) = self.virsh(&["list", "--all", "--name"]) else {
            return;
        };
        for n in names.lines().filter(|n| n.starts_with(STALE_PREFIX)) {
            let _ = self.virsh(&["destroy", n]);
            let _ = self.virsh(&["undefine", "--nvram", n]);
        }
    }

    /// Runs `virsh -c qemu:///system ARGS`; its stdout, or an error with
    /// its stderr.
    pub fn virsh(&self, args: &[&str]) -> anyhow::Result<String> {
        let o = virsh_raw(args).context("running virsh (Debian: libvirt-clients)")?;
        if !o.status.success() {
            bail!(
                "virsh {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&o.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    }

    /// Defines a domain from XML (`virsh define`).
    pub fn define(
        &self,
        name: &str,
        xml_file: &Path,
        console: &Path,
    ) -> anyhow::Result<Domain<'_>> {
        self.virsh(&["define", &xml_file.to_string_lossy()])?;
        Ok(Domain {
            lv: self,
            name: name.to_string(),
            console: console.to_owned(),
        })
    }
}

impl Drop for Libvirt {
    fn drop(&mut self) {
        // libvirtd first: it may still talk to virtlogd.
        for c in self.started.iter_mut().rev() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let start = Instant::now();
            while matches!(c.try_wait(), Ok(None)) && start.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A defined domain whose serial console goes to a file.
pub struct Domain<'a> {
    lv: &'a Libvirt,
    /// The domain's name.
    pub name: String,
    console: PathBuf,
}

impl Domain<'_> {
    /// `virsh start`.
    pub fn start(&self) -> anyhow::Result<()> {
        self.lv.virsh(&["start", &self.name]).map(drop)
    }

    /// `virsh domstate`: `running`, `shut off`, ….
    pub fn state(&self) -> String {
        self.lv
            .virsh(&["domstate", &self.name])
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|e| format!("{e:#}"))
    }

    /// The serial console so far.
    pub fn console(&self) -> String {
        std::fs::read(&self.console)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Waits until the console holds `marker` after byte `from`; panics
    /// with the console's tail if the domain stops or time runs out.
    pub fn expect(&self, marker: &str, from: usize, timeout: Duration) -> usize {
        let start = Instant::now();
        loop {
            let c = self.console();
            if let Some(i) = c.get(from..).and_then(|t| t.find(marker)) {
                return from + i + marker.len();
            }
            let state = self.state();
            if start.elapsed() > timeout || state != "running" {
                self.fail(&format!(
                    "no '{marker}' on the console after {:.0} s (domain {state})",
                    start.elapsed().as_secs_f64()
                ));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Waits until the domain is shut off.
    pub fn wait_shut_off(&self, timeout: Duration) {
        let start = Instant::now();
        while self.state() != "shut off" {
            if start.elapsed() > timeout {
                self.fail("the domain did not power off");
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Runs a shell script in the guest through the QEMU guest agent (the
    /// domain needs an `org.qemu.guest_agent.0` channel): exit code and
    /// output.
    pub fn sh(&self, script: &str) -> anyhow::Result<(i64, String)> {
        let cmd = serde_json::json!({
            "execute": "guest-exec",
            "arguments": {"path": "/bin/sh", "arg": ["-c", script], "capture-output": true},
        });
        let r: serde_json::Value = serde_json::from_str(&self.lv.virsh(&[
            "qemu-agent-command",
            &self.name,
            &cmd.to_string(),
        ])?)?;
        let pid = r["return"]["pid"]
            .as_i64()
            .context("guest-exec gave no pid")?;
        let start = Instant::now();
        loop {
            let q = serde_json::json!({"execute": "guest-exec-status", "arguments": {"pid": pid}});
            let r: serde_json::Value = serde_json::from_str(&self.lv.virsh(&[
                "qemu-agent-command",
                &self.name,
                &q.to_string(),
            ])?)?;
            let r = &r["return"];
            if r["exited"] == true {
                use base64::Engine as _;
                let mut out = String::new();
                for k in ["out-data", "err-data"] {
                    if let Some(d) = r[k].as_str() {
                        out.push_str(&String::from_utf8_lossy(
                            &base64::engine::general_purpose::STANDARD.decode(d)?,
                        ));
                    }
                }
                return Ok((r["exitcode"].as_i64().unwrap_or(-1), out));
            }
            if start.elapsed() > Duration::from_secs(120) {
                bail!("`{script}` did not finish in 120 s");
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// Waits until the guest agent answers.
    pub fn wait_for_agent(&self, timeout: Duration) {
        let start = Instant::now();
        while self.sh("true").is_err() {
            if start.elapsed() > timeout || self.state() != "running" {
                self.fail("the guest agent never answered");
            }
            std::thread::sleep(Duration::from_secs(2));
        }
    }

    /// Panics with `msg` and the console's last 150 lines.
    pub fn fail(&self, msg: &str) -> ! {
        let c = self.console();
        let lines: Vec<&str> = c.lines().collect();
        let tail = lines[lines.len().saturating_sub(150)..].join("\n");
        // What systemd is still waiting for, when the guest agent answers.
        let jobs = self
            .sh("systemctl list-jobs --no-pager; systemctl --failed --no-pager; journalctl -b --no-pager -o short-monotonic -u drover-verify-boot -u drover-boot-complete | tail -n 40")
            .map(|(_, o)| o)
            .unwrap_or_default();
        panic!(
            "{}: {msg}\n--- console ---\n{tail}\n--- in the guest ---\n{jobs}",
            self.name
        )
    }
}

impl Drop for Domain<'_> {
    fn drop(&mut self) {
        let _ = self.lv.virsh(&["destroy", &self.name]);
        let _ = self.lv.virsh(&["undefine", "--nvram", &self.name]);
    }
}
