//! Files over HTTP(S), from any static web server: the agent's payloads
//! and channels, the installer's slot image.
//!
//! A file's header (a slot image's locator and manifest) is read with
//! range requests before anything is written; the body is streamed from a
//! given offset with one range request, so an interrupted download resumes
//! where it stopped. A server that ignores range requests is refused with a
//! clear error, never silently restarted at byte 0 into the middle of a
//! slot.

use std::io::{self, Read};
use std::time::Duration;

use crate::slot_image::ReadAt;
use reqwest::blocking::{Client, Response};
use reqwest::header::{CONTENT_LENGTH, CONTENT_RANGE, RANGE};
use reqwest::StatusCode;

/// How long a server may send nothing before a request is given up,
/// unless the user says otherwise.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// The HTTP client every request goes through, named `user_agent`. `stall`
/// bounds the wait for a response's headers and for each read of its body
/// (the blocking client's timeout applies per read), not the whole
/// transfer: a payload streams through one response for as long as it
/// takes, but a server that stops sending is given up after `stall`, and
/// the next attempt resumes from the last synced checkpoint. Keepalive
/// probes find a peer that is gone.
pub fn client(user_agent: &str, stall: Duration) -> reqwest::Result<Client> {
    Client::builder()
        .user_agent(user_agent)
        .connect_timeout(Duration::from_secs(20))
        .timeout(stall)
        .tcp_keepalive(Duration::from_secs(30))
        .build()
}

fn other(msg: String) -> io::Error {
    io::Error::other(msg)
}

/// The server has no such file (404 Not Found, 403 Forbidden, 410 Gone):
/// what [`get_small`]'s error holds then (`e.downcast_ref::<NotFound>()`),
/// for callers to whom an absent file is an answer (a TUF client asking
/// for the next root version).
#[derive(Debug, thiserror::Error)]
#[error("GET {url}: {status}")]
pub struct NotFound {
    /// The URL asked for.
    pub url: String,
    /// What the server answered.
    pub status: StatusCode,
}

/// GETs a small file whole (channel metadata, a manifest), at most `limit`
/// bytes. A file the server does not have is a [`NotFound`] error.
pub fn get_small(client: &Client, url: &str, limit: u64) -> anyhow::Result<Vec<u8>> {
    let resp = client
        .get(url)
        .send()
        .map_err(|e| anyhow::anyhow!("GET {url}: {e}"))?;
    let status = resp.status();
    if [
        StatusCode::NOT_FOUND,
        StatusCode::FORBIDDEN,
        StatusCode::GONE,
    ]
    .contains(&status)
    {
        return Err(NotFound {
            url: url.to_string(),
            status,
        }
        .into());
    }
    let resp = resp
        .error_for_status()
        .map_err(|e| anyhow::anyhow!("GET {url}: {e}"))?;
    read_body(resp, &format!("GET {url}"), limit)
}

/// A response's body whole, at most `limit` bytes; errors name the
/// request as `what` (`GET URL`).
pub fn read_body(resp: Response, what: &str, limit: u64) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    resp.take(limit + 1)
        .read_to_end(&mut out)
        .map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
    if out.len() as u64 > limit {
        anyhow::bail!("{what}: more than {limit} bytes, refusing it");
    }
    Ok(out)
}

/// A file at a URL whose size is known (the signed channel advertises it)
/// or asked for once ([`HttpSource::open`]): read at any offset with range
/// requests, or streamed from an offset.
pub struct HttpSource {
    client: Client,
    url: String,
    size: u64,
}

impl HttpSource {
    /// A payload of `size` advertised bytes. Asks the server for its size
    /// first: a payload that is shorter or longer than advertised is refused
    /// here, before the disk is touched.
    pub fn new(client: Client, url: &str, size: u64) -> anyhow::Result<Self> {
        let resp = client
            .head(url)
            .send()
            .and_then(Response::error_for_status)
            .map_err(|e| anyhow::anyhow!("HEAD {url}: {e}"))?;
        if let Some(len) = resp
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
        {
            if len != size {
                anyhow::bail!(
                    "{url} is {len} bytes, the signed channel metadata says {size}: refusing it"
                );
            }
        }
        Ok(Self {
            client,
            url: url.to_string(),
            size,
        })
    }

    /// A file whose size the server says (`Content-Length` of a `HEAD`),
    /// refused when it says none or more than `limit` bytes.
    pub fn open(client: Client, url: &str, limit: u64) -> anyhow::Result<Self> {
        let resp = client
            .head(url)
            .send()
            .and_then(Response::error_for_status)
            .map_err(|e| anyhow::anyhow!("HEAD {url}: {e}"))?;
        let size = resp
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| anyhow::anyhow!("HEAD {url}: the server does not say the size"))?;
        if size > limit {
            anyhow::bail!("{url} is {size} bytes, more than the {limit} it may be: refusing it");
        }
        Ok(Self {
            client,
            url: url.to_string(),
            size,
        })
    }

    /// The URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The size, advertised or as the server said.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The bytes from `offset` to the end, through one range request; a
    /// stall is reported as such.
    pub fn stream(&self, offset: u64) -> io::Result<impl Read + '_> {
        Ok(Stalls {
            inner: self.range(offset, None)?,
            url: &self.url,
        })
    }

    /// The bytes of `range` (not empty, within the size), through one
    /// range request, bounded to exactly its length.
    pub fn stream_range(&self, range: std::ops::Range<u64>) -> io::Result<impl Read + '_> {
        if range.is_empty() || range.end > self.size {
            return Err(other(format!(
                "{}: bytes {}..{} are not within its {} bytes",
                self.url, range.start, range.end, self.size
            )));
        }
        Ok(Stalls {
            inner: self.range(range.start, Some(range.end - 1))?,
            url: &self.url,
        }
        .take(range.end - range.start))
    }

    fn range(&self, from: u64, to_inclusive: Option<u64>) -> io::Result<Response> {
        let spec = match to_inclusive {
            Some(t) => format!("bytes={from}-{t}"),
            None => format!("bytes={from}-"),
        };
        let resp = self
            .client
            .get(&self.url)
            .header(RANGE, &spec)
            .send()
            .map_err(|e| other(format!("GET {} ({spec}): {e}", self.url)))?;
        match resp.status() {
            StatusCode::PARTIAL_CONTENT => {}
            StatusCode::OK if from == 0 && to_inclusive.is_none() => return Ok(resp),
            StatusCode::OK => {
                return Err(other(format!(
                    "{} ignores range requests (answered 200 to {spec}); Drover needs a server that supports them",
                    self.url
                )))
            }
            s => return Err(other(format!("GET {} ({spec}): {s}", self.url))),
        }
        // bytes FROM-TO/TOTAL: the server must send what was asked.
        let cr = resp
            .headers()
            .get(CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let start = cr
            .strip_prefix("bytes ")
            .and_then(|r| r.split('-').next())
            .and_then(|s| s.parse::<u64>().ok());
        if start != Some(from) {
            return Err(other(format!(
                "{} answered {spec} with Content-Range '{cr}'",
                self.url
            )));
        }
        if let Some(total) = cr.rsplit('/').next().and_then(|t| t.parse::<u64>().ok()) {
            if total != self.size {
                return Err(other(format!(
                    "{} is now {total} bytes, the signed channel metadata says {}",
                    self.url, self.size
                )));
            }
        }
        Ok(resp)
    }
}

impl ReadAt for HttpSource {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        if offset + buf.len() as u64 > self.size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "beyond the advertised size",
            ));
        }
        let mut resp = self.range(offset, Some(offset + buf.len() as u64 - 1))?;
        resp.read_exact(buf)?;
        Ok(())
    }
}

/// A response body whose stall (see [`client`]) is reported as such, not
/// as reqwest's "error decoding response body".
struct Stalls<'a> {
    inner: Response,
    url: &'a str,
}

fn is_timeout(e: &io::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = e.get_ref().map(|r| r as _);
    while let Some(c) = cause {
        if c.downcast_ref::<reqwest::Error>()
            .is_some_and(reqwest::Error::is_timeout)
            || c.downcast_ref::<io::Error>()
                .is_some_and(|e| e.kind() == io::ErrorKind::TimedOut)
        {
            return true;
        }
        cause = c.source();
    }
    e.kind() == io::ErrorKind::TimedOut
}

impl Read for Stalls<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).map_err(|e| {
            if is_timeout(&e) {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "{}: the server stopped sending (nothing within the stall timeout); the next attempt resumes where this one stopped",
                        self.url
                    ),
                )
            } else {
                e
            }
        })
    }
}

/// Joins a path relative to a repository base URL (`http://host/repo/`).
pub fn join(base: &str, rel: &str) -> String {
    if rel.contains("://") {
        return rel.to_string();
    }
    format!(
        "{}/{}",
        base.trim_end_matches('/'),
        rel.trim_start_matches('/')
    )
}
