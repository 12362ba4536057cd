//! `cargo xtask sim`: a fleet in simulation, through a rollout, with the
//! agent's own decision code and a real etcd.
//!
//! Simulated: time (it skips from one event to the next), the download and
//! the reboot (durations drawn from the ranges given), and which nodes'
//! boots of the release fail. Real: the wave (`Rollout::node_start`), the
//! poll schedule with its jitter (`schedule`), the channel check
//! (`engine::pick` on signed-channel metadata), the halt rule
//! (`fleet::halted`, with the failures read from etcd), the reboot
//! decision and its backoff (`strategy::Gate`), and the lock: every
//! acquire, release and failure count is the agent's etcd client against
//! etcd (Debian's, started here on loopback, `--members` of them).
//!
//! Events due in the same simulated second run at once on a pool of
//! threads, each with its own etcd client, so nodes that ask for the lock
//! together contend on its key as they would, and the compare-and-swap
//! conflicts are etcd's.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{bail, Context as _};
use drover_core::agent_config::{self, Reboot, Strategy};
use drover_core::channel::{Canary, Metadata, Release, Rollout};
use drover_update_agent::apply::Policy;
use drover_update_agent::engine::{self, Verdict};
use drover_update_agent::fleet::etcd::{lock_key, Etcd, EtcdLock};
use drover_update_agent::fleet::{self, Acquired, Failures, Lock, LockStatus};
use drover_update_agent::state::State;
use drover_update_agent::strategy::{Decision, Gate};
use rayon::prelude::*;
use serde::Serialize;

mod plot;

/// The simulation's inputs.
#[derive(Clone, Debug, Serialize)]
pub struct Args {
    pub nodes: usize,
    pub groups: u32,
    pub max_rebooting: u32,
    pub rollout_hours: u32,
    pub canary_percent: Option<u8>,
    pub canary_hours: u32,
    pub poll_minutes: u64,
    pub jitter_minutes: u64,
    pub download_minutes: (f64, f64),
    pub reboot_minutes: (f64, f64),
    pub fail_fraction: f64,
    pub halt_after_failures: Option<u32>,
    pub seed: u64,
    pub members: usize,
    pub threads: usize,
    pub out: PathBuf,
    /// Fail unless the report meets the bar ([`Report::violations`]).
    pub check: bool,
}

impl Default for Args {
    fn default() -> Self {
        Args {
            nodes: 100_000,
            groups: 20,
            max_rebooting: 50,
            rollout_hours: 24,
            canary_percent: None,
            canary_hours: 0,
            poll_minutes: 60,
            jitter_minutes: 10,
            download_minutes: (2.0, 10.0),
            reboot_minutes: (1.0, 4.0),
            fail_fraction: 0.0,
            halt_after_failures: None,
            seed: 1,
            members: 1,
            threads: 32,
            out: PathBuf::from("target/sim"),
            check: false,
        }
    }
}

const USAGE: &str = "usage: cargo xtask sim [--nodes N] [--groups G] [--max-rebooting M]
    [--rollout-hours H] [--canary-percent P --canary-hours H] [--poll-minutes M]
    [--jitter MINUTES] [--download-minutes MIN-MAX] [--reboot-minutes MIN-MAX]
    [--fail-fraction F] [--halt-after-failures N] [--seed S] [--members 1|3]
    [--threads T] [--out DIR] [--check]";

fn range(s: &str) -> anyhow::Result<(f64, f64)> {
    let (a, b) = s.split_once('-').context("a range is MIN-MAX")?;
    let (a, b): (f64, f64) = (a.parse()?, b.parse()?);
    if !(0.0 < a && a <= b) {
        bail!("{s}: a range is 0 < MIN <= MAX");
    }
    Ok((a, b))
}

impl Args {
    /// From the command line.
    pub fn parse(args: &[String]) -> anyhow::Result<Args> {
        let mut a = Args::default();
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            if flag == "--help" || flag == "-h" {
                println!("{USAGE}");
                std::process::exit(0);
            }
            if flag == "--check" {
                a.check = true;
                continue;
            }
            let v = it
                .next()
                .with_context(|| format!("{flag} needs a value\n{USAGE}"))?;
            let n = || v.parse::<u64>().with_context(|| format!("{flag} {v}"));
            match flag.as_str() {
                "--nodes" => a.nodes = n()? as usize,
                "--groups" => a.groups = n()? as u32,
                "--max-rebooting" => a.max_rebooting = n()? as u32,
                "--rollout-hours" => a.rollout_hours = n()? as u32,
                "--canary-percent" => a.canary_percent = Some(n()? as u8),
                "--canary-hours" => a.canary_hours = n()? as u32,
                "--poll-minutes" => a.poll_minutes = n()?,
                "--jitter" => a.jitter_minutes = n()?,
                "--download-minutes" => a.download_minutes = range(v)?,
                "--reboot-minutes" => a.reboot_minutes = range(v)?,
                "--fail-fraction" => a.fail_fraction = v.parse()?,
                "--halt-after-failures" => a.halt_after_failures = Some(n()? as u32),
                "--seed" => a.seed = n()?,
                "--members" => a.members = n()? as usize,
                "--threads" => a.threads = n()? as usize,
                "--out" => a.out = PathBuf::from(v),
                _ => bail!("unknown flag {flag}\n{USAGE}"),
            }
        }
        if a.nodes == 0 || a.groups == 0 || a.max_rebooting == 0 || a.poll_minutes == 0 {
            bail!("--nodes, --groups, --max-rebooting and --poll-minutes are at least 1");
        }
        if !(0.0..=1.0).contains(&a.fail_fraction) {
            bail!("--fail-fraction is between 0 and 1");
        }
        if a.canary_percent.is_some_and(|p| !(1..=50).contains(&p))
            || (a.canary_percent.is_some() && a.canary_hours == 0)
        {
            bail!("--canary-percent is 1 to 50, with --canary-hours above 0");
        }
        Ok(a)
    }
}

/// What the simulation found (`report.json`).
#[derive(Debug, Serialize)]
pub struct Report {
    pub inputs: Args,
    pub nodes: usize,
    /// The most nodes of one group holding the lock (rebooting) at once.
    pub max_in_flight: u32,
    /// The per-group maximum (`--max-rebooting`).
    pub limit: u32,
    /// The most nodes of the whole fleet rebooting at once.
    pub max_in_flight_fleet: u32,
    /// Channel requests: the busiest minute over the mean minute, during
    /// the rollout.
    pub poll_peak_over_mean: f64,
    pub poll_mean_per_minute: f64,
    pub poll_peak_per_minute: u32,
    /// Nodes on the release at the end, over the nodes whose boot of it
    /// does not fail.
    pub updated_fraction: f64,
    /// Hours from publication to 50, 90, 99 and 100 % of the nodes that
    /// can take it updated (`null`: never reached).
    pub hours_to_updated: [Option<f64>; 4],
    /// Hours from publication until every node that can take the release
    /// had started it (its check found it and it began the download).
    pub hours_to_all_started: Option<f64>,
    /// The rollout's end (canary and waves) plus one poll interval and its
    /// jitter, hours: by then every node has checked since its wave came.
    pub deadline_hours: f64,
    /// Writes to the lock store per node: acquire, release, failure
    /// counts (each a read and a compare-and-swap, or more on conflict).
    pub lock_ops_per_node_mean: f64,
    pub lock_ops_per_node_max: u32,
    /// Reads of a release's failure count per node (the halt check, once a
    /// poll while the release is available to the node).
    pub halt_reads_per_node_mean: f64,
    pub cas_conflicts_total: u64,
    pub cas_conflicts_per_node_max: u32,
    pub etcd_requests: u64,
    /// Nodes that wrote the release (failed or not).
    pub installed_failing_release: usize,
    pub installed_failing_release_fraction: f64,
    pub failed_boots: usize,
    pub halted: bool,
    /// Hours from publication to the halt (the limit's failure counted).
    pub halted_at_hours: Option<f64>,
    pub simulated_hours: f64,
    pub wall_seconds: f64,
    pub etcd_requests_per_second: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Next {
    Poll,
    Downloaded,
    TryReboot,
    Booted,
    FellBack,
}

struct Node {
    machine_id: String,
    group: u32,
    fails: bool,
    wave: f64,
    next: Next,
    rng: fastrand::Rng,
    gate: Gate,
    state: State,
    ops: Arc<AtomicU64>,
    reads: Arc<AtomicU64>,
    conflicts: Arc<AtomicU64>,
    committed: Arc<AtomicU64>,
    installed: bool,
    installed_at: Option<u64>,
    updated_at: Option<u64>,
}

/// What one event did, for the figures.
enum Seen {
    Poll(u64),
    Installed,
    Acquired { seq: u64, group: u32, at: u64 },
    Released { seq: u64, group: u32, at: u64 },
    Updated,
    Failed { at: u64, fleet_failures: u32 },
}

/// A node's event done: the node, its next event, what it saw.
type Stepped = (usize, Option<u64>, Vec<Seen>);

thread_local! {
    static CLIENT: std::cell::OnceCell<Arc<Etcd>> = const { std::cell::OnceCell::new() };
}

static ENDPOINTS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();

/// Every worker's client, for the request count.
static CLIENTS: Mutex<Vec<Arc<Etcd>>> = Mutex::new(Vec::new());

/// Each worker thread's etcd client.
fn client() -> Arc<Etcd> {
    CLIENT.with(|c| {
        Arc::clone(c.get_or_init(|| {
            let e = Arc::new(
                Etcd::connect(ENDPOINTS.get().expect("endpoints"), None, None)
                    .expect("an etcd client"),
            );
            CLIENTS.lock().unwrap().push(Arc::clone(&e));
            e
        }))
    })
}

/// Events due within this many simulated seconds of each other run at
/// once (each at its own time): enough concurrency for the lock's key to
/// see contention, and for the run to finish in minutes.
const QUANTUM: u64 = 10;

/// The lock a simulated node's gate holds: the agent's etcd lock through
/// the worker thread's client, counting the node's operations and lost
/// compare-and-swaps.
struct SimLock {
    group: String,
    /// Writes: acquire, release, failure counts.
    ops: Arc<AtomicU64>,
    /// Reads of the failure count (the halt check at each poll).
    reads: Arc<AtomicU64>,
    conflicts: Arc<AtomicU64>,
    /// etcd's revision at this node's last write (grant or release).
    committed: Arc<AtomicU64>,
}

impl SimLock {
    fn read<T>(&self, f: impl FnOnce(&EtcdLock) -> anyhow::Result<T>) -> anyhow::Result<T> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        f(&EtcdLock::with_client(client(), &self.group))
    }

    fn with<T>(&self, f: impl FnOnce(&EtcdLock) -> anyhow::Result<T>) -> anyhow::Result<T> {
        let c = client();
        let before = c.counts().conflicts.load(Ordering::Relaxed);
        let rev = c.counts().last_commit.load(Ordering::Relaxed);
        let l = EtcdLock::with_client(Arc::clone(&c), &self.group);
        let r = f(&l);
        let after = c.counts().last_commit.load(Ordering::Relaxed);
        if after != rev {
            self.committed.store(after as u64, Ordering::Relaxed);
        }
        self.ops.fetch_add(1, Ordering::Relaxed);
        self.conflicts.fetch_add(
            c.counts().conflicts.load(Ordering::Relaxed) - before,
            Ordering::Relaxed,
        );
        r
    }
}

impl Lock for SimLock {
    fn describe(&self) -> String {
        format!("etcd lock {}", lock_key(&self.group))
    }
    fn group(&self) -> &str {
        &self.group
    }
    fn acquire(&self, id: &str) -> anyhow::Result<Acquired> {
        self.with(|l| l.acquire(id))
    }
    fn release(&self, id: &str) -> anyhow::Result<bool> {
        self.with(|l| l.release(id))
    }
    fn status(&self) -> anyhow::Result<LockStatus> {
        self.read(|l| l.status())
    }
    fn set_max(&self, max: u32) -> anyhow::Result<LockStatus> {
        self.with(|l| l.set_max(max))
    }
    fn record_failure(&self, v: &str, id: &str) -> anyhow::Result<Option<Failures>> {
        self.with(|l| l.record_failure(v, id))
    }
    fn failures(&self, v: &str) -> anyhow::Result<Option<Failures>> {
        self.read(|l| l.failures(v))
    }
    fn all_failures(&self) -> anyhow::Result<Vec<Failures>> {
        self.read(|l| l.all_failures())
    }
    fn clear_failures(&self, v: &str) -> anyhow::Result<bool> {
        self.with(|l| l.clear_failures(v))
    }
}

const VERSION: &str = "2.0.0";

/// When a running agent polls next, seen from a random moment: polls come
/// every `interval + U(0, jitter)`, so the wait from a random moment has
/// the density P(gap > t) / mean gap: flat up to the interval, falling
/// linearly to 0 over the jitter. (Drawing it uniform over the whole gap
/// instead makes every agent's first two polls crowd the first hour: a
/// spike that is the simulation's, not the fleet's.)
fn first_poll(rng: &mut fastrand::Rng, interval: u64, jitter: u64) -> u64 {
    let (i, j) = (interval as f64, jitter as f64);
    let u = rng.f64() * (i + j / 2.0);
    if u < i || j == 0.0 {
        u as u64
    } else {
        let p = (u - i) / (j / 2.0);
        (i + j * (1.0 - (1.0 - p).sqrt())) as u64
    }
}

fn minutes(rng: &mut fastrand::Rng, (a, b): (f64, f64)) -> u64 {
    ((a + rng.f64() * (b - a)) * 60.0) as u64
}

impl Node {
    /// Runs the node's next event at `now`; returns what it saw and when
    /// its next event is (None: nothing more).
    fn step(
        &mut self,
        now: u64,
        meta: &Metadata,
        args: &Args,
        seen: &mut Vec<Seen>,
    ) -> anyhow::Result<Option<u64>> {
        let poll_after = |rng: &mut fastrand::Rng| {
            now + drover_update_agent::schedule::next_poll_delay(
                args.poll_minutes * 60,
                args.jitter_minutes * 60,
                rng.u64(..),
            )
        };
        match self.next {
            Next::Poll => {
                seen.push(Seen::Poll(now));
                let node = engine::Node {
                    version: if self.updated_at.is_some() {
                        VERSION.into()
                    } else {
                        "1.0.0".into()
                    },
                    security_version: 1,
                    machine_id: self.machine_id.clone(),
                    os: "drover".into(),
                };
                let check = engine::pick(meta, &self.state, &node, Policy::default(), false, now)?;
                if let Verdict::Available { version } = &check.verdict {
                    let lock = self.gate.lock().expect("a lock");
                    let failures = lock.failures(version)?.map(|f| f.count()).unwrap_or(0);
                    if !fleet::halted(failures, args.halt_after_failures) {
                        self.installed = true;
                        self.installed_at = Some(now);
                        seen.push(Seen::Installed);
                        self.next = Next::Downloaded;
                        return Ok(Some(now + minutes(&mut self.rng, args.download_minutes)));
                    }
                }
                Ok(Some(poll_after(&mut self.rng)))
            }
            Next::Downloaded | Next::TryReboot => {
                match self.gate.decide(now, false, &|| Ok(None))? {
                    Decision::Reboot { .. } => {
                        seen.push(Seen::Acquired {
                            seq: self.committed.load(Ordering::Relaxed),
                            group: self.group,
                            at: now,
                        });
                        self.next = Next::Booted;
                        Ok(Some(now + minutes(&mut self.rng, args.reboot_minutes)))
                    }
                    Decision::Wait(_) => {
                        self.next = Next::TryReboot;
                        Ok(Some(self.gate.next_attempt_at().max(now + 1)))
                    }
                }
            }
            Next::Booted => {
                if self.fails {
                    // The boot fails; the stage falls back to the old slot.
                    self.next = Next::FellBack;
                    return Ok(Some(now + minutes(&mut self.rng, args.reboot_minutes)));
                }
                // Confirmed; the agent gives the lock back within its
                // 10 s bookkeeping tick.
                let at = now + 10;
                self.updated_at = Some(at);
                seen.push(Seen::Updated);
                self.release(at, seen)?;
                self.next = Next::Poll;
                Ok(Some(poll_after(&mut self.rng)))
            }
            Next::FellBack => {
                let lock = self.gate.lock().expect("a lock");
                let f = lock
                    .record_failure(VERSION, self.gate.id())?
                    .map(|f| f.count())
                    .unwrap_or(0);
                seen.push(Seen::Failed {
                    at: now + 10,
                    fleet_failures: f,
                });
                self.state.failed_versions.push(VERSION.into());
                self.release(now + 10, seen)?;
                self.next = Next::Poll;
                Ok(Some(poll_after(&mut self.rng)))
            }
        }
    }

    fn release(&mut self, at: u64, seen: &mut Vec<Seen>) -> anyhow::Result<()> {
        let lock = self.gate.lock().expect("a lock");
        if !lock.release(self.gate.id())? {
            bail!("node {} gave back a lock it did not hold", self.gate.id());
        }
        seen.push(Seen::Released {
            seq: self.committed.load(Ordering::Relaxed),
            group: self.group,
            at,
        });
        Ok(())
    }
}

/// Runs the simulation and writes `report.json`, `report.md` and the plots
/// in `args.out`.
pub fn run(args: Args) -> anyhow::Result<Report> {
    let wall = Instant::now();
    std::fs::create_dir_all(&args.out)?;
    eprintln!("sim: starting etcd ({} member(s))", args.members);
    let etcd = drover_qemu_tests::etcd::Etcd::start(args.members);
    ENDPOINTS
        .set(etcd.endpoints())
        .map_err(|_| anyhow::anyhow!("one simulation per process"))?;
    let groups: Vec<String> = (0..args.groups).map(|g| format!("g{g:02}")).collect();
    let admin = Etcd::connect(&etcd.endpoints(), None, None)?;
    let admin = Arc::new(admin);
    for g in &groups {
        EtcdLock::with_client(Arc::clone(&admin), g).set_max(args.max_rebooting)?;
    }
    let rollout = Rollout {
        start: 0,
        hours: args.rollout_hours,
        canary: args.canary_percent.map(|percent| Canary {
            percent,
            hours: args.canary_hours,
        }),
    };
    let meta = Metadata {
        format: drover_core::channel::FORMAT,
        channel: "stable".into(),
        sequence: 1,
        issued_at: 0,
        expires_at: u64::MAX,
        releases: vec![Release {
            version: VERSION.into(),
            security_version: 1,
            payload: "releases/2.0.0/usr.img".into(),
            size: 0,
            sha256: String::new(),
            root_hash: String::new(),
            manifest: String::new(),
            manifest_sha256: String::new(),
            blocks: None,
            rollout,
        }],
    };
    let reboot = Reboot {
        strategy: Strategy::EtcdLock,
        etcd: Some(agent_config::EtcdLock {
            endpoints: etcd.endpoints(),
            ca: None,
            cert: None,
            key: None,
            group: "unused".into(),
        }),
        ..Reboot::default()
    };
    let mut seed_rng = fastrand::Rng::with_seed(args.seed);
    let mut nodes: Vec<Mutex<Node>> = Vec::with_capacity(args.nodes);
    let mut queue = BinaryHeap::new();
    for i in 0..args.nodes {
        let machine_id = format!("{:016x}{:016x}", args.seed, i as u64);
        let id = fleet::node_id(&machine_id);
        let group = (i as u32) % args.groups;
        let ops = Arc::new(AtomicU64::new(0));
        let reads = Arc::new(AtomicU64::new(0));
        let conflicts = Arc::new(AtomicU64::new(0));
        let committed = Arc::new(AtomicU64::new(0));
        let lock = SimLock {
            group: groups[group as usize].clone(),
            ops: Arc::clone(&ops),
            reads: Arc::clone(&reads),
            conflicts: Arc::clone(&conflicts),
            committed: Arc::clone(&committed),
        };
        let mut rng = fastrand::Rng::with_seed(seed_rng.u64(..));
        // The agents have been running: their next poll comes as a
        // renewal process's in equilibrium would (see first_poll).
        let first = first_poll(&mut rng, args.poll_minutes * 60, args.jitter_minutes * 60);
        queue.push(Reverse((first, i)));
        nodes.push(Mutex::new(Node {
            wave: Rollout::wave(&machine_id, VERSION),
            machine_id,
            group,
            fails: rng.f64() < args.fail_fraction,
            next: Next::Poll,
            rng,
            gate: Gate::with_lock(&reboot, Some(Box::new(lock)), id),
            state: State::default(),
            ops,
            reads,
            conflicts,
            committed,
            installed: false,
            installed_at: None,
            updated_at: None,
        }));
    }
    let rollout_end = u64::from(
        args.canary_hours * u32::from(args.canary_percent.is_some()) + args.rollout_hours,
    ) * 3600;
    let deadline = rollout_end + (args.poll_minutes + args.jitter_minutes) * 60;
    // Past the deadline, only as long as updates are still under way.
    let horizon = deadline + 6 * 3600;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(args.threads)
        .build()?;
    let mut all_seen: Vec<Seen> = Vec::new();
    let mut last_report = Instant::now();
    let able = nodes
        .iter()
        .filter(|n| !n.lock().unwrap().fails)
        .count()
        .max(1);
    let mut updated = 0usize;
    while let Some(Reverse((t, _))) = queue.peek().copied() {
        if t > horizon || (t > deadline && updated >= able) {
            break;
        }
        let mut batch = Vec::new();
        while let Some(Reverse((u, i))) = queue.peek().copied() {
            if u >= t + QUANTUM {
                break;
            }
            queue.pop();
            batch.push((u, i));
        }
        let results: Vec<anyhow::Result<Stepped>> = pool.install(|| {
            batch
                .par_iter()
                .map(|&(u, i)| {
                    let mut n = nodes[i].lock().unwrap();
                    let mut seen = Vec::new();
                    let next = n.step(u, &meta, &args, &mut seen)?;
                    Ok((i, next, seen))
                })
                .collect()
        });
        for r in results {
            let (i, next, seen) = r?;
            if let Some(at) = next {
                queue.push(Reverse((at, i)));
            }
            updated += seen.iter().filter(|s| matches!(s, Seen::Updated)).count();
            all_seen.extend(seen);
        }
        if last_report.elapsed().as_secs() >= 10 {
            last_report = Instant::now();
            eprintln!(
                "sim: {:.1} h simulated, {updated} of {able} updated, {} s",
                t as f64 / 3600.0,
                wall.elapsed().as_secs()
            );
        }
    }
    let sim_end = queue.peek().map(|r| r.0 .0).unwrap_or(horizon).min(horizon);
    let nodes: Vec<Node> = nodes.into_iter().map(|m| m.into_inner().unwrap()).collect();
    let report = figures(
        &args,
        &nodes,
        &mut all_seen,
        rollout_end,
        deadline,
        sim_end,
        wall,
        &admin,
    );
    drop(etcd);
    std::fs::write(
        args.out.join("report.json"),
        serde_json::to_vec_pretty(&report)?,
    )?;
    plot::all(&args.out, &args, &nodes, &all_seen, &report)?;
    std::fs::write(args.out.join("report.md"), markdown(&report))?;
    if args.check {
        let v = report.violations();
        if !v.is_empty() {
            bail!("the simulation misses the bar: {}", v.join("; "));
        }
    }
    Ok(report)
}

#[allow(clippy::too_many_arguments)]
fn figures(
    args: &Args,
    nodes: &[Node],
    seen: &mut [Seen],
    rollout_end: u64,
    deadline: u64,
    sim_end: u64,
    wall: Instant,
    admin: &Etcd,
) -> Report {
    // Reboots in flight, in the order etcd committed the grants and the
    // releases (the revision of each write: one order for the cluster).
    let mut ev: Vec<(u64, u32, i32)> = seen
        .iter()
        .filter_map(|s| match s {
            Seen::Acquired { seq, group, .. } => Some((*seq, *group, 1)),
            Seen::Released { seq, group, .. } => Some((*seq, *group, -1)),
            _ => None,
        })
        .collect();
    ev.sort();
    let mut in_flight = vec![0i32; args.groups as usize];
    let (mut worst, mut fleet, mut fleet_max) = (0i32, 0i32, 0i32);
    for (_, g, d) in ev {
        in_flight[g as usize] += d;
        fleet += d;
        worst = worst.max(in_flight[g as usize]);
        fleet_max = fleet_max.max(fleet);
    }
    let minutes_in = (rollout_end.max(60) / 60) as usize;
    let mut per_minute = vec![0u32; minutes_in];
    for s in seen.iter() {
        if let Seen::Poll(t) = s {
            if let Some(m) = per_minute.get_mut((*t / 60) as usize) {
                *m += 1;
            }
        }
    }
    let mean = per_minute.iter().map(|&x| f64::from(x)).sum::<f64>() / per_minute.len() as f64;
    let peak = per_minute.iter().copied().max().unwrap_or(0);
    let able = nodes.iter().filter(|n| !n.fails).count();
    let mut times: Vec<u64> = nodes.iter().filter_map(|n| n.updated_at).collect();
    times.sort();
    let at = |q: f64| {
        let k = (q * able as f64).ceil() as usize;
        (k >= 1 && k <= times.len()).then(|| times[k - 1] as f64 / 3600.0)
    };
    let ops: Vec<u64> = nodes
        .iter()
        .map(|n| n.ops.load(Ordering::Relaxed))
        .collect();
    let conflicts: Vec<u64> = nodes
        .iter()
        .map(|n| n.conflicts.load(Ordering::Relaxed))
        .collect();
    let installed = nodes.iter().filter(|n| n.installed).count();
    let halted_at = args.halt_after_failures.and_then(|limit| {
        let mut f: Vec<(u64, u32)> = seen
            .iter()
            .filter_map(|s| match s {
                Seen::Failed { at, fleet_failures } => Some((*at, *fleet_failures)),
                _ => None,
            })
            .collect();
        f.sort();
        f.iter()
            .find(|(_, n)| *n >= limit)
            .map(|(t, _)| *t as f64 / 3600.0)
    });
    let requests = admin.counts().requests.load(Ordering::Relaxed)
        + CLIENTS
            .lock()
            .unwrap()
            .iter()
            .map(|c| c.counts().requests.load(Ordering::Relaxed))
            .sum::<u64>();
    let wall_s = wall.elapsed().as_secs_f64();
    Report {
        inputs: args.clone(),
        nodes: nodes.len(),
        max_in_flight: worst as u32,
        limit: args.max_rebooting,
        max_in_flight_fleet: fleet_max as u32,
        poll_peak_over_mean: if mean > 0.0 {
            f64::from(peak) / mean
        } else {
            0.0
        },
        poll_mean_per_minute: mean,
        poll_peak_per_minute: peak,
        updated_fraction: times.len() as f64 / able.max(1) as f64,
        hours_to_updated: [at(0.5), at(0.9), at(0.99), at(1.0)],
        hours_to_all_started: {
            let s: Vec<u64> = nodes
                .iter()
                .filter(|n| !n.fails)
                .filter_map(|n| n.installed_at)
                .collect();
            (s.len() == able).then(|| s.iter().copied().max().unwrap_or(0) as f64 / 3600.0)
        },
        deadline_hours: deadline as f64 / 3600.0,
        lock_ops_per_node_mean: ops.iter().sum::<u64>() as f64 / ops.len() as f64,
        lock_ops_per_node_max: ops.iter().copied().max().unwrap_or(0) as u32,
        halt_reads_per_node_mean: nodes
            .iter()
            .map(|n| n.reads.load(Ordering::Relaxed))
            .sum::<u64>() as f64
            / nodes.len() as f64,
        cas_conflicts_total: conflicts.iter().sum(),
        cas_conflicts_per_node_max: conflicts.iter().copied().max().unwrap_or(0) as u32,
        etcd_requests: requests,
        installed_failing_release: installed,
        installed_failing_release_fraction: installed as f64 / nodes.len() as f64,
        failed_boots: nodes.iter().filter(|n| n.fails && n.installed).count(),
        halted: halted_at.is_some(),
        halted_at_hours: halted_at,
        simulated_hours: sim_end as f64 / 3600.0,
        wall_seconds: wall_s,
        etcd_requests_per_second: requests as f64 / wall_s,
    }
}

impl Report {
    /// Where the run misses the bar: more in flight than the limit, nodes
    /// not updated by the deadline (with no failing boots), a bad release
    /// that did not halt, lock operations per node not bounded.
    pub fn violations(&self) -> Vec<String> {
        let mut v = Vec::new();
        if self.max_in_flight > self.limit {
            v.push(format!(
                "{} rebooting at once in a group, limit {}",
                self.max_in_flight, self.limit
            ));
        }
        if self.inputs.fail_fraction == 0.0 {
            match self.hours_to_updated[3] {
                Some(h) if h <= self.deadline_hours => {}
                h => v.push(format!(
                    "100 % updated at {h:?} h, deadline {:.1} h",
                    self.deadline_hours
                )),
            }
        }
        if let Some(limit) = self.inputs.halt_after_failures {
            if self.failed_boots >= limit as usize && !self.halted {
                v.push(format!("{} failed boots and no halt", self.failed_boots));
            }
        }
        if self.lock_ops_per_node_max > 20 {
            v.push(format!(
                "a node made {} lock operations",
                self.lock_ops_per_node_max
            ));
        }
        v
    }
}

fn markdown(r: &Report) -> String {
    let h = |x: Option<f64>| x.map(|v| format!("{v:.1} h")).unwrap_or("never".into());
    let a = &r.inputs;
    format!(
        "# Fleet simulation\n\n\
         {} nodes in {} groups, at most {} rebooting per group; rollout over {} h{}; polls every {} min + up to {} min jitter; \
         download {}–{} min, reboot {}–{} min; {:.1} % of the nodes fail to boot the release; halt after {}; seed {}; etcd members {}.\n\n\
         | figure | value |\n|---|---|\n\
         | most rebooting at once, worst group (limit) | {} ({}) |\n\
         | most rebooting at once, fleet | {} |\n\
         | channel requests per minute: mean, peak, peak/mean | {:.0}, {}, {:.2} |\n\
         | updated (of the nodes that can boot it) | {:.2} % |\n\
         | 50 / 90 / 99 / 100 % updated | {} / {} / {} / {} |\n\
         | every node started the update | {} (rollout + one poll interval and its jitter: {:.2} h) |\n\
         | lock operations per node: mean, worst; halt-check reads per node | {:.2}, {}; {:.1} |\n\
         | compare-and-swap conflicts: total, worst node | {}, {} |\n\
         | nodes that installed the release / failed its boot | {} ({:.2} %) / {} |\n\
         | halted | {} |\n\
         | etcd requests, per second of wall time | {}, {:.0} |\n\
         | simulated, wall time | {:.1} h, {:.0} s |\n\n\
         Plots: `polls.png` (channel requests per minute), `updated.png` (nodes updated over time, per tenth of the waves), \
         `in-flight.png` (reboots in flight, worst group and fleet, against the limit), `lock-ops.png` (lock operations and conflicts per node).\n",
        r.nodes, a.groups, a.max_rebooting, a.rollout_hours,
        a.canary_percent.map(|p| format!(" after a {p} % canary over {} h", a.canary_hours)).unwrap_or_default(),
        a.poll_minutes, a.jitter_minutes, a.download_minutes.0, a.download_minutes.1, a.reboot_minutes.0, a.reboot_minutes.1,
        a.fail_fraction * 100.0,
        a.halt_after_failures.map(|n| format!("{n} failures")).unwrap_or("never".into()),
        a.seed, a.members,
        r.max_in_flight, r.limit, r.max_in_flight_fleet,
        r.poll_mean_per_minute, r.poll_peak_per_minute, r.poll_peak_over_mean,
        r.updated_fraction * 100.0,
        h(r.hours_to_updated[0]), h(r.hours_to_updated[1]), h(r.hours_to_updated[2]), h(r.hours_to_updated[3]),
        h(r.hours_to_all_started), r.deadline_hours,
        r.lock_ops_per_node_mean, r.lock_ops_per_node_max, r.halt_reads_per_node_mean,
        r.cas_conflicts_total, r.cas_conflicts_per_node_max,
        r.installed_failing_release, r.installed_failing_release_fraction * 100.0, r.failed_boots,
        r.halted_at_hours.map(|t| format!("yes, at {t:.1} h")).unwrap_or("no".into()),
        r.etcd_requests, r.etcd_requests_per_second,
        r.simulated_hours, r.wall_seconds,
    )
}

/// `cargo xtask campaign sim`: the scenarios docs/fleet.md records, each
/// into `target/campaign-sim/NAME/`: the steady rollout, the same with a
/// lock of 5 per group (contention), a bad release with uniform waves, and
/// a bad release behind a canary.
pub fn campaign(rest: &[String]) -> anyhow::Result<()> {
    let mut nodes = 100_000usize;
    if let [flag, n] = rest {
        if flag == "--nodes" {
            nodes = n.parse()?;
        }
    }
    let base = Args {
        nodes,
        ..Args::default()
    };
    let scenarios = [
        ("steady", base.clone()),
        (
            "tight-lock",
            Args {
                max_rebooting: 5,
                ..base.clone()
            },
        ),
        (
            "bad-uniform",
            Args {
                fail_fraction: 0.05,
                halt_after_failures: Some(10),
                ..base.clone()
            },
        ),
        (
            "bad-canary",
            Args {
                fail_fraction: 0.05,
                halt_after_failures: Some(10),
                canary_percent: Some(1),
                canary_hours: 6,
                ..base.clone()
            },
        ),
    ];
    let mut rows = Vec::new();
    for (name, mut a) in scenarios {
        a.out = PathBuf::from("target/campaign-sim").join(name);
        eprintln!("campaign sim: {name}");
        // One etcd per process: each scenario runs as its own process.
        let exe = std::env::current_exe()?;
        let mut cmd = std::process::Command::new(exe);
        cmd.arg("sim")
            .args(["--nodes", &a.nodes.to_string(), "--out"])
            .arg(&a.out)
            .args(["--max-rebooting", &a.max_rebooting.to_string()]);
        if a.fail_fraction > 0.0 {
            cmd.args(["--fail-fraction", &a.fail_fraction.to_string()]);
        }
        if let Some(h) = a.halt_after_failures {
            cmd.args(["--halt-after-failures", &h.to_string()]);
        }
        if let Some(p) = a.canary_percent {
            cmd.args([
                "--canary-percent",
                &p.to_string(),
                "--canary-hours",
                &a.canary_hours.to_string(),
            ]);
        }
        crate::run(cmd.stdout(std::process::Stdio::null()))?;
        let r: serde_json::Value =
            serde_json::from_slice(&std::fs::read(a.out.join("report.json"))?)?;
        rows.push((name, r));
    }
    for (name, r) in &rows {
        println!(
            "{name}: nodes {} max_in_flight {} (limit {}) poll_peak_over_mean {:.2} updated {:.3} installed_failing_release {} halted {} wall {:.0} s",
            r["nodes"], r["max_in_flight"], r["limit"], r["poll_peak_over_mean"].as_f64().unwrap_or(0.0),
            r["updated_fraction"].as_f64().unwrap_or(0.0), r["installed_failing_release"], r["halted"],
            r["wall_seconds"].as_f64().unwrap_or(0.0)
        );
    }
    Ok(())
}
