//! Crash states of a recorded update, checked on the host.
//!
//! The method is CrashMonkey's and ALICE's (Mohan et al., "Finding Crash-
//! Consistency Bugs with Bounded Black-Box Crash Testing", OSDI 2018;
//! Pillai et al., "All File Systems Are Not Created Equal", OSDI 2014):
//! record the block writes and flushes of a real run once
//! ([`crate::nbd`]), then build the disks a power cut could have left and
//! check each one, without running the system again.
//!
//! A crash state is a point `k` of the write log and a choice among the
//! writes that were still volatile there. Everything up to the last flush
//! before `k` is on the disk (and every FUA write before `k`); of each
//! write after that flush, the disk holds all of it, none of it, or (a torn
//! write) any subset of its 512-byte sectors. Overlapping volatile writes
//! land in log order.
//!
//! A state passes when the boot stage's own rule ([`Slots`], the code
//! `drover-boot` runs) reaches a slot whose signed manifest verifies
//! against the image's key and whose verity tree holds over every data
//! block; a slot that fails is left out and the rule runs again, as the
//! stage does. The GPT must parse (primary or backup header). On a sample
//! of states the agent's state file is read from the ROOT file system
//! after `e2fsck` replays its journal (as a boot would): it must parse or
//! be absent, and so must each role the agent's TUF client stored (its
//! rollback protection).

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read as _};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _};
use drover_core::keys::{PublicKey, TrustedKeys};
use drover_core::slot_image::{self, Window};
use drover_core::slots::Slots;
use drover_core::table::PartitionTable;
use drover_core::SlotId;
use serde::Serialize;

use crate::nbd::{LOG_MAGIC, TAG_FLUSH, TAG_MARK, TAG_WRITE, TAG_WRITE_FUA};

/// The files of a recording, in one directory.
#[derive(Clone, Debug)]
pub struct Recording {
    /// The directory.
    pub dir: PathBuf,
}

impl Recording {
    /// A recording kept in `dir`.
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
        }
    }
    /// The disk as it was when the recording started.
    pub fn base(&self) -> PathBuf {
        self.dir.join("base.raw")
    }
    /// The write log.
    pub fn log(&self) -> PathBuf {
        self.dir.join("writes.log")
    }
    /// The public key the image trusts.
    pub fn key(&self) -> PathBuf {
        self.dir.join("key.pub.pem")
    }
    /// The channel the update came from.
    pub fn repo(&self) -> PathBuf {
        self.dir.join("repo")
    }
    /// Whether the recording is complete.
    pub fn exists(&self) -> bool {
        self.base().is_file() && self.log().is_file() && self.key().is_file()
    }
}

/// One record of the write log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    /// A write of `len` bytes at `offset`; its data is at `data_at` in the
    /// log file.
    Write {
        /// Byte offset on the disk.
        offset: u64,
        /// Length.
        len: u32,
        /// Where the data is in the log file.
        data_at: u64,
        /// Written with FUA (durable on completion).
        fua: bool,
    },
    /// A completed flush.
    Flush,
    /// The start of a phase.
    Mark(String),
}

/// A write log read back.
#[derive(Debug)]
pub struct WriteLog {
    file: File,
    /// The records in order.
    pub entries: Vec<Entry>,
}

impl WriteLog {
    /// Reads the index of the log at `path` (the data stays in the file).
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let total = file.metadata()?.len();
        let mut r = BufReader::with_capacity(1 << 20, file.try_clone()?);
        let mut magic = [0u8; 8];
        r.read_exact(&mut magic)?;
        if &magic != LOG_MAGIC {
            bail!("{}: not a Drover write log", path.display());
        }
        let mut pos = 8u64;
        let mut entries = Vec::new();
        loop {
            let mut tag = [0u8; 1];
            if r.read(&mut tag)? == 0 {
                break;
            }
            pos += 1;
            match tag[0] {
                TAG_WRITE | TAG_WRITE_FUA => {
                    let mut h = [0u8; 12];
                    r.read_exact(&mut h)?;
                    let offset = u64::from_be_bytes(h[..8].try_into().unwrap());
                    let len = u32::from_be_bytes(h[8..].try_into().unwrap());
                    let data_at = pos + 12;
                    if data_at + u64::from(len) > total {
                        // The last write of a log cut short: not completed.
                        break;
                    }
                    r.seek_relative(i64::from(len))?;
                    pos = data_at + u64::from(len);
                    entries.push(Entry::Write {
                        offset,
                        len,
                        data_at,
                        fua: tag[0] == TAG_WRITE_FUA,
                    });
                }
                TAG_FLUSH => entries.push(Entry::Flush),
                TAG_MARK => {
                    let mut l = [0u8; 2];
                    r.read_exact(&mut l)?;
                    let mut name = vec![0u8; usize::from(u16::from_be_bytes(l))];
                    r.read_exact(&mut name)?;
                    pos += 2 + name.len() as u64;
                    entries.push(Entry::Mark(String::from_utf8_lossy(&name).into_owned()));
                }
                t => bail!("{}: unknown record {t} at byte {}", path.display(), pos - 1),
            }
        }
        Ok(Self { file, entries })
    }

    /// The data of write `i`.
    pub fn data(&self, i: usize) -> anyhow::Result<Vec<u8>> {
        match &self.entries[i] {
            Entry::Write { len, data_at, .. } => {
                let mut b = vec![0u8; *len as usize];
                self.file.read_exact_at(&mut b, *data_at)?;
                Ok(b)
            }
            _ => bail!("record {i} is not a write"),
        }
    }

    /// The phases: name and the range of log positions `k` in it.
    pub fn phases(&self) -> Vec<(String, std::ops::Range<usize>)> {
        let mut out: Vec<(String, std::ops::Range<usize>)> = Vec::new();
        let mut cur = (PHASES[0].to_string(), 0usize);
        for (i, e) in self.entries.iter().enumerate() {
            if let Entry::Mark(name) = e {
                // A cut at the mark itself (everything before it
                // completed) ends the phase before it: so no phase is
                // empty, not even one with no records (an idle node that
                // wrote nothing before the update began).
                out.push((cur.0.clone(), cur.1..i + 1));
                cur = (name.clone(), i + 1);
            }
        }
        out.push((cur.0, cur.1..self.entries.len() + 1));
        out
    }
}

/// What a volatile write became in a crash state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fate {
    /// On the disk entirely.
    Kept,
    /// Lost.
    Lost,
    /// Torn: these 512-byte sectors of it reached the disk.
    Torn(Vec<u32>),
}

/// One crash state.
#[derive(Clone, Debug, Serialize)]
pub struct State {
    /// Its number in the campaign.
    pub id: usize,
    /// The phase.
    pub phase: String,
    /// The log position of the cut: records `0..k` had completed.
    pub k: usize,
    /// The last flush before `k` (records up to it are durable), if any.
    pub durable_to: usize,
    /// Volatile writes (log positions) and what became of each (`Lost`
    /// ones are left out).
    pub volatile: Vec<(usize, Fate)>,
}

/// `n` crash states of `log` from `seed`, spread evenly over its phases
/// (the phase of the table flip has as many as the long write), sorted by
/// position.
pub fn generate(log: &WriteLog, n: usize, seed: u64) -> Vec<State> {
    // The campaign's states follow from its seed alone.
    let mut rng = fastrand::Rng::with_seed(seed);
    let phases = log.phases();
    let mut states = Vec::with_capacity(n);
    for i in 0..n {
        let (name, range) = &phases[i % phases.len()];
        let k = range.start + rng.usize(..(range.end - range.start).max(1));
        let durable_to = log.entries[..k]
            .iter()
            .rposition(|e| *e == Entry::Flush)
            .map_or(0, |p| p + 1);
        let mut volatile = Vec::new();
        for (j, e) in log.entries[durable_to..k].iter().enumerate() {
            let Entry::Write { len, fua, .. } = e else {
                continue;
            };
            let fate = if *fua {
                Fate::Kept
            } else {
                match rng.u32(..20) {
                    0..=8 => Fate::Kept,
                    9..=17 => Fate::Lost,
                    _ => {
                        let sectors = len.div_ceil(512);
                        Fate::Torn((0..sectors).filter(|_| rng.bool()).collect())
                    }
                }
            };
            if fate != Fate::Lost {
                volatile.push((durable_to + j, fate));
            }
        }
        states.push(State {
            id: i,
            phase: name.clone(),
            k,
            durable_to,
            volatile,
        });
    }
    states.sort_by_key(|s| (s.k, s.id));
    states
}

/// The verdict on one state.
#[derive(Clone, Debug, Serialize)]
pub struct Verdict {
    /// The slot the stage would boot, when one passes.
    pub boots: Option<String>,
    /// Slots the stage would refuse on the way, with why.
    pub refused: Vec<(String, String)>,
    /// When the state is unbootable: why.
    pub failure: Option<String>,
    /// The agent's state file as read (sampled states only): `parsed`,
    /// `absent`, or the error.
    pub agent_state: Option<String>,
}

/// Checks crash states on a working copy of the disk, applying the log's
/// durable writes as the states advance.
pub struct Checker<'a> {
    log: &'a WriteLog,
    keys: TrustedKeys,
    work: PathBuf,
    file: File,
    applied: usize,
    /// Per byte range checked: the last durable write that touched it.
    touched: HashMap<(u64, u64), usize>,
    /// Per (range, last touch): the slot check's result.
    cache: HashMap<(u64, u64, usize), Result<(), String>>,
    /// Durable writes applied so far: (log position, offset, len).
    history: Vec<(usize, u64, u64)>,
    scratch: PathBuf,
}

impl std::fmt::Debug for Checker<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checker").field("work", &self.work).finish()
    }
}

fn overlaps(a: (u64, u64), off: u64, len: u64) -> bool {
    off < a.0 + a.1 && a.0 < off + len
}

impl<'a> Checker<'a> {
    /// A checker over `rec`, whose working copy of the disk is made at
    /// `work` (sparse) and scratch files go to `scratch`.
    pub fn new(
        rec: &Recording,
        log: &'a WriteLog,
        work: &Path,
        scratch: &Path,
    ) -> anyhow::Result<Self> {
        let st = Command::new("cp")
            .arg("--sparse=always")
            .arg(rec.base())
            .arg(work)
            .status()?;
        if !st.success() {
            bail!("copying {} to {}", rec.base().display(), work.display());
        }
        let key = PublicKey::load(rec.key())?;
        std::fs::create_dir_all(scratch)?;
        Ok(Self {
            log,
            keys: TrustedKeys::new(vec![key]),
            work: work.to_owned(),
            file: File::options().read(true).write(true).open(work)?,
            applied: 0,
            touched: HashMap::new(),
            cache: HashMap::new(),
            history: Vec::new(),
            scratch: scratch.to_owned(),
        })
    }

    fn advance(&mut self, to: usize) -> anyhow::Result<()> {
        assert!(to >= self.applied, "states are checked in log order");
        for i in self.applied..to {
            if let Entry::Write { offset, len, .. } = self.log.entries[i] {
                let data = self.log.data(i)?;
                self.file.write_all_at(&data, offset)?;
                let len = u64::from(len);
                self.history.push((i, offset, len));
                for (r, last) in self.touched.iter_mut() {
                    if overlaps(*r, offset, len) {
                        *last = i;
                    }
                }
            }
        }
        self.applied = to;
        Ok(())
    }

    /// The last durable write that touched `r` (computed once per range).
    fn last_touch(&mut self, r: (u64, u64)) -> usize {
        let history = &self.history;
        *self.touched.entry(r).or_insert_with(|| {
            history
                .iter()
                .rev()
                .find(|(_, o, l)| overlaps(r, *o, *l))
                .map_or(usize::MAX, |(i, ..)| *i)
        })
    }

    /// Checks `state` (states must come in the order [`generate`] sorts
    /// them). `agent_state`: also read the agent's state file.
    pub fn check(&mut self, state: &State, agent_state: bool) -> anyhow::Result<Verdict> {
        let (undo, volatile) = self.enter(state)?;
        let verdict = self.judge(&volatile, agent_state);
        self.leave(undo)?;
        verdict
    }

    /// Writes the disk of `state` to `out` (sparse), to boot it for real.
    pub fn materialize(&mut self, state: &State, out: &Path) -> anyhow::Result<()> {
        let (undo, _) = self.enter(state)?;
        self.file.sync_all()?;
        let st = Command::new("cp")
            .arg("--sparse=always")
            .arg(&self.work)
            .arg(out)
            .status();
        self.leave(undo)?;
        if !st?.success() {
            bail!("copying {} to {}", self.work.display(), out.display());
        }
        Ok(())
    }

    /// Makes the working copy the disk of `state`: the durable writes up
    /// to its flush, then its volatile writes as it says (FUA writes
    /// between the flush and the cut are durable: kept). Returns the undo
    /// data and the byte ranges the volatile writes touched.
    #[allow(clippy::type_complexity)]
    fn enter(&mut self, state: &State) -> anyhow::Result<(Vec<(u64, Vec<u8>)>, Vec<(u64, u64)>)> {
        self.advance(state.durable_to)?;
        let mut undo: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut volatile_ranges: Vec<(u64, u64)> = Vec::new();
        for (i, fate) in &state.volatile {
            let Entry::Write { offset, len, .. } = self.log.entries[*i] else {
                continue;
            };
            let data = self.log.data(*i)?;
            let mut old = vec![0u8; len as usize];
            self.file.read_exact_at(&mut old, offset)?;
            undo.push((offset, old));
            match fate {
                Fate::Kept => self.file.write_all_at(&data, offset)?,
                Fate::Torn(sectors) => {
                    for s in sectors {
                        let a = *s as usize * 512;
                        let b = (a + 512).min(data.len());
                        self.file.write_all_at(&data[a..b], offset + a as u64)?;
                    }
                }
                Fate::Lost => {}
            }
            volatile_ranges.push((offset, u64::from(len)));
        }
        Ok((undo, volatile_ranges))
    }

    /// Undoes [`Checker::enter`]'s volatile writes, last first.
    fn leave(&mut self, undo: Vec<(u64, Vec<u8>)>) -> anyhow::Result<()> {
        for (offset, old) in undo.into_iter().rev() {
            self.file.write_all_at(&old, offset)?;
        }
        Ok(())
    }

    fn judge(&mut self, volatile: &[(u64, u64)], agent_state: bool) -> anyhow::Result<Verdict> {
        let mut v = Verdict {
            boots: None,
            refused: Vec::new(),
            failure: None,
            agent_state: None,
        };
        let path = self.work.clone();
        let mut f = self.file.try_clone()?;
        let table = match PartitionTable::read(&mut f, &path) {
            Ok(t) => t,
            Err(e) => {
                v.failure = Some(format!("the GPT does not parse: {e}"));
                return Ok(v);
            }
        };
        if agent_state {
            v.agent_state = Some(self.agent_state(&table));
        }
        let mut slots = match Slots::from_table(table, SlotId::A) {
            Ok(s) => s,
            Err(e) => {
                v.failure = Some(format!("no slots: {e}"));
                return Ok(v);
            }
        };
        let mut excluded: Vec<SlotId> = Vec::new();
        loop {
            let decision = slots.select_for_boot_excluding(&excluded);
            let Some(slot) = decision.slot() else {
                v.failure = Some(format!(
                    "nothing to boot ({decision:?}); refused: {:?}",
                    v.refused
                ));
                return Ok(v);
            };
            let st = slots.get(slot);
            let range = (st.offset, st.size);
            let fresh = volatile.iter().any(|(o, l)| overlaps(range, *o, *l));
            let result = if fresh {
                self.check_slot(st.offset, st.size)
            } else {
                let key = (st.offset, st.size, self.last_touch(range));
                match self.cache.get(&key) {
                    Some(r) => r.clone(),
                    None => {
                        let r = self.check_slot(st.offset, st.size);
                        self.cache.insert(key, r.clone());
                        r
                    }
                }
            };
            match result {
                Ok(()) => {
                    v.boots = Some(slot.label().to_string());
                    return Ok(v);
                }
                Err(e) => {
                    v.refused.push((slot.label().to_string(), e));
                    excluded.push(slot);
                }
            }
        }
    }

    /// The stage's check of a slot, with the full verity check always.
    fn check_slot(&self, offset: u64, size: u64) -> Result<(), String> {
        let w = Window {
            file: &self.file,
            offset,
        };
        let s = slot_image::open_verified(&w, size, &self.work, &self.keys)
            .map_err(|e| e.to_string())?;
        slot_image::verify_data(&self.file, &self.work, offset, &s).map_err(|e| e.to_string())
    }

    /// The agent's state file on ROOT, after the journal is replayed:
    /// `parsed`, `absent`, or the error.
    fn agent_state(&self, table: &PartitionTable) -> String {
        match self.agent_state_file(table) {
            Ok(Some(_)) => "parsed".into(),
            Ok(None) => "absent".into(),
            Err(e) => format!("error: {e:#}"),
        }
    }

    /// The agent's state file of the working copy as it is, parsed.
    fn agent_state_file(
        &self,
        table: &PartitionTable,
    ) -> anyhow::Result<Option<drover_update_agent::state::State>> {
        agent_state_in(&self.work, table, &self.scratch)
    }

    /// What the agent of `state` had made durable of its download: the
    /// payload bytes its state file says are in the slot (`None`: no
    /// download recorded).
    pub fn durable_download(&mut self, state: &State) -> anyhow::Result<Option<u64>> {
        let (undo, _) = self.enter(state)?;
        let mut f = self.file.try_clone()?;
        let res = PartitionTable::read(&mut f, &self.work)
            .map_err(anyhow::Error::from)
            .and_then(|t| self.agent_state_file(&t));
        self.leave(undo)?;
        Ok(res?.and_then(|s| s.download).map(|d| d.durable))
    }
}

/// The agent's state file on the ROOT partition of `disk` (named by
/// `table`), read from a copy of ROOT made in `scratch` after `e2fsck -p`
/// replays its journal, as a boot would; `None` when there is none.
fn agent_state_in(
    disk: &Path,
    table: &PartitionTable,
    scratch: &Path,
) -> anyhow::Result<Option<drover_update_agent::state::State>> {
    let (index, _) = table
        .entries()
        .iter()
        .find(|(_, p)| p.name == "ROOT")
        .context("no ROOT partition")?;
    let (offset, size) = table.byte_range(*index).expect("an entry");
    read_agent_state(disk, offset, size, scratch)
}

/// The agent's state file of a disk image, as the next boot will find it
/// (the disk is not changed; `scratch` holds a copy of ROOT meanwhile).
pub fn agent_state_on_disk(
    disk: &Path,
    scratch: &Path,
) -> anyhow::Result<Option<drover_update_agent::state::State>> {
    let (table, _) = PartitionTable::open(disk)?;
    agent_state_in(disk, &table, scratch)
}

fn read_agent_state(
    image: &Path,
    offset: u64,
    size: u64,
    scratch: &Path,
) -> anyhow::Result<Option<drover_update_agent::state::State>> {
    let fs = scratch.join("root.ext4");
    let _ = std::fs::remove_file(&fs);
    let st = Command::new("dd")
        .arg(format!("if={}", image.display()))
        .arg(format!("of={}", fs.display()))
        .args([
            "bs=4M",
            "conv=sparse",
            "iflag=skip_bytes,count_bytes",
            "status=none",
        ])
        .arg(format!("skip={offset}"))
        .arg(format!("count={size}"))
        .status()?;
    if !st.success() {
        bail!("copying ROOT out");
    }
    // -p: what a boot's fsck does (replay the journal, fix what is
    // safe); 4 and up means it could not.
    let out = Command::new("e2fsck").arg("-p").arg(&fs).output()?;
    let code = out.status.code().unwrap_or(-1);
    if !(0..4).contains(&code) {
        bail!(
            "e2fsck -p exit {code}: {}",
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    let cat = |path: &str| -> anyhow::Result<Option<Vec<u8>>> {
        let out = Command::new("debugfs")
            .args(["-R", &format!("cat {path}")])
            .arg(&fs)
            .output()?;
        if String::from_utf8_lossy(&out.stderr).contains("not found") {
            return Ok(None);
        }
        Ok(Some(out.stdout))
    };
    let state = cat("/var/lib/drover/agent-state.json");
    // What the TUF client stored (the rollback protection of each role):
    // each role whole or absent, never torn.
    let mut tuf = Ok(());
    for role in ["root", "timestamp", "snapshot", "targets"] {
        if let Some(b) = cat(&format!("/var/lib/drover/tuf/stable/{role}.json"))? {
            let v: Result<serde_json::Value, _> = serde_json::from_slice(&b);
            if !v.as_ref().is_ok_and(|v| v.get("signed").is_some()) {
                tuf = Err(anyhow::anyhow!(
                    "the TUF client's stored {role}.json is not whole ({} bytes)",
                    b.len()
                ));
            }
        }
    }
    let _ = std::fs::remove_file(&fs);
    tuf?;
    match state? {
        None => Ok(None),
        Some(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| anyhow::anyhow!("the state file does not parse: {e}")),
    }
}

/// A campaign's result, as `cargo xtask campaign crash` writes it.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// States checked.
    pub states_checked: usize,
    /// Per phase: states checked and unbootable.
    pub phases: std::collections::BTreeMap<String, PhaseCount>,
    /// States with no verified slot to boot.
    pub unbootable: usize,
    /// Agent state files read (sampled) and how many did not parse.
    pub agent_states_read: usize,
    /// Of those, unreadable ones.
    pub agent_state_failures: usize,
    /// What the state files read were: `parsed`, `absent`, or errors.
    pub agent_state_results: std::collections::BTreeMap<String, usize>,
    /// Volatile writes (after the last flush) in the states, in all.
    pub volatile_writes: usize,
    /// Of those, kept whole, and torn (some sectors kept).
    pub volatile_kept: usize,
    /// Torn writes.
    pub volatile_torn: usize,
    /// The most volatile writes in one state.
    pub volatile_max: usize,
    /// Which slot the states boot, counted.
    pub boots: std::collections::BTreeMap<String, usize>,
    /// Every failure: the state (with its log position) and why.
    pub failures: Vec<Failure>,
    /// Records in the write log, writes, flushes.
    pub log_records: usize,
    /// Writes in the log.
    pub log_writes: usize,
    /// Flushes in the log.
    pub log_flushes: usize,
    /// States booted in QEMU, and how each went.
    pub booted: Vec<Booted>,
    /// Of those, the ones that did not reach a verified slot or did not
    /// finish the update.
    pub boot_failures: usize,
    /// Wall time of the checks, seconds.
    pub seconds: f64,
}

/// A crash state booted in QEMU.
#[derive(Clone, Debug, Serialize)]
pub struct Booted {
    /// State number.
    pub id: usize,
    /// Its phase.
    pub phase: String,
    /// Write-log position of the cut.
    pub k: usize,
    /// The first boot's report line (slot, version, how /usr was mounted),
    /// or the error.
    pub first_boot: String,
    /// Whether the agent then finished the update (2.0.0 booted and marked
    /// successful).
    pub finished: bool,
    /// The cut had used up the new slot's only try: the expected end is
    /// the rollback, not the update (`finished` says it came).
    pub rolled_back: bool,
    /// Payload bytes the state's agent state file says were durable.
    pub durable_download: Option<u64>,
    /// Where the first stream of the payload after power-on started
    /// (`None`: no download; the state had it all).
    pub stream_started_at: Option<u64>,
    /// Seconds from power-on to the end.
    pub seconds: u64,
}

/// Whether USR-B of `disk` had its only try used up by a boot that was
/// never confirmed (priority above 0, no tries, not successful).
fn try_spent(disk: &Path) -> anyhow::Result<bool> {
    let (table, _) = PartitionTable::open(disk)?;
    let b = Slots::from_table(table, SlotId::A)?.get(SlotId::B).prio;
    Ok(b.priority() > 0 && b.tries() == 0 && !b.successful())
}

/// Boots the disk of a crash state: it must reach multi-user on a slot
/// mounted through dm-verity, and the agent must then finish the update
/// from the recording's channel (at `port`) — or, when the cut ended the
/// new slot's only try (`spent`: USR-B bootable by priority, no tries
/// left, not confirmed), report the rollback of 2.0.0 from 1.0.0, as after
/// any failed boot.
fn boot_state(
    id: usize,
    disk: &Path,
    dir: &Path,
    port: u16,
    spent: bool,
) -> (String, anyhow::Result<()>) {
    use std::time::Duration;
    let img = crate::image::test_image();
    let mut g = match img
        .node(&format!("crash-state-{id}"), disk, &dir.join("qga.sock"))
        .channel(port)
        .start()
    {
        Ok(g) => g,
        Err(e) => return (String::new(), Err(e)),
    };
    let first = match g.wait_for("DROVER-TEST-REPORT", Duration::from_secs(600)) {
        Ok(l) => l,
        Err(e) => return (String::new(), Err(g.with_console_tail(e, 40))),
    };
    // The line as the report printed it (a login prompt may precede it).
    let first = first[first.find("DROVER-TEST-REPORT").unwrap_or(0)..]
        .trim()
        .to_string();
    if !first.contains("usr_source=/dev/dm-") || !first.contains("multi_user=active") {
        let e = anyhow::anyhow!("not up on a verified /usr");
        return (first, Err(e));
    }
    let res = g.wait_for_agent(Duration::from_secs(180)).and_then(|()| {
        if spent {
            // The new slot's one try went to a boot the cut ended: the
            // update failed as a failed boot does, and the agent, on
            // 1.0.0 again, must say so.
            g.try_wait_status(
                Duration::from_secs(600),
                "1.0.0 good and the rollback of 2.0.0 reported",
                |st| {
                    st["booted"]["version"] == "1.0.0"
                        && st["booted-successful"] == true
                        && st["last-rollback"]["from-version"] == "2.0.0"
                },
            )
            .map(|_| ())
        } else {
            g.try_wait_status(
                Duration::from_secs(900),
                "2.0.0 booted and marked successful",
                |st| st["booted"]["version"] == "2.0.0" && st["booted-successful"] == true,
            )
            .map(|_| ())
        }
    });
    g.stop();
    (first, res)
}

impl Failure {
    fn of(s: &State, why: String) -> Self {
        Self {
            id: s.id,
            phase: s.phase.clone(),
            k: s.k,
            durable_to: s.durable_to,
            volatile_kept: s.volatile.len(),
            why,
        }
    }
}

/// Counts of one phase.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PhaseCount {
    /// States checked in it.
    pub checked: usize,
    /// Unbootable ones.
    pub unbootable: usize,
}

/// One failed state.
#[derive(Clone, Debug, Serialize)]
pub struct Failure {
    /// State number.
    pub id: usize,
    /// Its phase.
    pub phase: String,
    /// Write-log position of the cut.
    pub k: usize,
    /// Last flush before it.
    pub durable_to: usize,
    /// Volatile writes on the disk in it.
    pub volatile_kept: usize,
    /// Why.
    pub why: String,
}

/// Checks `n` states of `rec` from `seed`; reads the agent's state file in
/// one round of the phases in every `agent_every` (0: never); boots the
/// states numbered in `boot` in QEMU (numbers go round the phases: the
/// first five are one of each). Progress on stderr.
pub fn campaign(
    rec: &Recording,
    n: usize,
    seed: u64,
    agent_every: usize,
    boot: &[usize],
    work_dir: &Path,
) -> anyhow::Result<Report> {
    let started = std::time::Instant::now();
    let log = WriteLog::open(&rec.log())?;
    let states = generate(&log, n, seed);
    let n_phases = log.phases().len();
    std::fs::create_dir_all(work_dir)?;
    let work = work_dir.join("work.raw");
    let mut checker = Checker::new(rec, &log, &work, &work_dir.join("scratch"))?;
    let mut report = Report {
        seed,
        log_records: log.entries.len(),
        log_writes: log
            .entries
            .iter()
            .filter(|e| matches!(e, Entry::Write { .. }))
            .count(),
        log_flushes: log.entries.iter().filter(|e| **e == Entry::Flush).count(),
        ..Report::default()
    };
    // The states booted for real, served the recording's channel.
    let web = (!boot.is_empty()).then(|| crate::web::Nginx::serve(&rec.repo(), None));
    for (done, s) in states.iter().enumerate() {
        // State numbers go round the phases: sample by round, so that
        // every phase has its share.
        let read_agent = agent_every > 0 && (s.id / n_phases) % agent_every == 0;
        let v = checker.check(s, read_agent)?;
        if let Some(web) = web.as_ref().filter(|_| boot.contains(&s.id)) {
            let t = std::time::Instant::now();
            let dir = tempfile::tempdir_in(work_dir)?;
            let disk = dir.path().join("disk.raw");
            checker.materialize(s, &disk)?;
            let durable = checker.durable_download(s)?;
            let log_from = web.access_log().lines().count();
            let spent = try_spent(&disk)?;
            let (first, mut res) = boot_state(s.id, &disk, dir.path(), web.port, spent);
            let stream = crate::web::first_stream_after(&web.access_log(), log_from);
            // A download that had durable bytes resumed: its first stream
            // started past zero and at or below them.
            if let (Ok(()), Some(d), Some(start)) = (&res, durable.filter(|&d| d > 0), stream) {
                if start == 0 || start > d {
                    res = Err(anyhow::anyhow!(
                        "the download did not resume: {d} bytes were durable, the first stream started at {start}"
                    ));
                }
            }
            eprintln!(
                "crash: state {} ({}, log position {}) booted: {first}; update finished: {}",
                s.id,
                s.phase,
                s.k,
                match &res {
                    Ok(()) => "yes".to_string(),
                    Err(e) => format!("NO: {e:#}"),
                }
            );
            if res.is_err() {
                report.boot_failures += 1;
            }
            report.booted.push(Booted {
                id: s.id,
                phase: s.phase.clone(),
                k: s.k,
                first_boot: match &res {
                    Err(e) if first.is_empty() => format!("{e:#}"),
                    _ => first,
                },
                finished: res.is_ok(),
                rolled_back: spent,
                durable_download: durable,
                stream_started_at: stream,
                seconds: t.elapsed().as_secs(),
            });
        }
        report.states_checked += 1;
        let p = report.phases.entry(s.phase.clone()).or_default();
        p.checked += 1;
        let in_flight = log.entries[s.durable_to..s.k]
            .iter()
            .filter(|e| matches!(e, Entry::Write { fua: false, .. }))
            .count();
        report.volatile_writes += in_flight;
        report.volatile_max = report.volatile_max.max(in_flight);
        for (_, f) in &s.volatile {
            match f {
                Fate::Kept => report.volatile_kept += 1,
                Fate::Torn(_) => report.volatile_torn += 1,
                Fate::Lost => {}
            }
        }
        if let Some(a) = &v.agent_state {
            report.agent_states_read += 1;
            let what = if a.starts_with("error") {
                "error"
            } else {
                a.as_str()
            };
            *report
                .agent_state_results
                .entry(what.to_string())
                .or_default() += 1;
            if a != "parsed" && a != "absent" {
                report.agent_state_failures += 1;
                report
                    .failures
                    .push(Failure::of(s, format!("agent state: {a}")));
            }
        }
        match (&v.boots, &v.failure) {
            (Some(slot), _) => *report.boots.entry(slot.clone()).or_default() += 1,
            (None, why) => {
                report.unbootable += 1;
                p.unbootable += 1;
                report
                    .failures
                    .push(Failure::of(s, why.clone().unwrap_or_default()));
            }
        }
        if (done + 1) % 500 == 0 || done + 1 == states.len() {
            eprintln!(
                "crash: {} of {} states checked, {} unbootable ({:.0} s)",
                done + 1,
                states.len(),
                report.unbootable,
                started.elapsed().as_secs_f64()
            );
        }
    }
    drop(checker);
    let _ = std::fs::remove_file(&work);
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// The phase names of a recording, in order.
pub const PHASES: [&str; 5] = [
    "idle",
    "download and write",
    "flip and reboot",
    "boot of the new slot",
    "bless",
];

/// Records an update of the saved test node (1.0.0 on USR-A) to 2.0.0
/// over loopback HTTP, through an NBD disk, into `rec`: the download and
/// write into USR-B, the table flip, the reboot with its used-up try, the
/// boot of 2.0.0 and its bless. Phase marks come from what the test sees
/// (the agent's progress, the stage's console lines), so a phase's first
/// writes may belong to the one before it.
pub fn record(rec: &Recording) -> anyhow::Result<crate::nbd::Recorded> {
    use std::time::{Duration, Instant};
    const BOOT: Duration = Duration::from_secs(600);
    let started = Instant::now();
    std::fs::create_dir_all(&rec.dir)?;
    for f in [rec.base(), rec.log(), rec.key()] {
        let _ = std::fs::remove_file(f);
    }
    let v2 = crate::image::release("v2", "2.0.0", "");
    let tmp = tempfile::tempdir_in(&rec.dir)?;
    // Kept with the recording: the channel the booted crash states finish
    // their update from.
    let repo = rec.repo();
    let _ = std::fs::remove_dir_all(&repo);
    let web = crate::web::Nginx::serve(&repo, None);
    let mut server = None;
    let (base, log, sock) = (rec.base(), rec.log(), tmp.path().join("nbd.sock"));
    let (mut g, _disk) = crate::snapshot::idle_node().restore_custom(
        "crash-record",
        tmp.path(),
        web.port,
        |b, disk| {
            let st = Command::new("cp")
                .arg("--sparse=always")
                .arg(disk)
                .arg(&base)
                .status()
                .expect("cp");
            assert!(st.success(), "copying the saved disk");
            let s = crate::nbd::Server::start(disk, &sock, &log).expect("the NBD server");
            server = Some(s);
            b.nbd_disk(&sock)
        },
    );
    let server = server.expect("started");
    std::fs::copy(crate::image::keys().1, rec.key())?;
    let fail = |g: &crate::guest::Guest, e: anyhow::Error| g.with_console_tail(e, 60);
    g.wait_for("DROVER-TEST-REPORT slot=USR-A version=1.0.0", BOOT)
        .map_err(|e| fail(&g, e))?;
    server.mark(PHASES[1]);
    crate::image::publish_full(&repo, &v2);
    // The payload written: the flip comes next.
    let t = Instant::now();
    loop {
        if t.elapsed() > BOOT {
            return Err(fail(&g, anyhow::anyhow!("the payload was never written")));
        }
        match g.status() {
            Ok(st) => {
                let p = &st["progress"];
                if let (Some(done), Some(all)) = (p[0].as_u64(), p[1].as_u64()) {
                    if all > 0 && done >= all {
                        break;
                    }
                }
                if st["pending"].is_object() || st["operation"] == "rebooting" {
                    break;
                }
            }
            // The agent already gone: the reboot has begun.
            Err(_) if t.elapsed() > Duration::from_secs(20) => break,
            Err(_) => {}
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    server.mark(PHASES[2]);
    g.wait_for("one try used up and written", BOOT)
        .map_err(|e| fail(&g, e))?;
    server.mark(PHASES[3]);
    g.wait_for("DROVER-TEST-REPORT slot=USR-B version=2.0.0", BOOT)
        .map_err(|e| fail(&g, e))?;
    g.wait_for_agent(Duration::from_secs(180))
        .map_err(|e| fail(&g, e))?;
    server.mark(PHASES[4]);
    g.try_wait_status(Duration::from_secs(180), "2.0.0 marked successful", |st| {
        st["booted"]["version"] == "2.0.0" && st["booted-successful"] == true
    })
    .map_err(|e| fail(&g, e))?;
    // What the bless wrote reaches the log; then the power goes.
    std::thread::sleep(Duration::from_secs(5));
    g.stop();
    let r = server.finish()?;
    eprintln!(
        "crash: recorded {} writes ({} bytes) and {} flushes in {} s",
        r.writes,
        r.bytes,
        r.flushes,
        started.elapsed().as_secs()
    );
    Ok(r)
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    fn write(f: &mut File, tag: u8, offset: u64, data: &[u8]) {
        f.write_all(&[tag]).unwrap();
        f.write_all(&offset.to_be_bytes()).unwrap();
        f.write_all(&(data.len() as u32).to_be_bytes()).unwrap();
        f.write_all(data).unwrap();
    }

    #[test]
    fn states_keep_what_was_flushed_and_choose_among_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("writes.log");
        let mut f = File::create(&path).unwrap();
        f.write_all(LOG_MAGIC).unwrap();
        write(&mut f, TAG_WRITE, 0, &[1; 1024]);
        f.write_all(&[TAG_FLUSH]).unwrap();
        f.write_all(&[TAG_MARK, 0, 4]).unwrap();
        f.write_all(b"flip").unwrap();
        write(&mut f, TAG_WRITE, 4096, &[2; 1024]);
        write(&mut f, TAG_WRITE_FUA, 8192, &[3; 512]);
        write(&mut f, TAG_WRITE, 12288, &[4; 2048]);
        // A write the log was cut in: not completed, not in the log.
        f.write_all(&[TAG_WRITE]).unwrap();
        f.write_all(&0u64.to_be_bytes()).unwrap();
        f.write_all(&4096u32.to_be_bytes()).unwrap();
        f.write_all(&[9; 100]).unwrap();
        drop(f);
        let log = WriteLog::open(&path).unwrap();
        assert_eq!(log.entries.len(), 6);
        assert_eq!(log.data(5).unwrap(), vec![4; 2048]);
        let phases: Vec<_> = log.phases();
        assert_eq!(phases[0], ("idle".to_string(), 0..3));
        assert_eq!(phases[1], ("flip".to_string(), 3..7));
        for s in generate(&log, 400, 5) {
            if s.phase == "flip" {
                // The first write was flushed: never volatile.
                assert_eq!(s.durable_to, 2);
                assert!(s.volatile.iter().all(|(i, _)| *i >= 3 && *i < s.k));
                // The FUA write, once completed, is always on the disk.
                if s.k > 4 {
                    assert!(s.volatile.iter().any(|(i, f)| *i == 4 && *f == Fate::Kept));
                }
                for (i, f) in &s.volatile {
                    if let Fate::Torn(sectors) = f {
                        let Entry::Write { len, .. } = log.entries[*i] else {
                            panic!("a torn flush")
                        };
                        assert!(sectors.iter().all(|s| *s < len.div_ceil(512)));
                    }
                }
            } else {
                assert!(s.k <= 1 || s.durable_to == 2);
            }
        }
    }

    #[test]
    fn a_phase_with_no_records_still_has_its_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("writes.log");
        let mut f = File::create(&path).unwrap();
        f.write_all(LOG_MAGIC).unwrap();
        f.write_all(&[TAG_MARK, 0, 5]).unwrap();
        f.write_all(b"write").unwrap();
        write(&mut f, TAG_WRITE, 0, &[1; 512]);
        drop(f);
        let log = WriteLog::open(&path).unwrap();
        assert_eq!(
            log.phases(),
            vec![("idle".to_string(), 0..1), ("write".to_string(), 1..3)]
        );
    }
}
