//! What the boot stage tells the slot's initramfs on the kernel command
//! line: `drover.slot=LABEL` and `drover.verity=DATA_BLOCKS:HASH_OFFSET:
//! SALT:ROOT_HASH` (salt `-` when empty), both from the signed manifest.
//! The stage formats [`VerityArg`] with `Display`, slot mode parses it with
//! `FromStr`: one type, so the two cannot drift.

use std::fmt;
use std::str::FromStr;

/// The key of the booted slot's label.
pub const SLOT: &str = "drover.slot";
/// The key of the verity parameters ([`VerityArg`]).
pub const VERITY: &str = "drover.verity";

/// The verity parameters the slot's initramfs opens `/usr` with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerityArg {
    /// Data blocks.
    pub data_blocks: u64,
    /// Hash offset in bytes.
    pub hash_offset: u64,
    /// Salt (empty: none).
    pub salt: Vec<u8>,
    /// Root hash.
    pub root_hash: [u8; 32],
}

/// A `drover.verity=` value that does not parse, or a manifest whose
/// verity parameters cannot make one.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Not four fields.
    #[error("{VERITY}='{0}' is not DATA_BLOCKS:HASH_OFFSET:SALT:ROOT_HASH")]
    Shape(String),
    /// A field that is not what it should be.
    #[error("{VERITY} {field} '{value}' is not {what}")]
    Field {
        /// Which field.
        field: &'static str,
        /// Its text.
        value: String,
        /// What it should be.
        what: &'static str,
    },
}

impl VerityArg {
    /// The argument for a slot whose signed manifest is `m`.
    pub fn from_manifest(m: &crate::manifest::Manifest) -> Result<Self, Error> {
        let v = &m.verity;
        Ok(VerityArg {
            data_blocks: v.data_blocks,
            hash_offset: v.hash_offset,
            salt: salt_from_hex(&v.salt)?,
            root_hash: root_from_hex(&v.root_hash)?,
        })
    }
}

fn salt_from_hex(s: &str) -> Result<Vec<u8>, Error> {
    if s.is_empty() || s == "-" {
        return Ok(Vec::new());
    }
    hex::decode(s).map_err(|_| Error::Field {
        field: "salt",
        value: s.to_string(),
        what: "hex",
    })
}

fn root_from_hex(s: &str) -> Result<[u8; 32], Error> {
    hex::decode(s)
        .ok()
        .and_then(|r| r.try_into().ok())
        .ok_or_else(|| Error::Field {
            field: "root hash",
            value: s.to_string(),
            what: "64 hex digits",
        })
}

impl fmt::Display for VerityArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let salt = if self.salt.is_empty() {
            "-".to_string()
        } else {
            hex::encode(&self.salt)
        };
        write!(
            f,
            "{}:{}:{salt}:{}",
            self.data_blocks,
            self.hash_offset,
            hex::encode(self.root_hash)
        )
    }
}

impl FromStr for VerityArg {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let parts: Vec<&str> = s.split(':').collect();
        let [blocks, offset, salt, root] = parts.as_slice() else {
            return Err(Error::Shape(s.to_string()));
        };
        let number = |field, v: &str| {
            v.parse().map_err(|_| Error::Field {
                field,
                value: v.to_string(),
                what: "a number",
            })
        };
        Ok(VerityArg {
            data_blocks: number("data blocks", blocks)?,
            hash_offset: number("hash offset", offset)?,
            salt: salt_from_hex(salt)?,
            root_hash: root_from_hex(root)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_the_stage_formats_slot_mode_parses() {
        for salt in [Vec::new(), vec![0x5a; 32]] {
            let v = VerityArg {
                data_blocks: 85_352,
                hash_offset: 349_601_792,
                salt,
                root_hash: [0xab; 32],
            };
            let text = v.to_string();
            assert_eq!(text.parse::<VerityArg>().unwrap(), v, "{text}");
        }
        let root = "ab".repeat(32);
        assert_eq!(
            format!("100:409600:-:{root}").parse::<VerityArg>().unwrap(),
            VerityArg {
                data_blocks: 100,
                hash_offset: 409_600,
                salt: Vec::new(),
                root_hash: [0xab; 32],
            }
        );
    }

    #[test]
    fn bad_values_say_which_field() {
        let root = "ab".repeat(32);
        let e = "1:2:3".parse::<VerityArg>().unwrap_err().to_string();
        assert!(
            e.contains("is not DATA_BLOCKS:HASH_OFFSET:SALT:ROOT_HASH"),
            "{e}"
        );
        let e = format!("x:2:-:{root}").parse::<VerityArg>().unwrap_err();
        assert!(
            e.to_string().contains("data blocks 'x' is not a number"),
            "{e}"
        );
        let e = "1:2:-:abcd".parse::<VerityArg>().unwrap_err();
        assert!(
            e.to_string()
                .contains("root hash 'abcd' is not 64 hex digits"),
            "{e}"
        );
        let e = format!("1:2:zz:{root}").parse::<VerityArg>().unwrap_err();
        assert!(e.to_string().contains("salt 'zz' is not hex"), "{e}");
    }
}
