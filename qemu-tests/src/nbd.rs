//! A disk that remembers every write: a small NBD server (test code) that
//! serves a raw image to QEMU over a UNIX socket and records, in order,
//! every write with its data, every flush and every FUA flag, so that the
//! crash states of what the guest did can be computed afterwards
//! ([`crate::crash`]).
//!
//! It speaks the fixed-newstyle handshake of the NBD protocol
//! (<https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md>):
//! `NBD_OPT_GO` (and `NBD_OPT_EXPORT_NAME` for old clients), simple
//! replies only (structured replies, metadata contexts and extended
//! headers are answered "unsupported", which QEMU's client accepts), and
//! the commands READ, WRITE (with FUA), FLUSH and DISC. It advertises no
//! TRIM and no WRITE_ZEROES: QEMU then writes zeroes as data and drops
//! discards, so every change to the disk is a write in the log.
//!
//! The image file is written as the guest writes (the server's own view is
//! the guest's view); the log says which of those writes a power cut could
//! have lost: everything after the last completed flush.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileExt as _;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use anyhow::{bail, Context as _};

/// The write log's first bytes.
pub const LOG_MAGIC: &[u8; 8] = b"DRVWLOG1";
/// A write: offset u64, length u32, the data (all big-endian).
pub const TAG_WRITE: u8 = 1;
/// A flush completed: everything written before it is durable.
pub const TAG_FLUSH: u8 = 2;
/// A phase mark from the test: length u16, UTF-8 name.
pub const TAG_MARK: u8 = 3;
/// A write with FUA: durable itself when it completes, like a write
/// followed by a flush of that write only.
pub const TAG_WRITE_FUA: u8 = 4;

const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
const FLAG_FIXED_NEWSTYLE: u16 = 1;
const FLAG_NO_ZEROES: u16 = 2;
const OPT_EXPORT_NAME: u32 = 1;
const OPT_ABORT: u32 = 2;
const OPT_INFO: u32 = 6;
const OPT_GO: u32 = 7;
const REP_ACK: u32 = 1;
const REP_INFO: u32 = 3;
const REP_ERR_UNSUP: u32 = (1 << 31) | 1;
const INFO_EXPORT: u16 = 0;
const TX_HAS_FLAGS: u16 = 1;
const TX_SEND_FLUSH: u16 = 4;
const TX_SEND_FUA: u16 = 8;
const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
const CMD_DISC: u16 = 2;
const CMD_FLUSH: u16 = 3;
const CMD_FLAG_FUA: u16 = 1;
const EINVAL: u32 = 22;
const EIO: u32 = 5;

/// The log being written, shared by the serving thread and the test.
#[derive(Debug)]
struct Log {
    out: BufWriter<File>,
    writes: u64,
    flushes: u64,
    bytes: u64,
}

impl Log {
    fn record(&mut self, tag: u8, head: &[u8], data: &[u8]) -> std::io::Result<()> {
        self.out.write_all(&[tag])?;
        self.out.write_all(head)?;
        self.out.write_all(data)
    }
}

/// A running server. Dropping it stops it.
#[derive(Debug)]
pub struct Server {
    socket: PathBuf,
    log: Arc<Mutex<Log>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
}

/// Counts of what was recorded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Recorded {
    /// Writes (FUA or not).
    pub writes: u64,
    /// Flushes.
    pub flushes: u64,
    /// Bytes written.
    pub bytes: u64,
}

impl Server {
    /// Serves `image` (read and written in place) on a UNIX socket at
    /// `socket`, recording into `log` (created). QEMU connects with
    /// `-blockdev driver=nbd,server.type=unix,server.path=SOCKET,export=disk`
    /// ([`crate::guest::GuestBuilder::nbd_disk`]).
    pub fn start(image: &Path, socket: &Path, log: &Path) -> anyhow::Result<Self> {
        let _ = std::fs::remove_file(socket);
        let listener =
            UnixListener::bind(socket).with_context(|| format!("binding {}", socket.display()))?;
        listener.set_nonblocking(true)?;
        let file = File::options()
            .read(true)
            .write(true)
            .open(image)
            .with_context(|| format!("opening {}", image.display()))?;
        let size = file.metadata()?.len();
        let mut out = BufWriter::with_capacity(
            8 << 20,
            File::create(log).with_context(|| format!("creating {}", log.display()))?,
        );
        out.write_all(LOG_MAGIC)?;
        let log = Arc::new(Mutex::new(Log {
            out,
            writes: 0,
            flushes: 0,
            bytes: 0,
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (log, stop) = (log.clone(), stop.clone());
            std::thread::spawn(move || serve(listener, file, size, log, stop))
        };
        Ok(Self {
            socket: socket.to_owned(),
            log,
            stop,
            thread: Some(thread),
        })
    }

    /// The socket QEMU connects to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Marks the start of a phase at the current place of the log.
    pub fn mark(&self, phase: &str) {
        let mut log = self.log.lock().unwrap();
        let name = phase.as_bytes();
        let len = u16::try_from(name.len()).expect("a short phase name");
        log.record(TAG_MARK, &len.to_be_bytes(), name)
            .expect("writing the log");
    }

    /// What was recorded so far.
    pub fn recorded(&self) -> Recorded {
        let log = self.log.lock().unwrap();
        Recorded {
            writes: log.writes,
            flushes: log.flushes,
            bytes: log.bytes,
        }
    }

    /// Stops serving (after QEMU is gone) and completes the log file.
    pub fn finish(mut self) -> anyhow::Result<Recorded> {
        self.shutdown()?;
        Ok(self.recorded())
    }

    fn shutdown(&mut self) -> anyhow::Result<()> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            match t.join() {
                Ok(r) => r?,
                Err(_) => bail!("the NBD server thread panicked"),
            }
        }
        self.log.lock().unwrap().out.flush()?;
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.shutdown();
        let _ = std::fs::remove_file(&self.socket);
    }
}

fn serve(
    listener: UnixListener,
    file: File,
    size: u64,
    log: Arc<Mutex<Log>>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    // One client at a time (QEMU connects once and keeps the connection
    // across guest reboots); a client that goes away may be followed by
    // another.
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((conn, _)) => {
                conn.set_nonblocking(false)?;
                // Reads time out so that `stop` is seen while QEMU idles.
                conn.set_read_timeout(Some(std::time::Duration::from_millis(200)))?;
                match session(conn, &file, size, &log, &stop) {
                    Ok(()) => {}
                    // A client that vanished (QEMU killed): the log so far
                    // stands.
                    Err(e) if is_disconnect(&e) => {}
                    Err(e) => return Err(e),
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn is_disconnect(e: &anyhow::Error) -> bool {
    e.downcast_ref::<std::io::Error>().is_some_and(|e| {
        matches!(
            e.kind(),
            std::io::ErrorKind::UnexpectedEof
                | std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::BrokenPipe
        )
    })
}

/// Reads exactly `buf`, waiting through read timeouts unless stopping.
fn read_full(
    conn: &mut BufReader<UnixStream>,
    buf: &mut [u8],
    stop: &AtomicBool,
) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match conn.read(&mut buf[done..]) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => done += n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if stop.load(Ordering::SeqCst) {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes(b[at..at + 2].try_into().unwrap())
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().unwrap())
}

fn option_reply(out: &mut UnixStream, opt: u32, kind: u32, data: &[u8]) -> std::io::Result<()> {
    let mut b = Vec::with_capacity(20 + data.len());
    b.extend_from_slice(&REPLY_MAGIC.to_be_bytes());
    b.extend_from_slice(&opt.to_be_bytes());
    b.extend_from_slice(&kind.to_be_bytes());
    b.extend_from_slice(&(data.len() as u32).to_be_bytes());
    b.extend_from_slice(data);
    out.write_all(&b)
}

fn session(
    conn: UnixStream,
    file: &File,
    size: u64,
    log: &Mutex<Log>,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let mut out = conn.try_clone()?;
    let mut inp = BufReader::with_capacity(1 << 20, conn);
    let tx_flags = TX_HAS_FLAGS | TX_SEND_FLUSH | TX_SEND_FUA;
    let mut hello = Vec::new();
    hello.extend_from_slice(&NBDMAGIC.to_be_bytes());
    hello.extend_from_slice(&IHAVEOPT.to_be_bytes());
    hello.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    out.write_all(&hello)?;
    let mut b4 = [0u8; 4];
    read_full(&mut inp, &mut b4, stop)?;
    let no_zeroes = u32::from_be_bytes(b4) & u32::from(FLAG_NO_ZEROES) != 0;
    // Options until one of them starts the transmission phase.
    loop {
        let mut h = [0u8; 16];
        read_full(&mut inp, &mut h, stop)?;
        if u64_at(&h, 0) != IHAVEOPT {
            bail!("NBD: a client option without its magic");
        }
        let (opt, len) = (u32_at(&h, 8), u32_at(&h, 12) as usize);
        if len > 65_536 {
            bail!("NBD: option {opt} of {len} bytes");
        }
        let mut data = vec![0u8; len];
        read_full(&mut inp, &mut data, stop)?;
        match opt {
            OPT_EXPORT_NAME => {
                let mut r = Vec::new();
                r.extend_from_slice(&size.to_be_bytes());
                r.extend_from_slice(&tx_flags.to_be_bytes());
                if !no_zeroes {
                    r.extend_from_slice(&[0u8; 124]);
                }
                out.write_all(&r)?;
                break;
            }
            OPT_GO | OPT_INFO => {
                let mut info = Vec::new();
                info.extend_from_slice(&INFO_EXPORT.to_be_bytes());
                info.extend_from_slice(&size.to_be_bytes());
                info.extend_from_slice(&tx_flags.to_be_bytes());
                option_reply(&mut out, opt, REP_INFO, &info)?;
                option_reply(&mut out, opt, REP_ACK, &[])?;
                if opt == OPT_GO {
                    break;
                }
            }
            OPT_ABORT => {
                option_reply(&mut out, opt, REP_ACK, &[])?;
                return Ok(());
            }
            _ => option_reply(&mut out, opt, REP_ERR_UNSUP, &[])?,
        }
    }
    // Transmission: one request at a time, answered in order.
    let mut buf = Vec::new();
    loop {
        let mut h = [0u8; 28];
        read_full(&mut inp, &mut h, stop)?;
        if u32_at(&h, 0) != REQUEST_MAGIC {
            bail!("NBD: a request without its magic");
        }
        let (flags, kind, handle) = (u16_at(&h, 4), u16_at(&h, 6), u64_at(&h, 8));
        let (offset, len) = (u64_at(&h, 16), u32_at(&h, 24));
        let in_range = offset
            .checked_add(u64::from(len))
            .is_some_and(|e| e <= size);
        let reply = |out: &mut UnixStream, error: u32, data: &[u8]| -> std::io::Result<()> {
            let mut r = Vec::with_capacity(16 + data.len());
            r.extend_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
            r.extend_from_slice(&error.to_be_bytes());
            r.extend_from_slice(&handle.to_be_bytes());
            r.extend_from_slice(data);
            out.write_all(&r)
        };
        match kind {
            CMD_READ => {
                if !in_range || len > 64 << 20 {
                    reply(&mut out, EINVAL, &[])?;
                    continue;
                }
                buf.resize(len as usize, 0);
                match file.read_exact_at(&mut buf, offset) {
                    Ok(()) => reply(&mut out, 0, &buf)?,
                    Err(_) => reply(&mut out, EIO, &[])?,
                }
            }
            CMD_WRITE => {
                if len > 64 << 20 {
                    bail!("NBD: a write of {len} bytes");
                }
                buf.resize(len as usize, 0);
                read_full(&mut inp, &mut buf, stop)?;
                if !in_range {
                    reply(&mut out, EINVAL, &[])?;
                    continue;
                }
                file.write_all_at(&buf, offset)?;
                {
                    let mut l = log.lock().unwrap();
                    let tag = if flags & CMD_FLAG_FUA != 0 {
                        TAG_WRITE_FUA
                    } else {
                        TAG_WRITE
                    };
                    let mut head = [0u8; 12];
                    head[..8].copy_from_slice(&offset.to_be_bytes());
                    head[8..].copy_from_slice(&len.to_be_bytes());
                    l.record(tag, &head, &buf)?;
                    l.writes += 1;
                    l.bytes += u64::from(len);
                }
                reply(&mut out, 0, &[])?;
            }
            CMD_FLUSH => {
                // The image file is written as the guest writes; what a
                // flush makes durable is the log's business, not the
                // host's (the host is not what loses power here).
                {
                    let mut l = log.lock().unwrap();
                    l.record(TAG_FLUSH, &[], &[])?;
                    l.flushes += 1;
                }
                reply(&mut out, 0, &[])?;
            }
            CMD_DISC => return Ok(()),
            _ => reply(&mut out, EINVAL, &[])?,
        }
    }
}
