//! The fuzz targets (`fuzz/`, cargo-fuzz on the nightly toolchain): a
//! short smoke run for CI, and the campaign that accumulates — each target
//! run on its committed corpus (`fuzz/corpus/TARGET/`), new entries merged
//! in and the corpus minimised, and the time every target has run in all
//! recorded in `docs/campaigns/fuzz.json`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};

use crate::run;

/// Every target, one per parser of untrusted bytes.
pub const TARGETS: [&str; 17] = [
    "slot_header",
    "manifest",
    "locator_and_slot_reader",
    "signed_slot_reader",
    "verity_superblock",
    "gpt_table",
    "tcg_event_log",
    "attestation_evidence",
    "channel_metadata",
    "boot_record",
    "node_config",
    "agent_config",
    "install_json",
    "block_index",
    "tuf_metadata",
    "bundle",
    "fleet_records",
];

fn root() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/..")).to_owned()
}

fn ensure_cargo_fuzz() -> anyhow::Result<()> {
    let have = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !have {
        run(Command::new("cargo").args(["install", "--locked", "cargo-fuzz"]))?;
    }
    Ok(())
}

/// `cargo xtask fuzz [--seconds N]`: every target for N seconds from a
/// fixed seed, after replaying its committed corpus. New inputs go to a
/// scratch directory, not into the committed corpus.
pub fn smoke(args: &[String]) -> anyhow::Result<()> {
    let seconds = match args {
        [] => 30,
        [flag, n] if flag == "--seconds" => n.parse().context("--seconds takes a number")?,
        _ => bail!("usage: cargo xtask fuzz [--seconds N]"),
    };
    ensure_cargo_fuzz()?;
    let scratch = root().join("target/fuzz-smoke");
    for target in TARGETS {
        let new = scratch.join(target);
        let _ = std::fs::remove_dir_all(&new);
        std::fs::create_dir_all(&new)?;
        let corpus = root().join("fuzz/corpus").join(target);
        std::fs::create_dir_all(&corpus)?;
        run(Command::new("cargo")
            .args(["+nightly", "fuzz", "run", target])
            .arg(&new)
            .arg(&corpus)
            .args([
                "--",
                // A fixed seed: the same input sequence every run, so CI's
                // verdict repeats; `cargo xtask campaign fuzz` explores.
                "-seed=1",
                &format!("-max_total_time={seconds}"),
            ])
            .current_dir(root()))?;
    }
    Ok(())
}

/// What `docs/campaigns/fuzz.json` keeps per target.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Record {
    /// Seconds run in all campaigns.
    seconds: u64,
    /// Inputs executed in all campaigns.
    executions: u64,
    /// Each campaign run.
    runs: Vec<Run>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Run {
    date: String,
    seconds: u64,
    executions: u64,
    /// Files in the committed corpus after the merge and minimisation.
    corpus_files: usize,
}

const USAGE: &str = "usage: cargo xtask campaign fuzz [--minutes M] [--targets A,B,...]";

/// `cargo xtask campaign fuzz`.
pub fn campaign(args: &[String]) -> anyhow::Result<()> {
    let mut minutes = 60u64;
    let mut targets: Vec<String> = TARGETS.iter().map(|t| t.to_string()).collect();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .with_context(|| format!("{a} needs a value\n{USAGE}"))
        };
        match a.as_str() {
            "--minutes" => minutes = value()?.parse().context("--minutes")?,
            "--targets" => {
                targets = value()?.split(',').map(str::to_string).collect();
                if let Some(t) = targets.iter().find(|t| !TARGETS.contains(&t.as_str())) {
                    bail!("no fuzz target '{t}' (there are: {})", TARGETS.join(", "));
                }
            }
            "-h" | "--help" => {
                println!("{USAGE}\n\nRuns each target for M minutes (default 60) on fuzz/corpus/TARGET, merges the\nnew inputs into it, minimises it (cargo fuzz cmin), and adds the time to\ndocs/campaigns/fuzz.json. A crash stops the target and fails the campaign;\nthe input is in fuzz/artifacts/TARGET/.");
                return Ok(());
            }
            other => bail!("unknown argument '{other}'\n{USAGE}"),
        }
    }
    ensure_cargo_fuzz()?;
    let record_path = root().join("docs/campaigns/fuzz.json");
    // Read again before each write: two campaigns may run side by side
    // (one per core, disjoint `--targets`) and each adds only its own.
    let read_records = || -> anyhow::Result<BTreeMap<String, Record>> {
        match std::fs::read_to_string(&record_path) {
            Ok(t) => serde_json::from_str(&t).with_context(|| record_path.display().to_string()),
            Err(_) => Ok(BTreeMap::new()),
        }
    };
    read_records()?;
    let work = root().join("target/fuzz-campaign");
    let mut crashed = Vec::new();
    for target in &targets {
        let corpus = root().join("fuzz/corpus").join(target);
        let new = work.join(target);
        let _ = std::fs::remove_dir_all(&new);
        std::fs::create_dir_all(&new)?;
        std::fs::create_dir_all(&corpus)?;
        let log = work.join(format!("{target}.log"));
        eprintln!("fuzz: {target} for {minutes} min (log {})", log.display());
        let started = std::time::Instant::now();
        let status = Command::new("cargo")
            .args(["+nightly", "fuzz", "run", target])
            .arg(&new)
            .arg(&corpus)
            .args([
                "--",
                &format!("-max_total_time={}", minutes * 60),
                "-print_final_stats=1",
            ])
            .current_dir(root())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .status()?;
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        // The time libFuzzer ran ("Done N runs in S second(s)"), not
        // counting the build before it; the wall time when it stopped
        // early.
        let seconds = text
            .lines()
            .find_map(|l| {
                let rest = l.strip_prefix("Done ")?;
                let (_, secs) = rest.split_once(" runs in ")?;
                secs.split_whitespace().next()?.parse().ok()
            })
            .unwrap_or_else(|| started.elapsed().as_secs());
        let executions = text
            .lines()
            .find_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        if !status.success() {
            eprintln!(
                "fuzz: {target} FAILED after {seconds} s; see {}",
                log.display()
            );
            crashed.push(target.clone());
        }
        // Merge: the new inputs join the corpus, then the corpus is
        // minimised to the inputs that keep its coverage.
        for e in std::fs::read_dir(&new)? {
            let e = e?;
            std::fs::copy(e.path(), corpus.join(e.file_name()))?;
        }
        run(Command::new("cargo")
            .args(["+nightly", "fuzz", "cmin", target])
            .arg(&corpus)
            .current_dir(root())
            .stdout(Stdio::null())
            .stderr(Stdio::null()))?;
        let corpus_files = std::fs::read_dir(&corpus)?.count();
        let mut records = read_records()?;
        let r = records.entry(target.clone()).or_default();
        r.seconds += seconds;
        r.executions += executions;
        r.runs.push(Run {
            date: drover_core::time::Utc::from_unix(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)?
                    .as_secs(),
            )
            .display_minutes(),
            seconds,
            executions,
            corpus_files,
        });
        eprintln!(
            "fuzz: {target}: {seconds} s, {executions} inputs; {} s in all; corpus {corpus_files} files",
            r.seconds
        );
        std::fs::write(&record_path, serde_json::to_string_pretty(&records)? + "\n")?;
    }
    println!("{:<26} {:>10} {:>16}", "target", "seconds", "executions");
    for (t, r) in &read_records()? {
        println!("{t:<26} {:>10} {:>16}", r.seconds, r.executions);
    }
    if !crashed.is_empty() {
        bail!("fuzz targets that failed: {}", crashed.join(", "));
    }
    Ok(())
}
