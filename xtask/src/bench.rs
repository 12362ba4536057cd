//! Benchmarks that run a peer tool side by side and print the ratio.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use drover_core::verity::{self, DataFile, HashFile, VerityParams};

const RUNS: usize = 3;
const SALT: &str = "3b1f0e5d7c9a2b4d6f8e0a1c3e5f7a9b1d3f5e7a9c1b3d5f7e9a1c3b5d7f9e1a";
const UUID: &str = "2f6a3c1e-8b4d-4e7f-9a0b-1c2d3e4f5a6b";

/// `cargo xtask bench <what>`.
pub fn run(args: &[String]) -> anyhow::Result<()> {
    match args.first().map(String::as_str) {
        Some("verity") => {
            let mib = match &args[1..] {
                [] => 1024,
                [flag, n] if flag == "--size-mib" => {
                    n.parse().context("--size-mib takes a number")?
                }
                _ => bail!("usage: cargo xtask bench verity [--size-mib N]"),
            };
            verity_bench(mib)
        }
        Some("image") => image_bench(),
        Some("apply") => {
            let mib = match &args[1..] {
                [] => 1024,
                [flag, n] if flag == "--size-mib" => {
                    n.parse().context("--size-mib takes a number")?
                }
                _ => bail!("usage: cargo xtask bench apply [--size-mib N]"),
            };
            crate::bench_apply::run(mib)
        }
        Some("delta") => crate::bench_delta::run(),
        _ => bail!(
            "usage: cargo xtask bench verity [--size-mib N] | image | apply [--size-mib N] | delta"
        ),
    }
}

fn timed<T>(f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<(T, Duration)> {
    let t = Instant::now();
    let v = f()?;
    Ok((v, t.elapsed()))
}

/// Builds the default image (examples/container-host.toml) with release
/// binaries, prints the time of every stage, then times the /usr → slot
/// image step against mkfs.erofs + veritysetup format on the same tree.
fn image_bench() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    crate::run(
        crate::cargo()
            .args([
                "build",
                "--release",
                "-p",
                "drover-image-builder",
                "-p",
                "drover-boot",
            ])
            .current_dir(&root),
    )?;
    let dir = bench_dir()?.join("image");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let drover = root.join("target/release/drover");
    let (key, public) = (dir.join("bench.pem"), dir.join("bench.pub.pem"));
    crate::run(
        Command::new(&drover)
            .args(["keygen", "--secret"])
            .arg(&key)
            .arg("--public")
            .arg(&public),
    )?;
    let out = dir.join("out");
    let o = Command::new(&drover)
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .args(["build", "--quiet", "--json", "--spec"])
        .arg(root.join("examples/container-host.toml"))
        .arg("--key")
        .arg(&key)
        .arg("--out")
        .arg(&out)
        .output()?;
    if !o.status.success() {
        bail!(
            "drover build failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let report: serde_json::Value = serde_json::from_slice(&o.stdout)?;
    println!("drover build of examples/container-host.toml, stage by stage:");
    for s in report["stages"].as_array().into_iter().flatten() {
        println!(
            "  {:<10} {:>7.1} s",
            s["stage"].as_str().unwrap_or("?"),
            s["seconds"].as_f64().unwrap_or(0.0)
        );
    }
    // The same /usr tree for both sides of the comparison.
    let tree = dir.join("usr-tree");
    let st = Command::new("fsck.erofs")
        .arg(format!("--extract={}", tree.display()))
        .arg(out.join("usr.img"))
        .status()?;
    if !st.success() {
        bail!("fsck.erofs --extract failed");
    }
    let epoch = 1_700_000_000;
    let uuid = uuid::Uuid::from_u128(0x2f6a3c1e_8b4d_4e7f_9a0b_1c2d3e4f5a6b);
    let key = drover_core::keys::SigningKey::load(&key)?;

    let ours = dir.join("drover-usr.img");
    let (_, d_erofs) =
        timed(|| drover_image_builder::build::mkfs_erofs(&tree, &ours, epoch, uuid))?;
    let (_, d_seal) = timed(|| {
        let mut input = drover_test_support::release_input("bench", 1, hex::decode(SALT)?);
        input.created = epoch;
        Ok(drover_test_support::seal_release(&ours, input, &[&key])?)
    })?;

    let theirs = dir.join("peer-usr.img");
    let (_, p_erofs) = timed(|| {
        let st = Command::new("mkfs.erofs")
            .args(drover_image_builder::build::erofs_args(epoch, uuid))
            .arg("--quiet")
            .arg(&theirs)
            .arg(&tree)
            .status()?;
        if !st.success() {
            bail!("mkfs.erofs failed");
        }
        Ok(())
    })?;
    let size = std::fs::metadata(&theirs)?.len();
    let blocks = size.div_ceil(4096);
    let (_, p_verity) = timed(|| {
        let st = Command::new("veritysetup")
            .args([
                "format",
                "--hash=sha256",
                "--data-block-size=4096",
                "--hash-block-size=4096",
            ])
            .arg(format!("--salt={SALT}"))
            .arg(format!("--hash-offset={}", blocks * 4096))
            .arg(format!("--data-blocks={blocks}"))
            .arg(&theirs)
            .arg(&theirs)
            .stdout(std::process::Stdio::null())
            .status()?;
        if !st.success() {
            bail!("veritysetup format failed");
        }
        Ok(())
    })?;
    let d = d_erofs + d_seal;
    let p = p_erofs + p_verity;
    println!("/usr tree -> slot image ({} MiB file system):", size >> 20);
    println!("  drover     {:>7.2} s  (mkfs.erofs {:.2} s + verity, locator and signed manifest {:.2} s)", d.as_secs_f64(), d_erofs.as_secs_f64(), d_seal.as_secs_f64());
    println!(
        "  peer tools {:>7.2} s  (mkfs.erofs {:.2} s + veritysetup format {:.2} s)",
        p.as_secs_f64(),
        p_erofs.as_secs_f64(),
        p_verity.as_secs_f64()
    );
    println!(
        "  ratio      {:>7.2}x  (peer time / drover time)",
        p.as_secs_f64() / d.as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

pub fn bench_dir() -> anyhow::Result<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Writes `mib` MiB of pseudo-random data (xorshift, fixed seed) unless a
/// file of that size is already there.
pub fn data_file(dir: &Path, mib: u64) -> anyhow::Result<PathBuf> {
    let path = dir.join(format!("verity-{mib}m.data"));
    if std::fs::metadata(&path)
        .map(|m| m.len() == mib << 20)
        .unwrap_or(false)
    {
        return Ok(path);
    }
    eprintln!(
        "bench: writing {mib} MiB of test data to {}",
        path.display()
    );
    let mut f = File::create(&path)?;
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut buf = vec![0u8; 1 << 20];
    for _ in 0..mib {
        for c in buf.chunks_mut(8) {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            c.copy_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
        }
        f.write_all(&buf)?;
    }
    f.sync_all()?;
    Ok(path)
}

fn best(times: &[Duration]) -> Duration {
    *times.iter().min().expect("at least one run")
}

fn verity_bench(mib: u64) -> anyhow::Result<()> {
    let dir = bench_dir()?;
    let data = data_file(&dir, mib)?;
    let ours = dir.join("verity-drover.hash");
    let theirs = dir.join("verity-veritysetup.hash");
    // Warm the page cache so both read from memory.
    std::io::copy(&mut File::open(&data)?, &mut std::io::sink())?;
    let salt = hex::decode(SALT)?;
    let uuid: [u8; 16] = hex::decode(UUID.replace('-', ""))?
        .try_into()
        .expect("16 bytes");
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);

    let mut drover_times = Vec::new();
    let mut drover_root = String::new();
    for _ in 0..RUNS {
        let _ = std::fs::remove_file(&ours);
        let d = File::open(&data)?;
        let h = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&ours)?;
        let t = Instant::now();
        let out = verity::format(
            DataFile {
                file: &d,
                path: &data,
                offset: 0,
            },
            HashFile {
                file: &h,
                path: &ours,
                offset: 0,
            },
            &VerityParams::new((mib << 20) / 4096, salt.clone()),
            uuid,
        )?;
        drover_times.push(t.elapsed());
        drover_root = hex::encode(out.root_hash);
    }

    let mut vs_times = Vec::new();
    let mut vs_root = String::new();
    for _ in 0..RUNS {
        let _ = std::fs::remove_file(&theirs);
        let t = Instant::now();
        let out = Command::new("veritysetup")
            .args([
                "format",
                data.to_str().unwrap(),
                theirs.to_str().unwrap(),
                "--hash=sha256",
                "--data-block-size=4096",
                "--hash-block-size=4096",
            ])
            .arg(format!("--salt={SALT}"))
            .arg(format!("--uuid={UUID}"))
            .output()
            .context("running veritysetup (cargo xtask deps installs it)")?;
        vs_times.push(t.elapsed());
        if !out.status.success() {
            bail!(
                "veritysetup failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        vs_root = String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("Root hash:").map(|r| r.trim().to_string()))
            .unwrap_or_default();
    }
    let same_bytes = std::fs::read(&ours)? == std::fs::read(&theirs)?;
    let (d, v) = (best(&drover_times), best(&vs_times));
    let gib = mib as f64 / 1024.0;
    println!("verity format, {mib} MiB of data, 4 KiB blocks, sha256, best of {RUNS}, page cache warm, {threads} cores:");
    println!(
        "  drover       {:>8.3} s  {:>6.2} GiB/s",
        d.as_secs_f64(),
        gib / d.as_secs_f64()
    );
    println!(
        "  veritysetup  {:>8.3} s  {:>6.2} GiB/s",
        v.as_secs_f64(),
        gib / v.as_secs_f64()
    );
    println!(
        "  ratio        {:>8.2}x  (veritysetup time / drover time)",
        v.as_secs_f64() / d.as_secs_f64()
    );
    println!(
        "  root hashes  {}",
        if drover_root == vs_root {
            "equal"
        } else {
            "DIFFER"
        }
    );
    println!(
        "  hash files   {}",
        if same_bytes {
            "byte-identical"
        } else {
            "DIFFER"
        }
    );
    if drover_root != vs_root || !same_bytes {
        bail!("drover and veritysetup disagree: {drover_root} vs {vs_root}");
    }
    let _ = std::fs::remove_file(&ours);
    let _ = std::fs::remove_file(&theirs);
    Ok(())
}
