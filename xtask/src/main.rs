//! `cargo xtask`: project automation.
//!
//! * `cargo xtask demo`: build, boot, update and roll back, narrated.
//! * `cargo xtask deps`: install the Debian packages the tests use.
//! * `cargo xtask test`: install them, then run every test of the workspace.
//! * `cargo xtask bench verity [--size-mib N]`: Drover vs `veritysetup format`.
//! * `cargo xtask bench apply`: the agent's apply vs `curl | dd`, and its memory.
//! * `cargo xtask bench delta`: a libc6 + OpenSSL security update as a delta,
//!   against casync, the full payload and `curl | dd`.
//! * `cargo xtask fuzz [--seconds N]`: run each fuzz target briefly (nightly).
//! * `cargo xtask sim [...]`: the fleet in simulation, with real etcd.
//! * `cargo xtask campaign NAME`: a long campaign whose results go to
//!   `docs/campaigns/` (`sim`: the fleet simulation's recorded scenarios;
//!   `crash`: the crash states of an update, checked on the host; `fuzz`:
//!   the fuzz targets on their committed corpora, time accumulated).

mod bench;
mod bench_apply;
mod bench_delta;
mod crash;
mod demo;
mod deps;
mod fuzz;
mod junit;
mod sim;

use std::process::{Command, ExitCode};

use anyhow::{bail, Context as _};

fn usage() -> &'static str {
    "usage: cargo xtask <command>

commands:
  demo                      build v1 and v2 of the default image, boot v1 in QEMU, update to v2,
                            roll back; narrated (about 6 minutes here)
  deps                      install the Debian packages tests and benches need
  test                      deps, then every test of the workspace (the README's test command)
  bench verity [--size-mib N]
                            format the same file with Drover and veritysetup, print times and ratio
  bench apply [--size-mib N]
                            drover-agent applying a payload from nginx vs curl | dd oflag=direct;
                            the agent's idle and peak memory
  bench delta               two builds of the default image a libc6 + OpenSSL security update apart:
                            the delta's download vs casync's and the full payload's, apply times,
                            EROFS lz4hc vs uncompressed (about 15 minutes the first time)
  fuzz [--seconds N]        run each cargo-fuzz target for N seconds (default 30; needs nightly)
  sim [--nodes N] [--groups G] [--max-rebooting M] [--rollout-hours H]
      [--canary-percent P --canary-hours H] [--poll-minutes M] [--jitter MINUTES]
      [--download-minutes MIN-MAX] [--reboot-minutes MIN-MAX] [--fail-fraction F]
      [--halt-after-failures N] [--seed S] [--members 1|3] [--threads T] [--out DIR]
                            a fleet through a rollout in simulated time, with the agent's
                            decision code and a real etcd; report.json, report.md, plots
  campaign sim [--nodes N]  the recorded scenarios (docs/fleet.md) into target/campaign-sim/
  campaign crash [--states N] [--seed S] [--out FILE] [--record]
                            crash states of an update recorded in QEMU, checked on the host
                            (docs/campaigns/crash.md)
  campaign fuzz [--minutes M] [--targets A,B]
                            every fuzz target for M minutes on its committed corpus, new
                            entries merged and minimised, time recorded (docs/campaigns/fuzz.json)"
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let res = match args.first().map(String::as_str) {
        Some("deps") => deps::install(),
        Some("test") => test(),
        Some("demo") => demo::run(),
        Some("bench") => bench::run(&args[1..]),
        Some("fuzz") => fuzz::smoke(&args[1..]),
        Some("sim") => sim::Args::parse(&args[1..]).and_then(|a| {
            let r = sim::run(a)?;
            println!("{}", serde_json::to_string_pretty(&r)?);
            Ok(())
        }),
        Some("campaign") => match args.get(1).map(String::as_str) {
            Some("sim") => sim::campaign(&args[2..]),
            Some("crash") => crash::campaign(&args[2..]),
            Some("fuzz") => fuzz::campaign(&args[2..]),
            _ => Err(anyhow::anyhow!(
                "usage: cargo xtask campaign sim [--nodes N] | crash [--states N] [--seed S] [--out FILE] [--record] | fuzz [--minutes M]"
            )),
        },
        Some("-h" | "--help" | "help") | None => {
            println!("{}", usage());
            Ok(())
        }
        Some(other) => Err(anyhow::anyhow!("unknown command '{other}'\n\n{}", usage())),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprint!("{}", drover_core::error_report("error: ", "", e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// Runs a command, inheriting stdio; fails when it fails.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("xtask: running {cmd:?}");
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// Every test of the workspace. Doc tests first, then everything else with
/// cargo-nextest (installed when missing), whose summary line closes the run.
fn test() -> anyhow::Result<()> {
    deps::install()?;
    run(cargo().args(["test", "--workspace", "--doc"]))?;
    let have_nextest = cargo()
        .args(["nextest", "--version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !have_nextest {
        run(cargo().args(["install", "--locked", "cargo-nextest"]))?;
    }
    // The QEMU tests probe for a working KVM once per run and keep the
    // answer here (qemu-tests/src/accel.rs): a new run probes afresh.
    let root = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    let _ = std::fs::remove_file(root.join("target/tmp/drover-qemu-accel"));
    let junit = root.join("target/nextest/default/junit.xml");
    let _ = std::fs::remove_file(&junit);
    let res = run(cargo().args([
        "nextest",
        "run",
        "--workspace",
        "--all-targets",
        "--no-fail-fast",
    ]));
    // The slowest tests, from nextest's JUnit file (.config/nextest.toml),
    // whether the run passed or not.
    match std::fs::read_to_string(&junit) {
        Ok(xml) => print!("{}", junit::slowest_report(&xml, 10)),
        Err(e) => eprintln!("xtask: no test times ({}: {e})", junit.display()),
    }
    // The fleet simulation's smoke version (its campaign is 100 000 nodes,
    // outside CI): 1 000 nodes in 2 groups of at most 5 rebooting, and a
    // bad release behind a canary, each held to the bar.
    let sim = sim_smoke(root);
    res.and(sim)
}

/// `cargo xtask sim` at 1 000 nodes, twice, checked.
fn sim_smoke(root: &std::path::Path) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let out = root.join("target/sim-smoke");
    for (name, extra) in [
        ("steady", vec!["--groups", "2", "--max-rebooting", "5"]),
        (
            "bad-canary",
            vec![
                "--fail-fraction",
                "0.05",
                "--halt-after-failures",
                "3",
                "--canary-percent",
                "5",
                "--canary-hours",
                "6",
            ],
        ),
    ] {
        run(Command::new(&exe)
            .args(["sim", "--nodes", "1000", "--check", "--out"])
            .arg(out.join(name))
            .args(extra)
            .stdout(std::process::Stdio::null()))?;
    }
    eprintln!(
        "xtask: the fleet simulation's smoke runs passed ({})",
        out.display()
    );
    Ok(())
}
