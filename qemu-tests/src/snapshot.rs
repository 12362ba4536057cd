//! Boot once, restore many times: a test node booted to the state most
//! life-cycle tests start from, saved once per run, and restored by each
//! test that needs it instead of booting it again.
//!
//! The saved node is the shared test image (1.0.0 on USR-A) started as
//! [`crate::image::TestImage::node`] starts one (the stage booted
//! directly, the guest agent, reboots allowed), with a software TPM and a
//! channel NIC, booted until the test image's report is printed, the slot
//! is marked successful and the agent is idle. Its state is then taken
//! with QEMU's live migration to a file (`migrate` to `exec:cat > FILE`),
//! the TPM's state with it: QEMU's TPM emulator backend carries swtpm's
//! state in the migration stream and hands it to the new swtpm on the way
//! in, so PCR 8 still holds the stage's measurements after a restore (the
//! `snapshot` test checks it). When the migration completes, the guest is
//! stopped and its disk is no longer written: the disk file is kept as it
//! is beside the state.
//!
//! A restore copies the disk (sparse) and the TPM's state directory into
//! the test's directory and starts QEMU with the same devices and
//! `-incoming exec:cat STATE`; the guest continues where it was, and its
//! console starts with what the saved boot printed, so a test's first
//! `expect` of the boot report still matches. The channel's port may
//! differ from the saved one: the guest only knows 10.0.2.100:80, and
//! what QEMU connects that to on the host is not part of the guest's state.
//!
//! Tests about booting itself (the boot stage, firmware, measured boot,
//! rollback after a failed boot, every boot after a power cut) still boot.
//!
//! Kept in `<target>/tmp/drover-qemu-image/snapshot-idle/`, behind a lock
//! file, and reused while the test image's inputs stay the same.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use crate::guest::{Guest, GuestBuilder};
use crate::image::test_image;

/// A saved, booted test node.
#[derive(Debug)]
pub struct Snapshot {
    dir: PathBuf,
}

const BOOT: Duration = Duration::from_secs(600);

/// The idle 1.0.0 node, saved on first use in this run.
pub fn idle_node() -> &'static Snapshot {
    static SNAP: OnceLock<Snapshot> = OnceLock::new();
    SNAP.get_or_init(|| {
        save_idle_node().unwrap_or_else(|e| panic!("saving the booted test node: {e:#}"))
    })
}

/// A port on loopback where nothing listens: the saved node's channel.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a loopback port")
}

/// The saved node's machine, booting for real: the options the node was
/// saved with (QEMU restores a state only into a machine with the same
/// devices), its guest agent socket, TPM state and QMP socket in `dir`,
/// the channel at `port`. For the boots after a restored one, such as
/// those after a power cut.
pub fn builder(name: &str, disk: &Path, dir: &Path, port: u16) -> GuestBuilder {
    test_image()
        .node(name, disk, &dir.join("qga.sock"))
        .tpm(&dir.join("tpm"))
        .channel(port)
        .qmp(&dir.join("qmp.sock"))
}

fn save_idle_node() -> anyhow::Result<Snapshot> {
    let img = test_image();
    let dir = img.dir.join("snapshot-idle");
    std::fs::create_dir_all(&dir)?;
    let lock = std::fs::File::create(dir.join(".lock"))?;
    lock.lock().context("locking the saved node")?;
    let key = std::fs::read_to_string(img.dir.join("inputs.sha256"))?;
    let stamp = dir.join("inputs.sha256");
    let snap = Snapshot { dir: dir.clone() };
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(key.as_str())
        && snap.state().is_file()
    {
        return Ok(snap);
    }
    let _ = std::fs::remove_file(&stamp);
    for f in ["state", "console.txt", "disk.raw", "state.partial"] {
        let _ = std::fs::remove_file(dir.join(f));
    }
    let _ = std::fs::remove_dir_all(dir.join("tpm"));
    eprintln!(
        "qemu-tests: booting the test node once to save it in {}",
        dir.display()
    );
    let started = Instant::now();
    let disk = img.fresh_disk(&dir);
    let mut g = builder("saved-node", &disk, &dir, closed_port()).start()?;
    let fail = |g: &Guest, e: anyhow::Error| g.with_console_tail(e, 100);
    g.wait_for("DROVER-TEST-REPORT slot=USR-A version=1.0.0", BOOT)
        .map_err(|e| fail(&g, e))?;
    g.wait_for_agent(Duration::from_secs(180))
        .map_err(|e| fail(&g, e))?;
    g.try_wait_status(Duration::from_secs(180), "1.0.0 idle and good", |st| {
        st["booted-successful"] == true && st["operation"] == "idle"
    })
    .map_err(|e| fail(&g, e))?;
    migrate_to_file(&g, &dir.join("state.partial")).map_err(|e| fail(&g, e))?;
    let console = g.console();
    g.stop();
    std::fs::write(dir.join("console.txt"), console)?;
    std::fs::rename(dir.join("state.partial"), snap.state())?;
    std::fs::write(&stamp, key)?;
    eprintln!(
        "qemu-tests: saved the booted test node in {} s",
        started.elapsed().as_secs()
    );
    Ok(snap)
}

/// Live-migrates the running guest into `file` and waits until QEMU says
/// the migration completed (the guest is then paused for good).
fn migrate_to_file(g: &Guest, file: &Path) -> anyhow::Result<()> {
    let uri = format!("exec:cat > '{}'", file.display());
    g.qmp("migrate", serde_json::json!({ "uri": uri }))?;
    let start = Instant::now();
    loop {
        let st = g.qmp("query-migrate", serde_json::Value::Null)?;
        match st["status"].as_str() {
            Some("completed") => return Ok(()),
            Some("failed" | "cancelled") => bail!("migration to {}: {st}", file.display()),
            _ if start.elapsed() > Duration::from_secs(300) => {
                bail!(
                    "migration to {} still running after 300 s: {st}",
                    file.display()
                )
            }
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

impl Snapshot {
    /// The migration stream.
    pub fn state(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// What the guest had printed when it was saved.
    pub fn console(&self) -> String {
        std::fs::read_to_string(self.dir.join("console.txt")).unwrap_or_default()
    }

    /// The saved node restored into `dir` (its own copy of the disk, at
    /// `dir/disk.raw`, and of the TPM), with the channel at `port` on the
    /// host. Returns the guest and its disk.
    pub fn restore(&self, name: &str, dir: &Path, port: u16) -> (Guest, PathBuf) {
        self.restore_with(name, dir, port, &[])
    }

    /// [`Snapshot::restore`] with more host services the guest may reach
    /// ([`GuestBuilder::forward`]): the network backend is not part of the
    /// saved state, so a restore may add them.
    pub fn restore_with(
        &self,
        name: &str,
        dir: &Path,
        port: u16,
        forwards: &[(&str, u16)],
    ) -> (Guest, PathBuf) {
        self.restore_custom(name, dir, port, |mut b, _| {
            for (guest, host) in forwards {
                b = b.forward(guest, *host);
            }
            b
        })
    }

    /// [`Snapshot::restore`] with the machine changed by `custom` before it
    /// starts, given the builder and the disk copy: host services to reach,
    /// or the disk served by [`crate::nbd`] (the block backend is not part
    /// of the saved state either).
    pub fn restore_custom(
        &self,
        name: &str,
        dir: &Path,
        port: u16,
        custom: impl FnOnce(GuestBuilder, &Path) -> GuestBuilder,
    ) -> (Guest, PathBuf) {
        let disk = dir.join("disk.raw");
        let copy = |from: &Path, to: &Path, recursive: bool| {
            let mut c = Command::new("cp");
            c.arg("--sparse=always");
            if recursive {
                c.arg("-a");
            }
            let st = c.arg(from).arg(to).status().expect("cp");
            assert!(
                st.success(),
                "copying {} to {}",
                from.display(),
                to.display()
            );
        };
        copy(&self.dir.join("disk.raw"), &disk, false);
        let tpm = dir.join("tpm");
        let _ = std::fs::remove_dir_all(&tpm);
        copy(&self.dir.join("tpm"), &tpm, true);
        // swtpm's socket of the saved run is stale.
        let _ = std::fs::remove_file(tpm.join("swtpm.sock"));
        let g = custom(builder(name, &disk, dir, port), &disk)
            .incoming(&self.state(), self.console())
            .start()
            .unwrap_or_else(|e| panic!("{name}: restoring the saved node: {e:#}"));
        // The guest's clock resumes at the moment it was saved: set it to
        // now before the test publishes anything (a rollout starts at its
        // publication time, and the agent waits for it by its own clock).
        g.wait_for_agent(Duration::from_secs(120))
            .and_then(|()| g.sync_clock())
            .unwrap_or_else(|e| g.fail(&format!("setting the restored guest's clock: {e:#}")));
        (g, disk)
    }
}
