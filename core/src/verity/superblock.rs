//! The veritysetup superblock (`struct verity_sb` of cryptsetup), 512 bytes,
//! all integers little-endian:
//!
//! | offset | size | field                                  |
//! |-------:|-----:|----------------------------------------|
//! | 0      | 8    | signature `verity\0\0`                 |
//! | 8      | 4    | version (1)                            |
//! | 12     | 4    | hash type (1: salt first)              |
//! | 16     | 16   | UUID                                   |
//! | 32     | 32   | hash algorithm name, NUL padded        |
//! | 64     | 4    | data block size                        |
//! | 68     | 4    | hash block size                        |
//! | 72     | 8    | data blocks                            |
//! | 80     | 2    | salt size                              |
//! | 82     | 6    | padding                                |
//! | 88     | 256  | salt                                   |
//! | 344    | 168  | padding                                |

use super::VerityParams;

/// Size of the on-disk superblock.
pub const SUPERBLOCK_SIZE: usize = 512;
const SIGNATURE: &[u8; 8] = b"verity\0\0";

/// A parsed superblock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Superblock {
    /// The tree's parameters.
    pub params: VerityParams,
    /// The UUID veritysetup reports for the hash device.
    pub uuid: [u8; 16],
}

impl Superblock {
    /// Serializes to the 512 bytes veritysetup writes.
    pub fn to_bytes(&self) -> [u8; SUPERBLOCK_SIZE] {
        let mut b = [0u8; SUPERBLOCK_SIZE];
        b[0..8].copy_from_slice(SIGNATURE);
        b[8..12].copy_from_slice(&1u32.to_le_bytes());
        b[12..16].copy_from_slice(&1u32.to_le_bytes());
        b[16..32].copy_from_slice(&self.uuid);
        b[32..38].copy_from_slice(b"sha256");
        b[64..68].copy_from_slice(&self.params.data_block_size.to_le_bytes());
        b[68..72].copy_from_slice(&self.params.hash_block_size.to_le_bytes());
        b[72..80].copy_from_slice(&self.params.data_blocks.to_le_bytes());
        let salt = &self.params.salt;
        b[80..82].copy_from_slice(&(salt.len() as u16).to_le_bytes());
        b[88..88 + salt.len()].copy_from_slice(salt);
        b
    }

    /// Parses and checks a superblock; the error says what is wrong.
    pub fn parse(b: &[u8]) -> Result<Self, String> {
        if b.len() < SUPERBLOCK_SIZE {
            return Err(format!("only {} bytes", b.len()));
        }
        if &b[0..8] != SIGNATURE {
            return Err("no 'verity' signature".into());
        }
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
        let version = u32_at(8);
        if version != 1 {
            return Err(format!("superblock version {version}, only 1 is supported"));
        }
        let hash_type = u32_at(12);
        if hash_type != 1 {
            return Err(format!("hash type {hash_type}, only 1 is supported"));
        }
        let alg_end = b[32..64].iter().position(|&c| c == 0).unwrap_or(32);
        let alg = String::from_utf8_lossy(&b[32..32 + alg_end]);
        if alg != "sha256" {
            return Err(format!("hash algorithm '{alg}', only sha256 is supported"));
        }
        let salt_len = usize::from(u16::from_le_bytes([b[80], b[81]]));
        if salt_len > 256 {
            return Err(format!("salt size {salt_len} exceeds 256"));
        }
        let params = VerityParams {
            data_block_size: u32_at(64),
            hash_block_size: u32_at(68),
            data_blocks: u64::from_le_bytes(b[72..80].try_into().unwrap()),
            salt: b[88..88 + salt_len].to_vec(),
        };
        params.validate().map_err(|e| e.to_string())?;
        Ok(Self {
            params,
            uuid: b[16..32].try_into().unwrap(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejections() {
        let sb = Superblock {
            params: VerityParams::new(77, vec![1, 2, 3]),
            uuid: [9; 16],
        };
        let bytes = sb.to_bytes();
        assert_eq!(Superblock::parse(&bytes).unwrap(), sb);
        let mut bad = bytes;
        bad[0] = b'X';
        assert!(Superblock::parse(&bad).unwrap_err().contains("signature"));
        let mut bad = bytes;
        bad[80] = 0xff;
        bad[81] = 0x01;
        assert!(Superblock::parse(&bad).unwrap_err().contains("salt"));
        assert!(Superblock::parse(&bytes[..100]).is_err());
    }
}
