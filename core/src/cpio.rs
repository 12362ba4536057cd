//! A newc ("070701") cpio writer: the initramfs format the kernel unpacks.
//! The image builder writes whole initramfs images with it; the boot stage
//! appends the boot record to the slot initramfs with it.
//!
//! Entries are written in the order given, with fixed metadata (owner 0,
//! mtime from `SOURCE_DATE_EPOCH`, inode numbers counting up), so the same
//! inputs give the same bytes.

use std::io::{self, Write};

/// A cpio archive being written.
#[derive(Debug)]
pub struct Cpio<W: Write> {
    out: W,
    ino: u32,
    mtime: u32,
    written: u64,
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;

impl<W: Write> Cpio<W> {
    /// Starts an archive; every entry gets `mtime`.
    pub fn new(out: W, mtime: u64) -> Self {
        Self {
            out,
            ino: 1,
            mtime: mtime.min(u64::from(u32::MAX)) as u32,
            written: 0,
        }
    }

    fn entry(&mut self, name: &str, mode: u32, nlink: u32, data: &[u8]) -> io::Result<()> {
        let name = name.trim_start_matches('/');
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino,
            mode,
            0,
            0,
            nlink,
            self.mtime,
            data.len(),
            0,
            0,
            0,
            0,
            name.len() + 1,
            0
        );
        self.ino += 1;
        self.write(header.as_bytes())?;
        self.write(name.as_bytes())?;
        self.write(&[0])?;
        self.pad()?;
        self.write(data)?;
        self.pad()
    }

    fn write(&mut self, b: &[u8]) -> io::Result<()> {
        self.out.write_all(b)?;
        self.written += b.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let n = (4 - (self.written % 4) as usize) % 4;
        self.write(&[0u8; 3][..n])
    }

    /// Adds a directory.
    pub fn dir(&mut self, name: &str) -> io::Result<()> {
        self.entry(name, S_IFDIR | 0o755, 2, &[])
    }

    /// Adds a regular file.
    pub fn file(&mut self, name: &str, mode: u32, data: &[u8]) -> io::Result<()> {
        self.entry(name, S_IFREG | (mode & 0o7777), 1, data)
    }

    /// Adds a symbolic link.
    pub fn symlink(&mut self, name: &str, target: &str) -> io::Result<()> {
        self.entry(name, S_IFLNK | 0o777, 1, target.as_bytes())
    }

    /// Writes the trailer and returns the writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.ino = 0;
        self.entry("TRAILER!!!", 0, 1, &[])?;
        let n = (512 - (self.written % 512) as usize) % 512;
        self.write(&vec![0u8; n])?;
        self.out.flush()?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gnu_cpio_reads_what_we_write() {
        let mut c = Cpio::new(Vec::new(), 1_700_000_000);
        c.dir("etc").unwrap();
        c.file("etc/hello", 0o644, b"hello world\n").unwrap();
        c.symlink("init", "/etc/hello").unwrap();
        let bytes = c.finish().unwrap();
        assert_eq!(bytes.len() % 512, 0);
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("cpio")
            .args(["-idm", "--quiet"])
            .current_dir(dir.path())
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("cpio installed");
        child.stdin.take().unwrap().write_all(&bytes).unwrap();
        assert!(child.wait().unwrap().success());
        assert_eq!(
            std::fs::read(dir.path().join("etc/hello")).unwrap(),
            b"hello world\n"
        );
        assert_eq!(
            std::fs::read_link(dir.path().join("init"))
                .unwrap()
                .to_str()
                .unwrap(),
            "/etc/hello"
        );
    }
}
