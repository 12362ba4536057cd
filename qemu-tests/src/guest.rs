//! A QEMU guest whose serial console is captured.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How the guest starts.
#[derive(Clone, Debug)]
pub enum Firmware {
    /// `-kernel`/`-initrd`/`-append`: the boot stage started directly.
    Direct {
        /// Stage kernel.
        kernel: PathBuf,
        /// Stage initramfs.
        initrd: PathBuf,
        /// Kernel command line.
        append: String,
    },
    /// OVMF from the disk's ESP (systemd-boot), with a private copy of the
    /// variable store.
    Ovmf {
        /// Where to keep this guest's copy of OVMF_VARS.
        vars: PathBuf,
    },
}

/// Builds a guest.
#[derive(Clone, Debug)]
pub struct GuestBuilder {
    disk: PathBuf,
    firmware: Firmware,
    memory_mib: u32,
    name: String,
    probe_kernel: Option<PathBuf>,
    tpm_dir: Option<PathBuf>,
    channel_port: Option<u16>,
    forwards: Vec<(String, u16)>,
    allow_reboot: bool,
    agent_socket: Option<PathBuf>,
    fw_cfg: Vec<(String, PathBuf)>,
    extra_disks: Vec<PathBuf>,
    cdrom: Option<PathBuf>,
    qmp_socket: Option<PathBuf>,
    incoming: Option<(PathBuf, String)>,
    nbd: Option<PathBuf>,
}

/// A running guest. Dropping it stops QEMU (by its PID, nothing else).
#[derive(Debug)]
pub struct Guest {
    child: Child,
    console: Arc<Mutex<Vec<u8>>>,
    name: String,
    swtpm: Option<Child>,
    agent_socket: Option<PathBuf>,
    qmp_socket: Option<PathBuf>,
    seen: usize,
    started: Instant,
}

const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

impl GuestBuilder {
    /// A guest booting `disk` (raw) with the given firmware.
    pub fn new(name: &str, disk: &Path, firmware: Firmware) -> Self {
        Self {
            disk: disk.to_owned(),
            firmware,
            memory_mib: 1024,
            name: name.to_string(),
            probe_kernel: None,
            tpm_dir: None,
            channel_port: None,
            forwards: Vec::new(),
            allow_reboot: false,
            agent_socket: None,
            fw_cfg: Vec::new(),
            extra_disks: Vec::new(),
            cdrom: None,
            qmp_socket: None,
            incoming: None,
            nbd: None,
        }
    }

    /// A QMP monitor on a UNIX socket at `sock` ([`Guest::qmp`]), for
    /// saving the machine's state ([`crate::snapshot`]).
    pub fn qmp(mut self, sock: &Path) -> Self {
        let _ = std::fs::remove_file(sock);
        self.qmp_socket = Some(sock.to_owned());
        self
    }

    /// Starts from a saved state (`-incoming`) instead of booting: `state`
    /// is a migration stream of a guest started with the same options,
    /// `console` what that guest had printed, which [`Guest::console`] and
    /// [`Guest::expect`] see first (see [`crate::snapshot`]).
    pub fn incoming(mut self, state: &Path, console: String) -> Self {
        self.incoming = Some((state.to_owned(), console));
        self
    }

    /// The first disk read and written through the NBD server at `socket`
    /// ([`crate::nbd`]) instead of the file, with a write cache the guest
    /// must flush (QEMU passes its flushes on): what a power cut loses is
    /// then the server's log to say.
    pub fn nbd_disk(mut self, socket: &Path) -> Self {
        self.nbd = Some(socket.to_owned());
        self
    }

    /// Another virtio disk (raw), after the first: `/dev/vdb`, `/dev/vdc`…
    pub fn extra_disk(mut self, disk: &Path) -> Self {
        self.extra_disks.push(disk.to_owned());
        self
    }

    /// A CD-ROM drive (SATA, as libvirt attaches one on q35) with `iso`.
    pub fn cdrom(mut self, iso: &Path) -> Self {
        self.cdrom = Some(iso.to_owned());
        self
    }

    /// A file for the guest through QEMU's fw_cfg, under `name` (such as
    /// `opt/org.drover/config`, where a node config arrives).
    pub fn fw_cfg(mut self, name: &str, file: &Path) -> Self {
        self.fw_cfg.push((name.to_string(), file.to_owned()));
        self
    }

    /// A virtio-serial port for the QEMU guest agent (`qemu-guest-agent`
    /// in the image), its host end a UNIX socket at `sock`: the tests run
    /// commands in the guest through it ([`Guest::exec`]).
    pub fn guest_agent(mut self, sock: &Path) -> Self {
        self.agent_socket = Some(sock.to_owned());
        self
    }

    /// A virtio NIC on QEMU user networking; the guest's connections to
    /// 10.0.2.100:80 reach `127.0.0.1:port` on the host (a `socat` per
    /// connection), and nothing else outside the guest is reachable.
    pub fn channel(mut self, port: u16) -> Self {
        self.channel_port = Some(port);
        self
    }

    /// Another service on the host the guest may reach: its connections
    /// to `guest` (`10.0.2.101:2379`) go to `127.0.0.1:port` (a `socat`
    /// per connection), as the channel's do. Needs [`GuestBuilder::channel`].
    pub fn forward(mut self, guest: &str, port: u16) -> Self {
        self.forwards.push((guest.to_string(), port));
        self
    }

    /// Let the guest reboot (QEMU resets instead of exiting), for updates.
    pub fn allow_reboot(mut self) -> Self {
        self.allow_reboot = true;
        self
    }

    /// Attaches a software TPM 2.0 (`swtpm`, a TIS device) whose state and
    /// socket live in `dir`; the same `dir` keeps the TPM across guests, as
    /// a machine's TPM survives its reboots.
    pub fn tpm(mut self, dir: &Path) -> Self {
        self.tpm_dir = Some(dir.to_owned());
        self
    }

    /// A kernel for the KVM probe (see [`crate::accel`]); a direct boot
    /// probes with its own kernel, a firmware boot needs one given here or
    /// runs under TCG.
    pub fn probe_kernel(mut self, kernel: &Path) -> Self {
        self.probe_kernel = Some(kernel.to_owned());
        self
    }

    /// Starts QEMU.
    pub fn start(self) -> anyhow::Result<Guest> {
        let probe = match (&self.firmware, &self.probe_kernel) {
            (_, Some(k)) => Some(k.clone()),
            (Firmware::Direct { kernel, .. }, None) => Some(kernel.clone()),
            _ => None,
        };
        let accel = match &probe {
            Some(k) => crate::accel::accel(k),
            None => "tcg",
        };
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args([
            "-accel",
            accel,
            "-machine",
            "q35",
            "-m",
            &self.memory_mib.to_string(),
        ])
        .args([
            "-smp",
            "1",
            "-nographic",
            "-nodefaults",
            "-serial",
            "stdio",
            "-monitor",
            "none",
        ])
        .arg("-drive")
        .arg(match &self.nbd {
            Some(sock) => format!(
                "file=nbd+unix:///disk?socket={},format=raw,if=virtio,cache=writeback",
                sock.display()
            ),
            None => format!(
                "file={},format=raw,if=virtio,cache=unsafe",
                self.disk.display()
            ),
        });
        for d in &self.extra_disks {
            cmd.arg("-drive").arg(format!(
                "file={},format=raw,if=virtio,cache=unsafe",
                d.display()
            ));
        }
        if let Some(iso) = &self.cdrom {
            cmd.arg("-drive")
                .arg(format!(
                    "if=none,id=cd0,media=cdrom,format=raw,readonly=on,file={}",
                    iso.display()
                ))
                .args(["-device", "ide-cd,drive=cd0,bus=ide.1"]);
        }
        match &self.firmware {
            Firmware::Direct {
                kernel,
                initrd,
                append,
            } => {
                cmd.arg("-kernel")
                    .arg(kernel)
                    .arg("-initrd")
                    .arg(initrd)
                    .arg("-append")
                    .arg(append);
            }
            Firmware::Ovmf { vars } => {
                std::fs::copy(OVMF_VARS, vars)?;
                cmd.arg("-drive")
                    .arg(format!(
                        "if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"
                    ))
                    .arg("-drive")
                    .arg(format!(
                        "if=pflash,format=raw,unit=1,file={}",
                        vars.display()
                    ));
            }
        }
        if !self.allow_reboot {
            cmd.arg("-no-reboot");
        }
        for (name, file) in &self.fw_cfg {
            cmd.arg("-fw_cfg")
                .arg(format!("name={name},file={}", file.display()));
        }
        // Every guest has a NIC on user networking (restricted: nothing
        // outside the guest is reachable but the channel, if any). Without
        // one, systemd-networkd-wait-online waits its whole 120 s timeout,
        // and multi-user.target (through the agent's
        // After=network-online.target) with it: measured here, a boot that
        // is up in 25 s reported multi-user after 143 s.
        let mut netdev = match self.channel_port {
            Some(port) => format!(
                "user,id=n0,restrict=on,guestfwd=tcp:10.0.2.100:80-cmd:socat - TCP:127.0.0.1:{port}"
            ),
            None => "user,id=n0,restrict=on".to_string(),
        };
        for (guest, port) in &self.forwards {
            netdev.push_str(&format!(
                ",guestfwd=tcp:{guest}-cmd:socat - TCP:127.0.0.1:{port}"
            ));
        }
        cmd.arg("-netdev")
            .arg(netdev)
            .args(["-device", "virtio-net-pci,netdev=n0"]);
        if let Some(sock) = &self.agent_socket {
            cmd.arg("-chardev")
                .arg(format!(
                    "socket,path={},server=on,wait=off,id=qga0",
                    sock.display()
                ))
                .args(["-device", "virtio-serial"])
                .args([
                    "-device",
                    "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
                ]);
        }
        if let Some(sock) = &self.qmp_socket {
            cmd.arg("-qmp")
                .arg(format!("unix:{},server=on,wait=off", sock.display()));
        }
        if let Some((state, _)) = &self.incoming {
            cmd.arg("-incoming").arg(format!(
                "exec:cat {}",
                shell_quote(&state.display().to_string())
            ));
        }
        let swtpm = match &self.tpm_dir {
            None => None,
            Some(dir) => {
                let (child, sock) = start_swtpm(dir)?;
                cmd.arg("-chardev")
                    .arg(format!("socket,id=chrtpm,path={}", sock.display()))
                    .args(["-tpmdev", "emulator,id=tpm0,chardev=chrtpm"])
                    .args(["-device", "tpm-tis,tpmdev=tpm0"]);
                Some(child)
            }
        };
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn()?;
        let console = Arc::new(Mutex::new(match &self.incoming {
            Some((state, before)) => format!(
                "{before}\n----- restored from the saved state {} -----\n",
                state.display()
            )
            .into_bytes(),
            None => Vec::new(),
        }));
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let sink = Arc::clone(&console);
            let mut stream = stream;
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    sink.lock()
                        .expect("console lock")
                        .extend_from_slice(&buf[..n]);
                }
            });
        }
        Ok(Guest {
            child,
            console,
            name: self.name,
            swtpm,
            agent_socket: self.agent_socket,
            qmp_socket: self.qmp_socket,
            seen: 0,
            started: Instant::now(),
        })
    }
}

/// `s` in single quotes for `sh -c` (QEMU runs `exec:` with the shell).
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Starts `swtpm` on a UNIX socket in `dir` and waits for the socket.
fn start_swtpm(dir: &Path) -> anyhow::Result<(Child, PathBuf)> {
    std::fs::create_dir_all(dir)?;
    let sock = dir.join("swtpm.sock");
    let _ = std::fs::remove_file(&sock);
    let mut child = Command::new("swtpm")
        .arg("socket")
        .arg("--tpm2")
        .arg("--tpmstate")
        .arg(format!("dir={}", dir.display()))
        .arg("--ctrl")
        .arg(format!("type=unixio,path={}", sock.display()))
        .arg("--terminate")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| anyhow::anyhow!("starting swtpm (Debian package swtpm): {e}"))?;
    let start = Instant::now();
    while !sock.exists() {
        if let Some(st) = child.try_wait()? {
            anyhow::bail!("swtpm exited ({st}) before its socket appeared");
        }
        if start.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("swtpm's socket did not appear within 10 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((child, sock))
}

impl Guest {
    /// Everything the guest printed so far.
    pub fn console(&self) -> String {
        String::from_utf8_lossy(&self.console.lock().expect("console lock")).into_owned()
    }

    /// Waits until the console has a line containing `marker` after the
    /// line the last wait matched, and returns that line. Fails (with the
    /// console) on timeout or when QEMU exits.
    pub fn wait_for(&mut self, marker: &str, timeout: Duration) -> anyhow::Result<String> {
        let start = Instant::now();
        loop {
            let text = self.console();
            let mut pos = self.seen.min(text.len());
            while !text.is_char_boundary(pos) {
                pos -= 1;
            }
            let rest = &text[pos..];
            if let Some(i) = rest.find(marker) {
                let line_start = rest[..i].rfind('\n').map(|n| n + 1).unwrap_or(0);
                let line_end = rest[i..].find('\n').map(|n| i + n).unwrap_or(rest.len());
                if line_end < rest.len() {
                    self.seen = pos + line_end;
                    // The test's timeline, in its output (shown by nextest
                    // when it fails, or with --no-capture).
                    eprintln!(
                        "{}: {:6.1} s after start: {marker}",
                        self.name,
                        self.started.elapsed().as_secs_f64()
                    );
                    return Ok(rest[line_start..line_end]
                        .trim_end_matches('\r')
                        .to_string());
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                anyhow::bail!(
                    "{}: QEMU exited ({status}) before '{marker}' appeared",
                    self.name
                );
            }
            if start.elapsed() > timeout {
                anyhow::bail!(
                    "{}: '{marker}' did not appear within {} s",
                    self.name,
                    timeout.as_secs()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Like [`Guest::wait_for`], but a failure panics with the last 150
    /// lines of the console: the console is shown only when a test fails.
    pub fn expect(&mut self, marker: &str, timeout: Duration) -> String {
        match self.wait_for(marker, timeout) {
            Ok(l) => l,
            Err(e) => self.fail(&e.to_string()),
        }
    }

    /// `e` with the last `lines` lines of the console after it, for an
    /// error that returns rather than panics.
    pub fn with_console_tail(&self, e: anyhow::Error, lines: usize) -> anyhow::Error {
        let text = self.console();
        let all: Vec<&str> = text.lines().collect();
        anyhow::anyhow!(
            "{e:#}\n----- console (last {lines} lines) -----\n{}",
            all[all.len().saturating_sub(lines)..].join("\n")
        )
    }

    /// Panics with a message and the console tail.
    pub fn fail(&self, msg: &str) -> ! {
        let text = self.console();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(150)..].join("\n");
        panic!(
            "{msg}\n----- console of {} (last 150 lines) -----\n{tail}\n-----",
            self.name
        );
    }

    /// Runs `argv` in the guest through the QEMU guest agent; with `wait`,
    /// waits for it and returns its exit code and standard output (and
    /// error). Without, returns as soon as it started (for a command that
    /// reboots the guest).
    pub fn exec(&self, argv: &[&str], wait: bool) -> anyhow::Result<(i64, String)> {
        use base64::Engine as _;
        let mut agent = self.guest_agent()?;
        let mut call = |v| agent.call(v);
        let (path, args) = argv.split_first().expect("a command");
        let ret = call(serde_json::json!({
            "execute": "guest-exec",
            "arguments": {"path": path, "arg": args, "capture-output": true}
        }))?;
        let pid = ret["pid"]
            .as_i64()
            .ok_or_else(|| anyhow::anyhow!("guest-exec returned no pid: {ret}"))?;
        if !wait {
            return Ok((0, String::new()));
        }
        let start = Instant::now();
        loop {
            let st = call(serde_json::json!({
                "execute": "guest-exec-status", "arguments": {"pid": pid}
            }))?;
            if st["exited"].as_bool() == Some(true) {
                let b64 = base64::engine::general_purpose::STANDARD;
                let mut out = String::new();
                for k in ["out-data", "err-data"] {
                    if let Some(d) = st[k].as_str() {
                        out.push_str(&String::from_utf8_lossy(&b64.decode(d)?));
                    }
                }
                return Ok((st["exitcode"].as_i64().unwrap_or(-1), out));
            }
            if start.elapsed() > Duration::from_secs(300) {
                anyhow::bail!("{argv:?} still running in the guest after 300 s");
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// Runs QMP command `execute` with `arguments` (or none, for null) on
    /// the monitor of [`GuestBuilder::qmp`], and returns its `return`.
    pub fn qmp(
        &self,
        execute: &str,
        arguments: serde_json::Value,
    ) -> anyhow::Result<serde_json::Value> {
        let sock = self
            .qmp_socket
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("this guest has no QMP monitor"))?;
        let mut qmp = JsonLines::connect(sock, "QMP")?;
        let mut call = |v| qmp.call(v);
        call(serde_json::json!({"execute": "qmp_capabilities"}))?;
        let mut cmd = serde_json::json!({ "execute": execute });
        if !arguments.is_null() {
            cmd["arguments"] = arguments;
        }
        call(cmd)
    }

    /// Sets the guest's clock to the host's (`guest-set-time` through the
    /// guest agent, which also writes the RTC), as libvirt does after
    /// restoring a saved domain: a restored guest's clock resumes where it
    /// was saved, and a release published "now" would wait for its rollout
    /// to start until that clock caught up.
    pub fn sync_clock(&self) -> anyhow::Result<()> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
        self.guest_agent()?.call(serde_json::json!({
            "execute": "guest-set-time",
            "arguments": {"time": u64::try_from(now.as_nanos())?}
        }))?;
        Ok(())
    }

    /// A connection to the QEMU guest agent.
    fn guest_agent(&self) -> anyhow::Result<JsonLines> {
        let sock = self
            .agent_socket
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("this guest has no guest agent port"))?;
        JsonLines::connect(sock, "the guest agent")
    }

    /// `droverctl status --json` in the guest, parsed.
    pub fn status(&self) -> anyhow::Result<serde_json::Value> {
        let (code, out) = self.exec(&["/usr/bin/droverctl", "status", "--json"], true)?;
        if code != 0 {
            anyhow::bail!("droverctl status exited with {code}: {out}");
        }
        serde_json::from_str(out.trim())
            .map_err(|e| anyhow::anyhow!("droverctl status --json printed no JSON ({e}): {out}"))
    }

    /// Polls [`Guest::status`] every 2 s until `done` holds for it, and
    /// returns that status; on timeout, an error with the last answer.
    pub fn try_wait_status(
        &self,
        timeout: Duration,
        what: &str,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> anyhow::Result<serde_json::Value> {
        let start = Instant::now();
        let mut last = String::from("(no answer yet)");
        while start.elapsed() < timeout {
            match self.status() {
                Ok(st) if done(&st) => {
                    eprintln!(
                        "{}: {:6.1} s after start: {what}",
                        self.name,
                        self.started.elapsed().as_secs_f64()
                    );
                    return Ok(st);
                }
                Ok(st) => last = format!("{st:#}"),
                Err(e) => last = format!("{e:#}"),
            }
            std::thread::sleep(Duration::from_secs(2));
        }
        anyhow::bail!(
            "waited {} s for {what}; last status: {last}",
            timeout.as_secs()
        )
    }

    /// [`Guest::try_wait_status`], failing the test (with the console) on
    /// timeout.
    pub fn wait_status(
        &self,
        timeout: Duration,
        what: &str,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        self.try_wait_status(timeout, what, done)
            .unwrap_or_else(|e| self.fail(&format!("{e:#}")))
    }

    /// Runs `script` with `/bin/sh -c` in the guest; its exit code and
    /// output. Fails the test (with the console) when the guest agent
    /// does not answer.
    pub fn sh(&self, script: &str) -> (i64, String) {
        self.exec(&["/bin/sh", "-c", script], true)
            .unwrap_or_else(|e| self.fail(&format!("{script}: {e:#}")))
    }

    /// [`Guest::sh`], failing the test unless the script exits 0; its output.
    pub fn sh_ok(&self, script: &str) -> String {
        let (code, out) = self.sh(script);
        if code != 0 {
            self.fail(&format!("`{script}` exited with {code}: {out}"));
        }
        out
    }

    /// Waits until the guest agent answers (it starts late in the boot).
    pub fn wait_for_agent(&self, timeout: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            match self.exec(&["/bin/true"], true) {
                Ok(_) => return Ok(()),
                Err(e) if start.elapsed() > timeout => {
                    anyhow::bail!("{}: the guest agent did not answer: {e}", self.name)
                }
                Err(_) => std::thread::sleep(Duration::from_secs(2)),
            }
        }
    }

    /// Stops QEMU (kill by PID) and waits for it.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(mut t) = self.swtpm.take() {
            let _ = t.kill();
            let _ = t.wait();
        }
    }

    /// Waits for QEMU to exit by itself (the guest powered off or rebooted
    /// with -no-reboot).
    pub fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        anyhow::bail!(
            "{}: QEMU still running after {} s",
            self.name,
            timeout.as_secs()
        )
    }
}

/// A client of QEMU's line-delimited JSON protocols (the guest agent and
/// QMP): one command at a time, the reply is the next line with `return`
/// or `error`; greetings, events and stray lines are skipped.
struct JsonLines {
    stream: std::os::unix::net::UnixStream,
    reader: std::io::BufReader<std::os::unix::net::UnixStream>,
    peer: &'static str,
}

impl JsonLines {
    fn connect(sock: &Path, peer: &'static str) -> anyhow::Result<Self> {
        let stream = std::os::unix::net::UnixStream::connect(sock)?;
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        let reader = std::io::BufReader::new(stream.try_clone()?);
        Ok(Self {
            stream,
            reader,
            peer,
        })
    }

    fn call(&mut self, v: serde_json::Value) -> anyhow::Result<serde_json::Value> {
        use std::io::{BufRead as _, Write as _};
        self.stream.write_all(format!("{v}\n").as_bytes())?;
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                anyhow::bail!("{} closed the connection", self.peer);
            }
            let Ok(reply) = serde_json::from_str::<serde_json::Value>(line.trim()) else {
                continue;
            };
            if let Some(e) = reply.get("error") {
                anyhow::bail!("{} {}: {e}", self.peer, v["execute"]);
            }
            if let Some(ret) = reply.get("return") {
                return Ok(ret.clone());
            }
        }
    }
}

/// The JSON that follows `marker` on a console line (such as the test
/// image's `DROVER-STATUS {...}`), or null.
pub fn json_after(line: &str, marker: &str) -> serde_json::Value {
    let s = line.split_once(marker).map(|x| x.1).unwrap_or("");
    serde_json::from_str(s.trim()).unwrap_or(serde_json::Value::Null)
}

impl Drop for Guest {
    fn drop(&mut self) {
        self.stop();
    }
}
