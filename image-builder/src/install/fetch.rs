//! `--image URL`: the slot image downloaded into a temporary file before
//! it is checked like a local one, through the agent's HTTP code
//! ([`drover_core::http`]): bounded by the USR partition's size, and
//! resumed with a range request where a connection broke or stalled.

use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::time::Duration;

use anyhow::Context as _;
use drover_core::http::{self, HttpSource};

use super::{Steps, MIB};

/// Attempts after the first, each resuming where the last stopped.
const RETRIES: u32 = 5;

/// Downloads `url` (at most `limit` bytes: a slot image bigger than its
/// partition is refused before a byte is fetched) into a temporary file,
/// the progress shown as it goes.
pub(super) fn download(
    url: &str,
    limit: u64,
    steps: &Steps,
) -> anyhow::Result<tempfile::NamedTempFile> {
    let mut tmp = tempfile::Builder::new()
        .prefix("drover-install-")
        .suffix(".img")
        .tempfile()
        .context("creating a temporary file for the download")?;
    let client = http::client(
        concat!("drover-install/", env!("CARGO_PKG_VERSION")),
        http::STALL_TIMEOUT,
    )?;
    let src = HttpSource::open(client, url, limit)?;
    let total = src.size();
    let mut buf = vec![0u8; MIB as usize];
    let mut n = 0u64;
    let mut shown = 0u64;
    let mut attempt = 0;
    while n < total {
        let r = (|| -> std::io::Result<()> {
            let mut body = src.stream(n)?.take(total - n);
            loop {
                let k = body.read(&mut buf)?;
                if k == 0 && n < total {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!("the body ended after {n} of {total} bytes"),
                    ));
                }
                if k == 0 {
                    return Ok(());
                }
                tmp.write_all(&buf[..k])?;
                n += k as u64;
                if n - shown >= 64 * MIB {
                    shown = n;
                    steps.say(&format!("downloaded {} of {} MiB", n >> 20, total >> 20));
                }
            }
        })();
        match r {
            Ok(()) => {}
            Err(e) if attempt < RETRIES => {
                attempt += 1;
                steps.say(&format!(
                    "download interrupted at {} MiB ({e}); resuming (attempt {attempt} of {RETRIES})",
                    n >> 20
                ));
                // Where the file's cursor is may be past `n` after a short
                // write: resume exactly at `n`.
                tmp.as_file_mut().seek(SeekFrom::Start(n))?;
                std::thread::sleep(Duration::from_secs(u64::from(attempt)));
            }
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!("downloading {url}")));
            }
        }
    }
    tmp.as_file().set_len(n)?;
    tmp.as_file().sync_all()?;
    steps.say(&format!("downloaded {url} ({} MiB)", n >> 20));
    Ok(tmp)
}
