//! The Authenticode digest of a PE/COFF image: what UEFI firmware extends
//! into PCR 4 (`EV_EFI_BOOT_SERVICES_APPLICATION`) for every EFI program
//! it starts — systemd-boot, and the stage kernel through its EFI stub.
//!
//! The digest covers the headers without the checksum and the certificate
//! table's directory entry, then the sections in file order, then whatever
//! follows them except the certificate table (Microsoft's "Windows
//! Authenticode Portable Executable Signature Format", as EDK2's
//! `Tcg2MeasurePeImage` computes it). A signed and an unsigned copy of the
//! same program therefore have the same digest.

use sha2::{Digest, Sha256};

/// Index of the certificate table in the optional header's data directory.
const SECURITY_DIRECTORY: u32 = 4;

fn u16_at(b: &[u8], at: usize) -> Result<u16, String> {
    b.get(at..at + 2)
        .map(|s| u16::from_le_bytes(s.try_into().expect("2 bytes")))
        .ok_or_else(|| format!("the PE image ends before offset {at}"))
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, String> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes(s.try_into().expect("4 bytes")))
        .ok_or_else(|| format!("the PE image ends before offset {at}"))
}

fn range(b: &[u8], start: usize, end: usize) -> Result<&[u8], String> {
    if start > end {
        return Err(format!("PE range {start}..{end} is reversed"));
    }
    b.get(start..end).ok_or_else(|| {
        format!(
            "PE range {start}..{end} runs past the image's {} bytes",
            b.len()
        )
    })
}

/// The SHA-256 Authenticode digest of `image`, or why it is not a PE image
/// the firmware would start.
pub fn sha256(image: &[u8]) -> Result<[u8; 32], String> {
    if image.get(..2) != Some(b"MZ") {
        return Err("not a PE image (no MZ header)".into());
    }
    let pe = u32_at(image, 0x3c)? as usize;
    if image.get(pe..pe + 4) != Some(b"PE\0\0") {
        return Err(format!("no PE signature at offset {pe}"));
    }
    let sections = u16_at(image, pe + 6)? as usize;
    let opt_size = u16_at(image, pe + 20)? as usize;
    let opt = pe + 24;
    let (dirs_count_at, dirs_at) = match u16_at(image, opt)? {
        0x10b => (opt + 92, opt + 96),
        0x20b => (opt + 108, opt + 112),
        m => return Err(format!("unknown optional header magic {m:#x}")),
    };
    let headers_size = u32_at(image, opt + 60)? as usize;
    let checksum_at = opt + 64;
    let dirs = u32_at(image, dirs_count_at)?;

    let mut h = Sha256::new();
    h.update(range(image, 0, checksum_at)?);
    let mut cert_size = 0usize;
    if dirs > SECURITY_DIRECTORY {
        let entry = dirs_at + 8 * SECURITY_DIRECTORY as usize;
        h.update(range(image, checksum_at + 4, entry)?);
        h.update(range(image, entry + 8, headers_size)?);
        cert_size = u32_at(image, entry + 4)? as usize;
    } else {
        h.update(range(image, checksum_at + 4, headers_size)?);
    }

    let table = opt + opt_size;
    let mut raw = Vec::with_capacity(sections);
    for i in 0..sections {
        let s = table + 40 * i;
        let size = u32_at(image, s + 16)? as usize;
        let ptr = u32_at(image, s + 20)? as usize;
        if size > 0 {
            raw.push((ptr, size));
        }
    }
    raw.sort_unstable();
    let mut hashed = headers_size;
    for (ptr, size) in raw {
        h.update(range(image, ptr, ptr + size)?);
        hashed += size;
    }
    if image.len() > hashed {
        let rest = image.len() - hashed;
        if rest < cert_size {
            return Err(format!(
                "the certificate table ({cert_size} bytes) is larger than the {rest} bytes after the sections"
            ));
        }
        h.update(range(image, hashed, hashed + rest - cert_size)?);
    }
    Ok(h.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_refused_with_a_reason() {
        assert!(sha256(b"").unwrap_err().contains("MZ"));
        let mut b = vec![0u8; 256];
        b[..2].copy_from_slice(b"MZ");
        b[0x3c] = 0x80;
        assert!(sha256(&b).unwrap_err().contains("PE signature"));
        b[0x80..0x84].copy_from_slice(b"PE\0\0");
        // Optional header magic 0: neither PE32 nor PE32+.
        assert!(sha256(&b).unwrap_err().contains("magic"));
        // A huge e_lfanew points past the end.
        b[0x3c..0x40].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(sha256(&b).is_err());
    }
}
