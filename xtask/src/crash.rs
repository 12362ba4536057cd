//! `cargo xtask campaign crash`: the crash states of a recorded update,
//! checked on the host (see `drover_qemu_tests::crash` for the method).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use drover_qemu_tests::crash::{self, Recording};

const USAGE: &str = "usage: cargo xtask campaign crash [--states N] [--seed S] [--out FILE] [--record] [--agent-every N] [--boot N] [--boot-phase PHASE]";

/// Runs the campaign from the command line's arguments.
pub fn campaign(args: &[String]) -> anyhow::Result<()> {
    let root = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    let dir = root.join("target/campaign-crash");
    let mut states = 10_000usize;
    let mut seed: Option<u64> = None;
    let mut out: PathBuf = dir.join("report.json");
    let mut rerecord = false;
    let mut agent_every = 25usize;
    let mut boot = 20usize;
    let mut boot_phase: Option<String> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .with_context(|| format!("{a} needs a value\n{USAGE}"))
        };
        match a.as_str() {
            "--states" => states = value()?.parse().context("--states")?,
            "--seed" => seed = Some(parse_seed(value()?)?),
            "--out" => out = PathBuf::from(value()?),
            "--record" => rerecord = true,
            "--agent-every" => agent_every = value()?.parse().context("--agent-every")?,
            "--boot" => boot = value()?.parse().context("--boot")?,
            "--boot-phase" => boot_phase = Some(value()?.clone()),
            "-h" | "--help" => {
                println!("{USAGE}\n\nRecords the write log of an update in QEMU once (target/campaign-crash/recording/,\nagain with --record), then checks N crash states of it on the host (default 10 000) and boots\nthe first --boot of them in QEMU (default 20; each must reach a verified slot\nand finish the update; with --boot-phase, the first N of that phase: {}).\nWrites the report as JSON to FILE (default target/campaign-crash/report.json).", crash::PHASES.join(", "));
                return Ok(());
            }
            other => bail!("unknown argument '{other}'\n{USAGE}"),
        }
    }
    let seed = seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let rec = Recording::new(&dir.join("recording"));
    if rerecord || !rec.exists() {
        crate::deps::install()?;
        eprintln!(
            "crash: recording an update in QEMU into {}",
            rec.dir.display()
        );
        crash::record(&rec)?;
    } else {
        eprintln!(
            "crash: reusing the recording in {} (--record to make a new one)",
            rec.dir.display()
        );
    }
    // State numbers go round the phases in order.
    let n = crash::PHASES.len();
    let boot_ids: Vec<usize> = match &boot_phase {
        None => (0..boot).collect(),
        Some(p) => {
            let i = crash::PHASES.iter().position(|q| q == p).with_context(|| {
                format!("no phase '{p}' (there are: {})", crash::PHASES.join(", "))
            })?;
            (0..boot).map(|k| k * n + i).collect()
        }
    };
    eprintln!("crash: checking {states} states, seed {seed}");
    let report = crash::campaign(
        &rec,
        states,
        seed,
        agent_every,
        &boot_ids,
        &dir.join("work"),
    )?;
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&out, serde_json::to_string_pretty(&report)?)?;
    println!("crash states checked: {}", report.states_checked);
    println!("seed: {}", report.seed);
    println!(
        "write log: {} records, {} writes, {} flushes",
        report.log_records, report.log_writes, report.log_flushes
    );
    for (name, p) in &report.phases {
        println!(
            "  {name:<22} {:>6} checked  {:>4} unbootable",
            p.checked, p.unbootable
        );
    }
    println!("boots: {:?}", report.boots);
    println!(
        "agent state files read: {} ({} unreadable): {:?}",
        report.agent_states_read, report.agent_state_failures, report.agent_state_results
    );
    println!(
        "volatile writes in the states: {} ({} kept, {} torn, at most {} in one state)",
        report.volatile_writes, report.volatile_kept, report.volatile_torn, report.volatile_max
    );
    println!("unbootable: {}", report.unbootable);
    println!(
        "booted in QEMU: {} ({} failed)",
        report.booted.len(),
        report.boot_failures
    );
    println!("{:.0} s; report in {}", report.seconds, out.display());
    for b in &report.booted {
        println!(
            "  booted state {} ({}, log position {}): {} s, finished: {} (a spent try, so a rollback: {}), durable download {:?}, first stream at {:?}",
            b.id, b.phase, b.k, b.seconds, b.finished, b.rolled_back, b.durable_download, b.stream_started_at
        );
    }
    for f in report.failures.iter().take(20) {
        println!(
            "FAILED state {} ({}, log position {}, durable to {}): {}",
            f.id, f.phase, f.k, f.durable_to, f.why
        );
    }
    if !report.failures.is_empty() || report.boot_failures > 0 {
        bail!(
            "{} crash states failed the host check, {} failed to boot",
            report.failures.len(),
            report.boot_failures
        );
    }
    Ok(())
}

fn parse_seed(s: &str) -> anyhow::Result<u64> {
    match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).context("--seed"),
        None => s.parse().context("--seed"),
    }
}
