//! `cargo xtask bench delta`: a node of the default image takes a real
//! Debian security update of libc6 and OpenSSL as a delta.
//!
//! Two builds of `examples/container-host.toml` (mmdebstrap, the package
//! cache under `target/bench/delta/cache`): the old one with libc6 and
//! OpenSSL pinned to older Debian builds ([`OLD_VERSIONS`]), the new one with
//! what the spec's sources give today. Both are published to one channel
//! (old, then new: the new release's frames are cut along the old), served
//! by nginx on loopback. Then, side by side:
//!
//! * the delta: `droverctl update` of a disk whose USR-A runs the old
//!   release — every byte nginx sent for it, against the compressed full
//!   payload (`usr.blocks`) and the raw slot image;
//! * casync (Debian's package), the peer: the same update as a `casync
//!   extract` seeded with the old slot image, from a chunk store (zstd) on
//!   the same nginx — every byte it sent;
//! * the full update as today (`publish --no-blocks`: the raw payload
//!   streamed) and through the frames (a node with nothing in common), each
//!   timed, against `curl | dd` of the raw payload;
//! * the file system: the same two /usr trees made into EROFS with Drover's
//!   options (lz4hc, `noinline_data`) and uncompressed (`noinline_data`),
//!   each pair's new blocks cut into frames along the old and compressed
//!   with zstd as `drover publish` does: the download of the delta, of a full
//!   update, and the size on disk.
//!
//! The builds are kept and reused while their spec is unchanged; the rest
//! runs every time. Results go to `target/bench/delta/report.json`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context as _};
use drover_core::blocks::{self, BLOCK};
use drover_core::SlotId;
use drover_qemu_tests::web::Nginx;

/// The old release's pinned packages: older Debian builds of libc and
/// OpenSSL still in the archive — libc6 from bookworm-security (the new
/// release takes bookworm's newer point-release build), OpenSSL from
/// bookworm (the new release takes bookworm-security's, DSA). OpenSSL
/// cannot go lower: bookworm's openssh-server needs libssl3 >= 3.0.19.
pub const OLD_VERSIONS: [(&str, &str); 4] = [
    ("libc6", "2.36-9+deb12u7"),
    ("libc-bin", "2.36-9+deb12u7"),
    ("libssl3", "3.0.20-1~deb12u2"),
    ("openssl", "3.0.20-1~deb12u2"),
];

const EPOCH: &str = "1700000000";

fn out(cmd: &mut Command) -> anyhow::Result<String> {
    let o = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    if !o.status.success() {
        bail!(
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// Builds `spec` into `dir/out` (slot image only) unless the same spec
/// built there before; the root file system is kept in `dir/rootfs`.
fn build(rel: &Path, spec: &str, dir: &Path, key: &Path, cache: &Path) -> anyhow::Result<PathBuf> {
    let out_dir = dir.join("out");
    let stamp = dir.join("spec.toml");
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(spec)
        && out_dir.join("usr.img").exists()
        && dir.join("rootfs/usr").is_dir()
    {
        eprintln!("bench: reusing the build in {}", dir.display());
        return Ok(out_dir);
    }
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let spec_path = dir.join("spec.in.toml");
    std::fs::write(&spec_path, spec)?;
    eprintln!("bench: building {} (mmdebstrap: minutes)", dir.display());
    let t = Instant::now();
    out(Command::new(rel.join("drover"))
        .env("SOURCE_DATE_EPOCH", EPOCH)
        .args(["build", "--quiet", "--slot-only", "--spec"])
        .arg(&spec_path)
        .arg("--key")
        .arg(key)
        .arg("--out")
        .arg(&out_dir)
        .arg("--cache-dir")
        .arg(cache)
        .arg("--keep-rootfs")
        .arg(dir.join("rootfs")))?;
    eprintln!("bench: built in {:.0} s", t.elapsed().as_secs_f64());
    std::fs::write(&stamp, spec)?;
    Ok(out_dir)
}

/// The installed version of each package in `names`, from `build.json`.
fn versions(out_dir: &Path, names: &[&str]) -> anyhow::Result<Vec<String>> {
    let r: drover_image_builder::build::BuildReport =
        serde_json::from_slice(&std::fs::read(out_dir.join("build.json"))?)?;
    Ok(names
        .iter()
        .map(|n| {
            r.packages
                .iter()
                .find(|p| p.split(':').next() == Some(n))
                .cloned()
                .unwrap_or_else(|| format!("{n} (not installed)"))
        })
        .collect())
}

/// Bytes nginx sent for requests whose path contains `needle`, from line
/// `from` of its log on.
fn sent(log: &str, from: usize, needle: &str) -> (u64, usize) {
    log.lines()
        .skip(from)
        .filter(|l| l.contains(needle))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .fold((0, 0), |(b, n), x| (b + x, n + 1))
}

/// A node's disk: `running` in USR-A (successful), USR-B empty.
fn node_disk(path: &Path, running: &Path, usr_mib: u64) {
    drover_test_support::disk(path, &drover_test_support::small_layout(usr_mib));
    drover_test_support::write_slot(path, SlotId::A, running);
}

/// What a node did: the report, the seconds, the bytes nginx sent.
struct Update {
    report: serde_json::Value,
    seconds: f64,
    bytes: u64,
    requests: usize,
}

fn update(
    rel: &Path,
    web: &Nginx,
    path: &str,
    disk: &Path,
    pub_key: &Path,
    state: &Path,
) -> anyhow::Result<Update> {
    let _ = std::fs::remove_dir_all(state);
    crate::bench_apply::settle();
    let from = web.access_log().lines().count();
    let t = Instant::now();
    let text = out(Command::new(rel.join("droverctl"))
        .args(["update", "--json", "--channel", "stable", "--from"])
        .arg(format!("{}{path}", web.url()))
        .arg("--disk")
        .arg(disk)
        .arg("--trust")
        .arg(pub_key)
        .arg("--state-dir")
        .arg(state))?;
    let seconds = t.elapsed().as_secs_f64();
    let (bytes, requests) = sent(&web.access_log(), from, &format!("/{path}"));
    Ok(Update {
        report: serde_json::from_str(text.lines().next().unwrap_or("{}"))?,
        seconds,
        bytes,
        requests,
    })
}

/// The delta of a file-system image pair as `drover publish` frames it:
/// (new 4 KiB blocks, their frames compressed, all frames compressed, raw).
fn frame_delta(old: &Path, new: &Path, level: i32) -> anyhow::Result<(u64, u64, u64, u64)> {
    let read = |p: &Path| std::fs::read(p).with_context(|| p.display().to_string());
    let (a, b) = (read(old)?, read(new)?);
    let have: HashSet<&[u8]> = a.chunks(BLOCK as usize).collect();
    let is_new = |blk: u64| {
        let s = (blk * BLOCK) as usize;
        !have.contains(&b[s..(s + BLOCK as usize).min(b.len())])
    };
    let ranges = blocks::cut(b.len() as u64, |blk| is_new(blk) != is_new(blk - 1));
    let mut c = zstd::bulk::Compressor::new(level)?;
    let (mut new_blocks, mut delta, mut full) = (0u64, 0u64, 0u64);
    for r in &ranges {
        let z = c.compress(&b[r.start as usize..r.end as usize])?.len() as u64;
        full += z;
        if is_new(r.start / BLOCK) {
            new_blocks += (r.end - r.start).div_ceil(BLOCK);
            delta += z;
        }
    }
    Ok((new_blocks * BLOCK, delta, full, b.len() as u64))
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / f64::from(1 << 20))
}

fn pct(a: u64, b: u64) -> String {
    format!("{:.2} %", 100.0 * a as f64 / b.max(1) as f64)
}

/// Runs the bench.
pub fn run() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    crate::deps::install()?;
    crate::run(crate::cargo().current_dir(&root).args([
        "build",
        "--release",
        "-p",
        "drover-image-builder",
        "-p",
        "drover-update-agent",
        "-p",
        "drover-boot",
    ]))?;
    let rel = root.join("target/release");
    let dir = crate::bench::bench_dir()?.join("delta");
    std::fs::create_dir_all(&dir)?;
    let (key, pub_key) = (dir.join("k.pem"), dir.join("k.pub.pem"));
    if !key.exists() {
        out(Command::new(rel.join("drover"))
            .args(["keygen", "--secret"])
            .arg(&key)
            .arg("--public")
            .arg(&pub_key))?;
    }

    // The two releases.
    let example = std::fs::read_to_string(root.join("examples/container-host.toml"))?;
    let example = example.replace("\"keys/", &format!("\"{}/examples/keys/", root.display()));
    let mut old_spec = example.clone();
    old_spec.push_str("\n[debian.versions]\n");
    for (p, v) in OLD_VERSIONS {
        old_spec.push_str(&format!("{p} = \"{v}\"\n"));
    }
    let new_spec = example
        .replace("version = \"1.0.0\"", "version = \"1.0.1\"")
        .replace("security-version = 1", "security-version = 2");
    let cache = dir.join("cache");
    let old = build(&rel, &old_spec, &dir.join("old"), &key, &cache)?;
    let new = build(&rel, &new_spec, &dir.join("new"), &key, &cache)?;
    let names = ["libc6", "libssl3"];
    let (vo, vn) = (versions(&old, &names)?, versions(&new, &names)?);

    // One channel, old then new; and one with the raw payloads only.
    let www = dir.join("www");
    let _ = std::fs::remove_dir_all(&www);
    std::fs::create_dir_all(&www)?;
    let publish = |repo: &Path, build: &Path, extra: &[&str]| -> anyhow::Result<f64> {
        let t = Instant::now();
        out(Command::new(rel.join("drover"))
            .args(["publish", "--channel", "stable", "--repo"])
            .arg(repo)
            .arg("--image")
            .arg(build)
            .arg("--key")
            .arg(&key)
            .args(extra))?;
        Ok(t.elapsed().as_secs_f64())
    };
    publish(&www.join("delta"), &old, &[])?;
    let publish_secs = publish(&www.join("delta"), &new, &[])?;
    publish(&www.join("raw"), &old, &["--no-blocks"])?;
    publish(&www.join("raw"), &new, &["--no-blocks"])?;
    let raw = std::fs::metadata(new.join("usr.img"))?.len();
    let full_z = std::fs::metadata(www.join("delta/releases/1.0.1/usr.blocks"))?.len();

    // casync: a chunk store of both slot images, on the same server.
    let store = www.join("casync/store");
    std::fs::create_dir_all(&store)?;
    for (b, name) in [(&old, "old"), (&new, "new")] {
        out(Command::new("casync")
            .args(["make", "--compression=zstd"])
            .arg(format!("--store={}", store.display()))
            .arg(www.join(format!("casync/{name}.caibx")))
            .arg(b.join("usr.img")))?;
    }

    let web = Nginx::serve(&www, None);
    let usr_mib = raw.max(std::fs::metadata(old.join("usr.img"))?.len()) / (1 << 20) + 16;
    let work = dir.join("work");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let disk = work.join("node.raw");

    eprintln!("bench: the delta");
    node_disk(&disk, &old.join("usr.img"), usr_mib);
    let d = update(&rel, &web, "delta", &disk, &pub_key, &work.join("state"))?;
    let stats = d.report["delta"].clone();
    if stats.is_null() {
        bail!("the update was not a delta: {}", d.report);
    }

    eprintln!("bench: casync extract, seeded with the old slot image");
    let from = web.access_log().lines().count();
    let target = work.join("casync-out.img");
    crate::bench_apply::settle();
    let t = Instant::now();
    out(Command::new("casync")
        .arg("extract")
        .arg(format!("--seed={}", old.join("usr.img").display()))
        .arg(format!("--store={}casync/store", web.url()))
        .arg(format!("{}casync/new.caibx", web.url()))
        .arg(&target))?;
    let casync_secs = t.elapsed().as_secs_f64();
    let (casync_bytes, casync_requests) = sent(&web.access_log(), from, "/casync/");
    if std::fs::read(&target)? != std::fs::read(new.join("usr.img"))? {
        bail!("casync extracted other bytes than the new slot image");
    }
    let _ = std::fs::remove_file(&target);

    eprintln!("bench: the full update, raw payload streamed");
    node_disk(&disk, &old.join("usr.img"), usr_mib);
    let full_raw = update(&rel, &web, "raw", &disk, &pub_key, &work.join("state"))?;

    eprintln!("bench: the full update through the frames (a node with nothing in common)");
    let v0 = work.join("v0.img");
    drover_test_support::fake_fs(&v0, 4 << 20, drover_test_support::Fill::Ramp);
    drover_test_support::seal_release(
        &v0,
        drover_test_support::release_input("0.9.0", 1, vec![5; 32]),
        &[&drover_core::keys::SigningKey::load(&key)?],
    )?;
    node_disk(&disk, &v0, usr_mib);
    let full_frames = update(&rel, &web, "delta", &disk, &pub_key, &work.join("state"))?;

    eprintln!("bench: curl | dd of the raw payload");
    let dd_secs = crate::bench_apply::curl_dd(
        &format!("{}raw/releases/1.0.1/usr.img", web.url()),
        &work.join("dd.raw"),
        raw,
    )?;
    let _ = std::fs::remove_file(&disk);

    eprintln!("bench: EROFS with Drover's options and uncompressed, on the same two /usr trees");
    let uuid = uuid::Uuid::from_u128(0x2f6a3c1e_8b4d_4e7f_9a0b_1c2d3e4f5a6b);
    let mut fs_rows = Vec::new();
    for (label, args) in [
        (
            "lz4hc, noinline_data (Drover)",
            drover_image_builder::build::erofs_args(1_700_000_000, uuid),
        ),
        (
            "uncompressed, noinline_data",
            vec![
                "-Enoinline_data".into(),
                "-T1700000000".into(),
                format!("-U{uuid}"),
            ],
        ),
    ] {
        let mut imgs = Vec::new();
        for side in ["old", "new"] {
            let img = work.join(format!("{side}-{}.erofs", imgs.len()));
            out(Command::new("mkfs.erofs")
                .args(&args)
                .arg("--quiet")
                .arg(&img)
                .arg(dir.join(side).join("rootfs/usr")))?;
            imgs.push(img);
        }
        let (new_bytes, delta_z, full_z, size) = frame_delta(&imgs[0], &imgs[1], 12)?;
        for i in imgs {
            let _ = std::fs::remove_file(i);
        }
        fs_rows.push((label, new_bytes, delta_z, full_z, size));
    }

    // The table.
    let fetched = stats["fetched-bytes"].as_u64().unwrap_or(0);
    println!();
    println!(
        "cargo xtask bench delta: the default image, a Debian security update of libc6 and OpenSSL"
    );
    println!("  old 1.0.0: {}", vo.join(", "));
    println!("  new 1.0.1: {}", vn.join(", "));
    println!("slot image of 1.0.1 (raw): {} ; compressed full payload (usr.blocks, zstd 12): {} ({} of raw); publish took {publish_secs:.0} s",
        mib(raw), mib(full_z), pct(full_z, raw));
    println!();
    println!("download for a node on 1.0.0           bytes        of compressed full   requests");
    println!(
        "  drover delta (all nginx sent)   {:>12}        {:>10}          {:>4}",
        d.bytes,
        pct(d.bytes, full_z),
        d.requests
    );
    println!(
        "    of which frames               {:>12}        {:>10}",
        fetched,
        pct(fetched, full_z)
    );
    println!(
        "  casync extract --seed (peer)    {:>12}        {:>10}          {:>4}",
        casync_bytes,
        pct(casync_bytes, full_z),
        casync_requests
    );
    println!(
        "  full, compressed frames         {:>12}        {:>10}          {:>4}",
        full_frames.bytes,
        pct(full_frames.bytes, full_z),
        full_frames.requests
    );
    println!(
        "  full, raw payload               {:>12}        {:>10}          {:>4}",
        full_raw.bytes,
        pct(full_raw.bytes, full_z),
        full_raw.requests
    );
    println!(
        "  drover delta / casync: {:.2}",
        d.bytes as f64 / casync_bytes.max(1) as f64
    );
    println!();
    println!("time to apply (loopback, file-backed disk, page cache dropped before each)");
    println!("  drover delta                    {:>7.2} s", d.seconds);
    println!("  casync extract --seed           {:>7.2} s", casync_secs);
    println!(
        "  drover full, frames             {:>7.2} s",
        full_frames.seconds
    );
    println!(
        "  drover full, raw payload        {:>7.2} s",
        full_raw.seconds
    );
    println!(
        "  curl | dd oflag=direct (raw)    {:>7.2} s   (full raw / dd: {:.2})",
        dd_secs,
        dd_secs / full_raw.seconds
    );
    println!();
    println!("file system (same two /usr trees; frames cut along the old, zstd 12)");
    println!(
        "  {:<32} {:>12} {:>14} {:>14} {:>12}",
        "mkfs.erofs", "new blocks", "delta (zstd)", "full (zstd)", "on disk"
    );
    for (label, nb, dz, fz, size) in &fs_rows {
        println!(
            "  {label:<32} {:>12} {:>14} {:>14} {:>12}",
            mib(*nb),
            mib(*dz),
            mib(*fz),
            mib(*size)
        );
    }

    let report = serde_json::json!({
        "old": {"version": "1.0.0", "packages": vo},
        "new": {"version": "1.0.1", "packages": vn},
        "raw-bytes": raw,
        "compressed-full-bytes": full_z,
        "delta": {"bytes": d.bytes, "requests": d.requests, "seconds": d.seconds, "stats": stats},
        "casync": {"bytes": casync_bytes, "requests": casync_requests, "seconds": casync_secs},
        "full-frames": {"bytes": full_frames.bytes, "seconds": full_frames.seconds},
        "full-raw": {"bytes": full_raw.bytes, "seconds": full_raw.seconds},
        "curl-dd-seconds": dd_secs,
        "filesystems": fs_rows.iter().map(|(l, nb, dz, fz, s)| serde_json::json!({
            "mkfs": l, "new-block-bytes": nb, "delta-zstd-bytes": dz, "full-zstd-bytes": fz, "size": s
        })).collect::<Vec<_>>(),
    });
    std::fs::write(
        dir.join("report.json"),
        serde_json::to_string_pretty(&report)? + "\n",
    )?;
    Ok(())
}
