//! The GPT partition table of a disk image file or block device, read and
//! written through the `gpt` crate, keeping every entry at its own index.
//!
//! Why not `GptDisk::write`: the `gpt` crate (4.x) packs the used entries to
//! the front of the partition array when it writes, which would renumber
//! Drover's partitions 1, 3, 4, 6, 9 to 1–5. So this module reads with the
//! crate, serializes entries and headers with the crate, and only decides
//! *where* each entry goes and in which order things reach the disk:
//!
//! 1. backup partition array, then backup header, fsync;
//! 2. primary partition array, then primary header, fsync.
//!
//! A power cut anywhere in that sequence leaves at least one header whose
//! partition array matches its CRC — the old table (until step 1 is done) or
//! the new one — and [`PartitionTable::read`] falls back from a damaged
//! primary (bad header, or an array that does not match its CRC) to the
//! backup. The next write repairs whatever was damaged.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use gpt::disk::LogicalBlockSize;
use gpt::header::{Header, HeaderBuilder};
use gpt::partition::Partition;
use gpt::GptConfig;

/// Which of the two GPT headers the table was read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderSource {
    /// The primary header at LBA 1 and its array were good.
    Primary,
    /// The primary header or its array was damaged; the backup was used.
    Backup,
}

/// Errors reading or writing a partition table.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    /// The device could not be opened, read or written.
    #[error("{path}: {what}")]
    Io {
        /// The device or image file.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Neither header (with its partition array) is valid.
    #[error("{path}: no valid GPT: primary: {primary}; backup: {backup}")]
    NoValidTable {
        /// The device or image file.
        path: PathBuf,
        /// Why the primary was rejected.
        primary: String,
        /// Why the backup was rejected.
        backup: String,
    },
    /// The `gpt` crate refused an operation.
    #[error("{path}: {what}: {message}")]
    Gpt {
        /// The device or image file.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The crate's message.
        message: String,
    },
    /// An entry does not fit the table.
    #[error("{path}: partition {index} {problem}")]
    BadEntry {
        /// The device or image file.
        path: PathBuf,
        /// The 1-based entry index.
        index: u32,
        /// What is wrong.
        problem: String,
    },
}

/// Anything a table can live on: a file or block device, or a test double.
pub trait Device: Read + Write + Seek + fmt::Debug {
    /// Makes what was written durable (fsync for files and block devices).
    fn sync(&mut self) -> io::Result<()>;
}

impl Device for File {
    fn sync(&mut self) -> io::Result<()> {
        self.sync_all()
    }
}

impl Device for &File {
    fn sync(&mut self) -> io::Result<()> {
        self.sync_all()
    }
}

impl Device for io::Cursor<Vec<u8>> {
    fn sync(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<T: Device + ?Sized> Device for &mut T {
    fn sync(&mut self) -> io::Result<()> {
        (**self).sync()
    }
}

/// A GPT partition table held in memory. Mutators change memory only;
/// [`PartitionTable::write`] puts it on the disk.
#[derive(Clone, Debug)]
pub struct PartitionTable {
    path: PathBuf,
    lb_size: LogicalBlockSize,
    primary: Header,
    backup: Header,
    source: HeaderSource,
    entries: BTreeMap<u32, Partition>,
}

/// A view of a device that reads LBA 1 as zeros, so that the `gpt` crate
/// takes the backup header. Used only for reading.
#[derive(Debug)]
struct HidePrimary<'a, D: Device> {
    inner: &'a mut D,
    lb: u64,
    pos: u64,
}

impl<D: Device> Read for HidePrimary<'_, D> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.seek(SeekFrom::Start(self.pos))?;
        let n = self.inner.read(buf)?;
        let (start, end) = (self.pos, self.pos + n as u64);
        let (hs, he) = (self.lb, 2 * self.lb);
        if start < he && end > hs {
            let from = hs.max(start) - start;
            let to = he.min(end) - start;
            buf[from as usize..to as usize].fill(0);
        }
        self.pos = end;
        Ok(n)
    }
}

impl<D: Device> Seek for HidePrimary<'_, D> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.pos = self.inner.seek(pos)?;
        Ok(self.pos)
    }
}

impl<D: Device> Write for HidePrimary<'_, D> {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::new(io::ErrorKind::Unsupported, "read-only view"))
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn describe<E: fmt::Display>(e: E) -> String {
    e.to_string()
}

impl PartitionTable {
    /// Opens a disk image or block device read-only and reads its table.
    pub fn open(path: impl AsRef<Path>) -> Result<(Self, File), TableError> {
        Self::open_with(path, false)
    }

    /// Opens a disk image or block device for reading and writing.
    pub fn open_rw(path: impl AsRef<Path>) -> Result<(Self, File), TableError> {
        Self::open_with(path, true)
    }

    fn open_with(path: impl AsRef<Path>, writable: bool) -> Result<(Self, File), TableError> {
        let path = path.as_ref();
        let mut file = OpenOptions::new()
            .read(true)
            .write(writable)
            .open(path)
            .map_err(|source| TableError::Io {
                path: path.to_owned(),
                what: "opening the disk",
                source,
            })?;
        let table = Self::read(&mut file, path)?;
        Ok((table, file))
    }

    /// Reads the table from `dev`; `path` names it in errors. Tries 512-byte
    /// logical blocks first, then 4096.
    pub fn read<D: Device>(dev: &mut D, path: &Path) -> Result<Self, TableError> {
        let first = Self::read_lb(dev, path, LogicalBlockSize::Lb512);
        match first {
            Ok(t) => Ok(t),
            Err(e512) => match Self::read_lb(dev, path, LogicalBlockSize::Lb4096) {
                Ok(t) => Ok(t),
                Err(_) => Err(e512),
            },
        }
    }

    fn read_lb<D: Device>(
        dev: &mut D,
        path: &Path,
        lb_size: LogicalBlockSize,
    ) -> Result<Self, TableError> {
        let cfg = GptConfig::new().writable(false).logical_block_size(lb_size);
        let lb = lb_size.as_u64();
        // The gpt crate asserts on entry sizes other than 128 and allocates
        // whatever the header asks for: check both headers first.
        let io_err = |source| TableError::Io {
            path: path.to_owned(),
            what: "reading the GPT headers",
            source,
        };
        let primary_sane = sane_header(dev, lb).map_err(io_err)?;
        let end = dev.seek(SeekFrom::End(0)).map_err(io_err)?;
        let backup_sane = match end.checked_sub(lb) {
            Some(at) if at >= 2 * lb => sane_header(dev, at).map_err(io_err)?,
            _ => Err("the disk is too small for a backup GPT".to_string()),
        };
        let primary_err = match primary_sane {
            Err(e) => e,
            Ok(()) => match cfg.clone().open_from_device(&mut *dev) {
                Ok(disk) => match (disk.primary_header(), disk.backup_header()) {
                    (Ok(p), b) => {
                        let primary = p.clone();
                        let backup = match (b, &backup_sane) {
                            (Ok(b), Ok(())) => b.clone(),
                            _ => rebuild(&primary, false, lb_size, path)?,
                        };
                        return Ok(Self {
                            path: path.to_owned(),
                            lb_size,
                            primary,
                            backup,
                            source: HeaderSource::Primary,
                            entries: disk.partitions().clone(),
                        });
                    }
                    (Err(e), _) => describe(e),
                },
                Err(e) => describe(e),
            },
        };
        if let Err(backup) = backup_sane {
            return Err(TableError::NoValidTable {
                path: path.to_owned(),
                primary: primary_err,
                backup,
            });
        }
        let mut hidden = HidePrimary {
            inner: dev,
            lb,
            pos: 0,
        };
        match cfg.open_from_device(&mut hidden) {
            Ok(disk) => {
                let backup = disk
                    .backup_header()
                    .map_err(|e| TableError::Gpt {
                        path: path.to_owned(),
                        what: "reading the backup header",
                        message: e.to_string(),
                    })?
                    .clone();
                let primary = rebuild(&backup, true, lb_size, path)?;
                tracing::warn!(
                    disk = %path.display(),
                    "primary GPT is damaged ({primary_err}); using the backup"
                );
                Ok(Self {
                    path: path.to_owned(),
                    lb_size,
                    primary,
                    backup,
                    source: HeaderSource::Backup,
                    entries: disk.partitions().clone(),
                })
            }
            Err(e) => Err(TableError::NoValidTable {
                path: path.to_owned(),
                primary: primary_err,
                backup: describe(e),
            }),
        }
    }

    /// Starts a new, empty table for `dev` (nothing is written until
    /// [`PartitionTable::write`]). The disk GUID is the caller's so that
    /// images can be reproducible.
    pub fn create<D: Device>(
        dev: &mut D,
        path: &Path,
        disk_guid: uuid::Uuid,
    ) -> Result<Self, TableError> {
        let lb_size = LogicalBlockSize::Lb512;
        let disk = GptConfig::new()
            .writable(true)
            .logical_block_size(lb_size)
            .create_from_device(&mut *dev, Some(disk_guid))
            .map_err(|e| TableError::Gpt {
                path: path.to_owned(),
                what: "creating a partition table",
                message: e.to_string(),
            })?;
        let primary = disk.primary_header().map_err(|e| TableError::Gpt {
            path: path.to_owned(),
            what: "creating a partition table",
            message: e.to_string(),
        })?;
        let primary = primary.clone();
        let backup = rebuild(&primary, false, lb_size, path)?;
        Ok(Self {
            path: path.to_owned(),
            lb_size,
            primary,
            backup,
            source: HeaderSource::Primary,
            entries: BTreeMap::new(),
        })
    }

    /// The device or image file the table belongs to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Logical block (sector) size in bytes.
    pub fn block_size(&self) -> u64 {
        self.lb_size.as_u64()
    }

    /// Which header the table was read from.
    pub fn source(&self) -> HeaderSource {
        self.source
    }

    /// The disk GUID.
    pub fn disk_guid(&self) -> uuid::Uuid {
        self.primary.disk_guid
    }

    /// First and last LBA that partitions may use (inclusive).
    pub fn usable_lbas(&self) -> (u64, u64) {
        (self.primary.first_usable, self.primary.last_usable)
    }

    /// Used entries by 1-based entry index (the partition number).
    pub fn entries(&self) -> &BTreeMap<u32, Partition> {
        &self.entries
    }

    /// The entry with this partition number.
    pub fn entry(&self, index: u32) -> Option<&Partition> {
        self.entries.get(&index)
    }

    /// Replaces the attribute field of an entry (memory only).
    pub fn set_attributes(&mut self, index: u32, flags: u64) -> Result<(), TableError> {
        let e = self
            .entries
            .get_mut(&index)
            .ok_or_else(|| TableError::BadEntry {
                path: self.path.clone(),
                index,
                problem: "does not exist".into(),
            })?;
        e.flags = flags;
        Ok(())
    }

    /// Adds an entry at a given partition number (memory only). Checks that
    /// it fits the usable area, does not overlap another and that the index
    /// fits the partition array.
    pub fn add(&mut self, index: u32, partition: Partition) -> Result<(), TableError> {
        let bad = |problem: String| TableError::BadEntry {
            path: self.path.clone(),
            index,
            problem,
        };
        if index == 0 || index > self.primary.num_parts {
            return Err(bad(format!(
                "is outside the partition array (1–{})",
                self.primary.num_parts
            )));
        }
        if self.entries.contains_key(&index) {
            return Err(bad("already exists".into()));
        }
        let (first, last) = self.usable_lbas();
        if partition.first_lba < first
            || partition.last_lba > last
            || partition.first_lba > partition.last_lba
        {
            return Err(bad(format!(
                "spans LBAs {}–{}, outside the usable area {first}–{last}",
                partition.first_lba, partition.last_lba
            )));
        }
        for (i, p) in &self.entries {
            if partition.first_lba <= p.last_lba && p.first_lba <= partition.last_lba {
                return Err(bad(format!("overlaps partition {i}")));
            }
        }
        self.entries.insert(index, partition);
        Ok(())
    }

    /// Writes both partition arrays and both headers, backup first, with an
    /// fsync after each half (see the module docs for why that order), and a
    /// protective MBR when `with_mbr` is set (new disks).
    pub fn write<D: Device>(&mut self, dev: &mut D, with_mbr: bool) -> Result<(), TableError> {
        let io_err = |what: &'static str, path: &Path| {
            let path = path.to_owned();
            move |source: io::Error| TableError::Io { path, what, source }
        };
        let gpt_err = |what: &'static str, path: &Path| {
            let path = path.to_owned();
            move |e: gpt::header::HeaderError| TableError::Gpt {
                path,
                what,
                message: e.to_string(),
            }
        };
        let path = self.path.clone();
        if with_mbr {
            let total = dev
                .seek(SeekFrom::End(0))
                .map_err(io_err("measuring the disk", &path))?;
            let sectors = (total / self.lb_size.as_u64()).saturating_sub(1);
            let mbr =
                gpt::mbr::ProtectiveMBR::with_lb_size(u32::try_from(sectors).unwrap_or(u32::MAX));
            mbr.overwrite_lba0(&mut *dev).map_err(|e| TableError::Gpt {
                path: path.clone(),
                what: "writing the protective MBR",
                message: e.to_string(),
            })?;
        }
        for primary in [false, true] {
            let header = if primary {
                &mut self.primary
            } else {
                &mut self.backup
            };
            write_array(&mut *dev, header, &self.entries, self.lb_size)
                .map_err(io_err("writing the partition array", &path))?;
            if primary {
                header
                    .write_primary(&mut *dev, self.lb_size)
                    .map_err(gpt_err("writing the primary GPT header", &path))?;
            } else {
                header
                    .write_backup(&mut *dev, self.lb_size)
                    .map_err(gpt_err("writing the backup GPT header", &path))?;
            }
            dev.flush()
                .map_err(io_err("flushing the partition table", &path))?;
            dev.sync()
                .map_err(io_err("syncing the partition table", &path))?;
        }
        self.source = HeaderSource::Primary;
        Ok(())
    }

    /// Moves the backup table to the end of a device of `device_bytes`
    /// (after an image was written to a larger disk, or the disk grew),
    /// which also raises the last usable LBA. Memory only; returns the LBA
    /// of the old backup header when it moved, so the caller can clear it
    /// after writing.
    pub fn grow_to(&mut self, device_bytes: u64) -> Result<Option<u64>, TableError> {
        let lb = self.lb_size.as_u64();
        let new_backup = device_bytes / lb - 1;
        let old_backup = self.primary.backup_lba;
        if new_backup <= old_backup {
            return Ok(None);
        }
        let primary = HeaderBuilder::from_header(&self.primary)
            .backup_lba(new_backup)
            .primary(true)
            .build(self.lb_size)
            .map_err(|e| TableError::Gpt {
                path: self.path.clone(),
                what: "moving the backup GPT to the end of the disk",
                message: e.to_string(),
            })?;
        self.backup = rebuild(&primary, false, self.lb_size, &self.path)?;
        self.primary = primary;
        Ok(Some(old_backup))
    }

    /// Extends partition `index` to end at `last_lba` (memory only). It
    /// must stay inside the usable area and not reach the next partition.
    pub fn extend(&mut self, index: u32, last_lba: u64) -> Result<(), TableError> {
        let bad = |problem: String| TableError::BadEntry {
            path: self.path.clone(),
            index,
            problem,
        };
        let (_, usable_last) = self.usable_lbas();
        let Some(p) = self.entries.get(&index) else {
            return Err(bad("does not exist".into()));
        };
        if last_lba < p.last_lba || last_lba > usable_last {
            return Err(bad(format!(
                "cannot end at LBA {last_lba} (now {}, last usable {usable_last})",
                p.last_lba
            )));
        }
        let first = p.first_lba;
        if let Some((i, _)) = self
            .entries
            .iter()
            .find(|(i, o)| **i != index && o.first_lba > first && o.first_lba <= last_lba)
        {
            return Err(bad(format!("would overlap partition {i}")));
        }
        self.entries.get_mut(&index).expect("checked").last_lba = last_lba;
        Ok(())
    }

    /// Byte offset and length of a partition.
    pub fn byte_range(&self, index: u32) -> Option<(u64, u64)> {
        let p = self.entries.get(&index)?;
        let lb = self.lb_size.as_u64();
        Some((p.first_lba * lb, (p.last_lba - p.first_lba + 1) * lb))
    }
}

/// Most partition entries Drover accepts in a table (the usual is 128).
const MAX_ENTRIES: u32 = 1024;

/// Checks the fields of the raw header at `offset` that the gpt crate
/// trusts blindly. `Ok` also for a missing header (the crate reports that).
fn sane_header<D: Device>(dev: &mut D, offset: u64) -> io::Result<Result<(), String>> {
    let mut b = [0u8; 92];
    dev.seek(SeekFrom::Start(offset))?;
    if dev.read_exact(&mut b).is_err() {
        return Ok(Err(format!(
            "no GPT header at byte {offset}: the disk is too short"
        )));
    }
    if &b[..8] != b"EFI PART" {
        return Ok(Ok(()));
    }
    let num_parts = u32::from_le_bytes(b[80..84].try_into().expect("4 bytes"));
    let part_size = u32::from_le_bytes(b[84..88].try_into().expect("4 bytes"));
    if part_size != 128 {
        return Ok(Err(format!("partition entry size {part_size} is not 128")));
    }
    if num_parts == 0 || num_parts > MAX_ENTRIES {
        return Ok(Err(format!(
            "{num_parts} partition entries is outside 1..={MAX_ENTRIES}"
        )));
    }
    Ok(Ok(()))
}

/// Builds the other header of a pair from a good one.
fn rebuild(
    from: &Header,
    primary: bool,
    lb_size: LogicalBlockSize,
    path: &Path,
) -> Result<Header, TableError> {
    HeaderBuilder::from_header(from)
        .primary(primary)
        .build(lb_size)
        .map_err(|e| TableError::Gpt {
            path: path.to_owned(),
            what: "rebuilding a GPT header",
            message: e.to_string(),
        })
}

/// Writes every entry of the array at its own index; unused entries zero.
fn write_array<D: Device>(
    dev: &mut D,
    header: &Header,
    entries: &BTreeMap<u32, Partition>,
    lb_size: LogicalBlockSize,
) -> io::Result<()> {
    if let Some((&last, _)) = entries.last_key_value() {
        if last > header.num_parts {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "partition {last} does not fit an array of {}",
                    header.num_parts
                ),
            ));
        }
    }
    let size = header.part_size as usize;
    let mut array = vec![0u8; header.num_parts as usize * size];
    // Let the gpt crate serialize each entry, into an in-memory array.
    let mut cursor = io::Cursor::new(&mut array[..]);
    let mut mem = MemDevice(&mut cursor);
    for (&index, p) in entries {
        p.write_to_device(&mut mem, u64::from(index - 1), 0, lb_size, header.part_size)?;
    }
    dev.seek(SeekFrom::Start(header.part_start * lb_size.as_u64()))?;
    dev.write_all(&array)
}

/// Adapter so an in-memory cursor passes as a `gpt::DiskDevice`.
#[derive(Debug)]
struct MemDevice<'a, 'b>(&'a mut io::Cursor<&'b mut [u8]>);

impl Read for MemDevice<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}
impl Write for MemDevice<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
impl Seek for MemDevice<'_, '_> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.0.seek(pos)
    }
}
