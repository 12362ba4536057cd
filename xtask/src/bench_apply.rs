//! `cargo xtask bench apply`: drover-agent applying a 1 GiB payload from
//! nginx on loopback into a file-backed slot, against `curl | dd
//! oflag=direct` copying the same bytes; and the agent's memory, idle and
//! at its peak while applying.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use drover_core::keys::SigningKey;
use drover_core::layout::{self, LayoutSpec};
use drover_test_support::{fake_fs, release_input, seal_release, Fill};

/// Kills the child (by PID) on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn wait_port(port: u16) -> anyhow::Result<()> {
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if t.elapsed() > Duration::from_secs(10) {
            bail!("nothing listens on port {port}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn status_kib(pid: u32, key: &str) -> anyhow::Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    s.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no {key} in /proc/{pid}/status"))
}

/// A sealed slot image of `mib` MiB (the verity bench's data file, first
/// KiB zeroed as EROFS leaves it).
fn payload(dir: &Path, mib: u64, key: &SigningKey) -> anyhow::Result<PathBuf> {
    let p = dir.join(format!("apply-{mib}m.img"));
    let data = super::bench::data_file(dir, mib)?;
    std::fs::copy(&data, &p)?;
    let f = OpenOptions::new().read(true).write(true).open(&p)?;
    use std::os::unix::fs::FileExt as _;
    f.write_all_at(&[0u8; 1024], 0)?;
    seal_as(&p, "2.0.0", key)?;
    Ok(p)
}

/// Runs the bench.
pub fn run(mib: u64) -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    crate::run(Command::new(env!("CARGO")).current_dir(&root).args([
        "build",
        "--release",
        "-p",
        "drover-image-builder",
        "-p",
        "drover-update-agent",
    ]))?;
    let rel = root.join("target/release");
    let dir = super::bench::bench_dir()?;
    let work = dir.join("apply");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;

    let (key, pem) = SigningKey::generate()?;
    std::fs::write(work.join("k.pem"), pem)?;
    std::fs::write(work.join("k.pub.pem"), key.public_key().to_pem())?;
    eprintln!("bench: sealing a {mib} MiB payload");
    let img = payload(&dir, mib, &key)?;
    let build = work.join("build");
    std::fs::create_dir_all(&build)?;
    std::fs::rename(&img, build.join("usr.img"))?;
    let repo = work.join("repo");
    crate::run(
        Command::new(rel.join("drover"))
            .args(["publish", "--no-blocks", "--channel", "stable", "--repo"])
            .arg(&repo)
            .arg("--image")
            .arg(&build)
            .arg("--key")
            .arg(work.join("k.pem"))
            .stdout(Stdio::null()),
    )?;
    let size = std::fs::metadata(repo.join("releases/2.0.0/usr.img"))?.len();

    // The node: a disk whose slots hold the payload, A running a small v1.
    let usr_mib = size.div_ceil(1 << 20) + 16;
    let spec = LayoutSpec {
        esp_mib: 1,
        usr_mib,
        oem_mib: 1,
        root_mib: 1,
        disk_guid: "00000000-0000-4000-8000-000000000001".parse()?,
    };
    let disk = work.join("disk.raw");
    File::create(&disk)?.set_len(spec.disk_size())?;
    {
        let mut f = OpenOptions::new().read(true).write(true).open(&disk)?;
        let t = layout::create(&mut f, &disk, &spec)?;
        let v1 = payload_small(&work, &key)?;
        let (off, _) = t.byte_range(3).context("USR-A")?;
        use std::os::unix::fs::FileExt as _;
        f.write_all_at(&std::fs::read(&v1)?, off)?;
        f.sync_all()?;
    }

    // nginx on loopback, dbus-daemon, the agent.
    let port = free_port()?;
    let ngx = work.join("nginx");
    std::fs::create_dir_all(&ngx)?;
    let d = ngx.display();
    std::fs::write(
        ngx.join("nginx.conf"),
        format!(
            "daemon off;\nmaster_process off;\npid {d}/pid;\nerror_log {d}/error.log;\nevents {{}}\n\
             http {{ access_log off; client_body_temp_path {d}/b; proxy_temp_path {d}/p; \
             fastcgi_temp_path {d}/f; uwsgi_temp_path {d}/u; scgi_temp_path {d}/s; \
             server {{ listen 127.0.0.1:{port}; root {}; }} }}\n",
            repo.display()
        ),
    )?;
    let _nginx = Proc(
        Command::new("nginx")
            .arg("-p")
            .arg(&ngx)
            .arg("-c")
            .arg(ngx.join("nginx.conf"))
            .arg("-e")
            .arg(ngx.join("error.log"))
            .spawn()
            .context("nginx (cargo xtask deps installs nginx-light)")?,
    );
    wait_port(port)?;
    let url = format!("http://127.0.0.1:{port}/");
    let bus_sock = work.join("bus");
    let bus = format!("unix:path={}", bus_sock.display());
    let _dbus = Proc(
        Command::new("dbus-daemon")
            .args(["--session", "--nofork", "--nopidfile", "--address", &bus])
            .spawn()?,
    );
    while !bus_sock.exists() {
        std::thread::sleep(Duration::from_millis(20));
    }
    let conf = work.join("conf.d");
    std::fs::create_dir_all(&conf)?;
    // What the boot stage would have left: USR-A booted, not measured.
    let record = drover_core::boot_record::BootRecord {
        slot: "USR-A".into(),
        decision: "candidate".into(),
        version: "1.0.0".into(),
        refused: Vec::new(),
        measured: false,
        not_measured_reason: Some("no TPM in the bench".into()),
        pcr: drover_core::measured::measure::PCR,
        banks: Vec::new(),
        events: Vec::new(),
    };
    std::fs::write(work.join("record.json"), serde_json::to_vec(&record)?)?;
    std::fs::write(
        conf.join("10.toml"),
        format!(
            "server = \"{url}\"\nauto-update = false\ntrusted-keys = [\"{}\"]\nstate-dir = \"{}\"\n\
             disk = \"{}\"\nboot-record = \"{}\"\nbus = \"{bus}\"\n[reboot]\nstrategy = \"off\"\n",
            work.join("k.pub.pem").display(),
            work.join("state").display(),
            disk.display(),
            work.join("record.json").display()
        ),
    )?;
    let agent = Proc(
        Command::new(rel.join("drover-agent"))
            .arg("--config")
            .arg(work.join("none.toml"))
            .arg("--config-dir")
            .arg(&conf)
            .env("DROVER_LOG", "warn")
            .spawn()?,
    );
    let pid = agent.0.id();
    let ctl = |args: &[&str]| {
        Command::new(rel.join("droverctl"))
            .arg("--bus")
            .arg(&bus)
            .args(args)
            .output()
    };
    let t = Instant::now();
    while !ctl(&["status", "--json"])?.status.success() {
        if t.elapsed() > Duration::from_secs(20) {
            bail!("drover-agent did not come up on the bus");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(2));
    let idle_kib = status_kib(pid, "VmRSS:")?;

    // Both runs start from the same state: nothing dirty waiting to be
    // written back (sealing and publishing wrote 2 GiB just now), the page
    // cache dropped where this user may.
    settle();
    let t = Instant::now();
    let out = ctl(&["update", "--json"])?;
    let agent_time = t.elapsed();
    if !out.status.success() {
        bail!(
            "the agent's update failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let peak_kib = status_kib(pid, "VmHWM:")?;

    // The peer: the same bytes with curl into dd with O_DIRECT.
    let dd_time = Duration::from_secs_f64(curl_dd(
        &format!("{url}releases/2.0.0/usr.img"),
        &work.join("dd-target.raw"),
        size,
    )?);
    let mb = size as f64 / (1 << 20) as f64;
    println!("apply {mb:.0} MiB from nginx on loopback into a file-backed slot:");
    println!(
        "  drover-agent (stream, SHA-256, verity tree, compare, flip): {:>7.2} s  {:>7.1} MiB/s",
        agent_time.as_secs_f64(),
        mb / agent_time.as_secs_f64()
    );
    println!(
        "  curl | dd oflag=direct (plain copy):                        {:>7.2} s  {:>7.1} MiB/s",
        dd_time.as_secs_f64(),
        mb / dd_time.as_secs_f64()
    );
    println!(
        "  ratio (plain copy time / drover time, goal >= 0.8):          {:.2}",
        dd_time.as_secs_f64() / agent_time.as_secs_f64()
    );
    println!(
        "drover-agent memory: idle {:.1} MiB (goal <= 10), peak while applying {:.1} MiB (goal <= 32)",
        idle_kib as f64 / 1024.0,
        peak_kib as f64 / 1024.0
    );
    if std::env::var_os("DROVER_BENCH_KEEP").is_none() {
        let _ = std::fs::remove_file(&disk);
    }
    Ok(())
}

/// Writes back everything dirty and drops the page cache (as root; else
/// only the write-back), so that a timed run starts from the same state as
/// the one it is compared with.
pub fn settle() {
    let _ = Command::new("sync").status();
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
    std::thread::sleep(Duration::from_millis(500));
}

/// The peer of the apply benches: `curl URL | dd oflag=direct` into a
/// `size`-byte file at `target` (removed after), settled first. Seconds.
pub fn curl_dd(url: &str, target: &Path, size: u64) -> anyhow::Result<f64> {
    File::create(target)?.set_len(size)?;
    settle();
    let t = Instant::now();
    let st = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "curl -sf '{url}' | dd of='{}' bs=1M iflag=fullblock oflag=direct conv=notrunc status=none",
            target.display()
        ))
        .stdout(Stdio::null())
        .status()?;
    let secs = t.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(target);
    if !st.success() {
        bail!("curl | dd failed");
    }
    Ok(secs)
}

/// A 4 MiB v1 for USR-A.
fn payload_small(dir: &Path, key: &SigningKey) -> anyhow::Result<PathBuf> {
    let p = dir.join("v1.img");
    fake_fs(&p, 4 << 20, Fill::Ramp);
    seal_as(&p, "1.0.0", key)?;
    Ok(p)
}

/// Seals the file at `p` in place as release `version`, signed by `key`.
fn seal_as(p: &Path, version: &str, key: &SigningKey) -> anyhow::Result<()> {
    Ok(seal_release(
        p,
        release_input(version, 1, vec![3; 32]),
        &[key],
    )?)
}
