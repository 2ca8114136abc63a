//! PEM and fingerprints of certificates, without a library: what the CA commands, the
//! pinned seed CA and `client_listen` need (one certificate at a time).

use std::fmt::Write as _;

use sha2::{Digest, Sha256};

/// A certificate's SHA-256 fingerprint as colon-separated upper-case hex (`AB:CD:…`).
pub fn fingerprint(der: &[u8]) -> String {
    let mut text = String::new();
    for (i, byte) in Sha256::digest(der).iter().enumerate() {
        if i > 0 {
            text.push(':');
        }
        let _ = write!(text, "{byte:02X}");
    }
    text
}

/// The DER bytes of the first certificate in a PEM text.
pub fn pem_to_der(pem: &str) -> Option<Vec<u8>> {
    let begin = "-----BEGIN CERTIFICATE-----";
    let start = pem.find(begin)? + begin.len();
    let end = start + pem[start..].find("-----END CERTIFICATE-----")?;
    let b64: String = pem[start..end]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    base64_decode(&b64)
}

/// A PEM text that holds exactly one certificate and nothing else (whitespace aside): its
/// DER bytes and the PEM re-encoded from them. What a pinned fingerprint vouches for is
/// one certificate; a second block (another CA a man in the middle appended, a key) is
/// refused rather than trusted along with it.
pub fn single_certificate(pem: &str) -> Result<(Vec<u8>, String), &'static str> {
    let begin = "-----BEGIN CERTIFICATE-----";
    let end = "-----END CERTIFICATE-----";
    let text = pem.trim();
    let body = text
        .strip_prefix(begin)
        .and_then(|rest| rest.strip_suffix(end))
        .ok_or("not one PEM certificate")?;
    if body.contains("-----") {
        return Err("more than one PEM block");
    }
    let b64: String = body.chars().filter(|c| !c.is_whitespace()).collect();
    let der = base64_decode(&b64).ok_or("a certificate that is not base64")?;
    if der.is_empty() {
        return Err("an empty certificate");
    }
    Ok((der.clone(), der_to_pem(&der)))
}

/// A certificate's DER bytes as PEM (64 columns).
pub fn der_to_pem(der: &[u8]) -> String {
    let b64 = base64_encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

const BASE64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

pub(crate) fn base64_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(BASE64[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

pub(crate) fn base64_decode(text: &str) -> Option<Vec<u8>> {
    const ALPHABET: &[u8] = BASE64;
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut buffer = 0u32;
    let mut bits = 0;
    for c in text.bytes().filter(|&c| c != b'=') {
        let value = ALPHABET.iter().position(|&a| a == c)? as u32;
        buffer = (buffer << 6) | value;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
        }
    }
    Some(out)
}
