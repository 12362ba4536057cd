//! TPM 2.0 quotes, checked without a TPM: the signed `TPMS_ATTEST`
//! structure of a `TPM2_Quote`, the attestation key's `TPMT_PUBLIC` and its
//! name, and the RSASSA-PKCS1-v1_5/SHA-256 signature (TPM 2.0 Library,
//! Part 2: Structures, 10.12 and 12.2). Big-endian throughout, every length
//! checked against what is left.

use sha2::{Digest, Sha256};

use crate::measured::measure::Bank;

/// `TPM_GENERATED_VALUE`: the TPM made this structure.
const TPM_GENERATED: u32 = 0xff54_4347;
/// `TPM_ST_ATTEST_QUOTE`.
const ST_ATTEST_QUOTE: u16 = 0x8018;
/// `TPM_ALG_RSA`.
const ALG_RSA: u16 = 0x0001;
/// `TPM_ALG_SHA256`.
const ALG_SHA256: u16 = 0x000b;
/// `TPM_ALG_NULL`.
const ALG_NULL: u16 = 0x0010;
/// `TPM_ALG_RSASSA`.
const ALG_RSASSA: u16 = 0x0014;

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn new(b: &'a [u8], what: &'static str) -> Self {
        Reader { b, at: 0, what }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.b.len());
        let Some(end) = end else {
            return Err(format!(
                "{} is truncated: {n} bytes needed at offset {}, {} there",
                self.what,
                self.at,
                self.b.len().saturating_sub(self.at)
            ));
        };
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_be_bytes(self.take(2)?.try_into().expect("2")))
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().expect("4")))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_be_bytes(self.take(8)?.try_into().expect("8")))
    }

    /// A `TPM2B_*`: a 16-bit size, then that many bytes.
    fn sized(&mut self) -> Result<&'a [u8], String> {
        let n = self.u16()? as usize;
        self.take(n)
    }

    fn end(&self) -> Result<(), String> {
        if self.at != self.b.len() {
            return Err(format!(
                "{} has {} bytes after its end",
                self.what,
                self.b.len() - self.at
            ));
        }
        Ok(())
    }
}

/// An RSA attestation key's public part.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AkPublic {
    /// The marshalled `TPMT_PUBLIC`.
    pub bytes: Vec<u8>,
    /// The modulus, big-endian.
    pub modulus: Vec<u8>,
    /// The public exponent, big-endian.
    pub exponent: Vec<u8>,
    /// The TPM name: `TPM_ALG_SHA256 ‖ SHA-256(TPMT_PUBLIC)`.
    pub name: Vec<u8>,
}

impl AkPublic {
    /// Parses a marshalled `TPMT_PUBLIC` of an RSA signing key with a
    /// SHA-256 name.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let mut r = Reader::new(bytes, "the attestation key's public part");
        let kind = r.u16()?;
        if kind != ALG_RSA {
            return Err(format!(
                "the attestation key is of type {kind:#06x}; Drover checks RSA keys"
            ));
        }
        let name_alg = r.u16()?;
        if name_alg != ALG_SHA256 {
            return Err(format!(
                "the attestation key's name algorithm is {name_alg:#06x}, not SHA-256"
            ));
        }
        let _attributes = r.u32()?;
        let _policy = r.sized()?;
        if r.u16()? != ALG_NULL {
            return Err("the attestation key is a storage key (it has a symmetric algorithm), not a signing key".into());
        }
        let scheme = r.u16()?;
        if scheme != ALG_NULL {
            let _hash = r.u16()?;
        }
        let _bits = r.u16()?;
        let exponent = match r.u32()? {
            0 => 65537,
            e => e,
        };
        let modulus = r.sized()?.to_vec();
        r.end()?;
        let mut name = ALG_SHA256.to_be_bytes().to_vec();
        name.extend_from_slice(&Sha256::digest(bytes));
        let exponent = exponent
            .to_be_bytes()
            .into_iter()
            .skip_while(|&b| b == 0)
            .collect();
        Ok(AkPublic {
            bytes: bytes.to_vec(),
            modulus,
            exponent,
            name,
        })
    }

    /// Whether `signature` is this key's RSASSA-PKCS1-v1_5 SHA-256
    /// signature of `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        ring::signature::RsaPublicKeyComponents {
            n: &self.modulus,
            e: &self.exponent,
        }
        .verify(
            &ring::signature::RSA_PKCS1_2048_8192_SHA256,
            message,
            signature,
        )
        .is_ok()
    }
}

/// The parts of a quote's `TPMS_ATTEST` a verifier checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quote {
    /// The qualified name of the key that signed it (its name hashed with
    /// its parents').
    pub signer: Vec<u8>,
    /// The qualifying data the caller gave (the verifier's nonce).
    pub extra_data: Vec<u8>,
    /// The TPM's reset count (boots since it was cleared).
    pub reset_count: u32,
    /// The PCRs quoted: bank and indices, in the order they are hashed.
    pub selection: Vec<(Bank, Vec<u32>)>,
    /// The digest of the quoted PCR values.
    pub pcr_digest: Vec<u8>,
}

impl Quote {
    /// Parses a marshalled `TPMS_ATTEST` of type quote.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let mut r = Reader::new(bytes, "the quote");
        if r.u32()? != TPM_GENERATED {
            return Err("the quote was not made by a TPM (no TPM_GENERATED_VALUE)".into());
        }
        let st = r.u16()?;
        if st != ST_ATTEST_QUOTE {
            return Err(format!(
                "the attestation structure is of type {st:#06x}, not a quote"
            ));
        }
        let signer = r.sized()?.to_vec();
        let extra_data = r.sized()?.to_vec();
        let _clock = r.u64()?;
        let reset_count = r.u32()?;
        let _restart_count = r.u32()?;
        let _safe = r.u8()?;
        let _firmware = r.u64()?;
        let count = r.u32()?;
        if count > 16 {
            return Err(format!("the quote selects {count} PCR banks"));
        }
        let mut selection = Vec::new();
        for _ in 0..count {
            let alg = r.u16()?;
            let bank = Bank::from_tpm_alg(alg)
                .ok_or_else(|| format!("the quote selects an unknown PCR bank {alg:#06x}"))?;
            let n = r.u8()? as usize;
            let bits = r.take(n)?;
            let pcrs = (0..n as u32 * 8)
                .filter(|i| bits[*i as usize / 8] & (1 << (i % 8)) != 0)
                .collect();
            selection.push((bank, pcrs));
        }
        let pcr_digest = r.sized()?.to_vec();
        r.end()?;
        Ok(Quote {
            signer,
            extra_data,
            reset_count,
            selection,
            pcr_digest,
        })
    }

    /// The digest a TPM computes over `values` for this quote's selection
    /// (SHA-256, the attestation key's scheme hash), or the first selected
    /// PCR that `values` lacks.
    pub fn digest_of(
        &self,
        values: &crate::measured::bootcheck::PcrValues,
    ) -> Result<Vec<u8>, (Bank, u32)> {
        let mut h = Sha256::new();
        for (bank, pcrs) in &self.selection {
            for pcr in pcrs {
                h.update(values.get(&(*bank, *pcr)).ok_or((*bank, *pcr))?);
            }
        }
        Ok(h.finalize().to_vec())
    }
}

/// Checks that a signature scheme marshalled by the TPM is RSASSA with
/// SHA-256 and returns the raw signature (`TPMT_SIGNATURE`).
pub fn rsassa_signature(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let mut r = Reader::new(bytes, "the quote's signature");
    let alg = r.u16()?;
    if alg != ALG_RSASSA {
        return Err(format!(
            "the quote is signed with scheme {alg:#06x}, not RSASSA"
        ));
    }
    let hash = r.u16()?;
    if hash != ALG_SHA256 {
        return Err(format!(
            "the quote's signature hashes with {hash:#06x}, not SHA-256"
        ));
    }
    let sig = r.sized()?.to_vec();
    r.end()?;
    Ok(sig)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attest(nonce: &[u8], digest: &[u8]) -> Vec<u8> {
        let mut v = TPM_GENERATED.to_be_bytes().to_vec();
        v.extend_from_slice(&ST_ATTEST_QUOTE.to_be_bytes());
        v.extend_from_slice(&34u16.to_be_bytes());
        v.extend_from_slice(&[0x42; 34]);
        v.extend_from_slice(&(nonce.len() as u16).to_be_bytes());
        v.extend_from_slice(nonce);
        v.extend_from_slice(&[0; 17 + 8]);
        v.extend_from_slice(&1u32.to_be_bytes());
        v.extend_from_slice(&ALG_SHA256.to_be_bytes());
        v.extend_from_slice(&[3, 0b1000_0001, 0x01, 0]);
        v.extend_from_slice(&(digest.len() as u16).to_be_bytes());
        v.extend_from_slice(digest);
        v
    }

    #[test]
    fn a_quote_parses_and_its_selection_is_read_bit_by_bit() {
        let q = Quote::parse(&attest(b"nonce", &[7; 32])).unwrap();
        assert_eq!(q.extra_data, b"nonce");
        assert_eq!(q.signer, vec![0x42; 34]);
        assert_eq!(q.selection, vec![(Bank::Sha256, vec![0, 7, 8])]);
        let mut values = crate::measured::bootcheck::PcrValues::new();
        for p in [0, 7, 8] {
            values.insert((Bank::Sha256, p), vec![p as u8; 32]);
        }
        let mut h = Sha256::new();
        for p in [0u8, 7, 8] {
            h.update([p; 32]);
        }
        assert_eq!(q.digest_of(&values).unwrap(), h.finalize().to_vec());
        values.remove(&(Bank::Sha256, 7));
        assert_eq!(q.digest_of(&values), Err((Bank::Sha256, 7)));
    }

    #[test]
    fn malformed_quotes_are_refused() {
        let good = attest(b"n", &[7; 32]);
        for cut in [0, 3, 6, 20, good.len() - 1] {
            assert!(Quote::parse(&good[..cut])
                .unwrap_err()
                .contains("truncated"));
        }
        let mut long = good.clone();
        long.push(0);
        assert!(Quote::parse(&long).unwrap_err().contains("after its end"));
        let mut other = good.clone();
        other[5] = 0x17; // TPM_ST_ATTEST_CERTIFY
        assert!(Quote::parse(&other).unwrap_err().contains("not a quote"));
        let mut fake = good;
        fake[0] = 0;
        assert!(Quote::parse(&fake)
            .unwrap_err()
            .contains("not made by a TPM"));
        assert!(AkPublic::parse(&[0, 0x23]).unwrap_err().contains("RSA"));
        assert!(rsassa_signature(&[0, 0x18, 0, 0x0b, 0, 0])
            .unwrap_err()
            .contains("RSASSA"));
    }
}
