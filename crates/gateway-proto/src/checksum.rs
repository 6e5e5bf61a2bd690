//! OTA package checksums, computed incrementally, in the text form ThingsBoard stores.
//!
//! ThingsBoard computes a package's checksum with Guava (`Hashing.<alg>().hashBytes(data)
//! .toString()`, `BaseOtaPackageService.generateChecksum`) and publishes it in the
//! `fw_checksum` / `sw_checksum` shared attribute, next to `fw_checksum_algorithm`, which holds
//! the name of its `ChecksumAlgorithm` enum (`MD5`, `SHA256`, `SHA384`, `SHA512`, `CRC32`,
//! `MURMUR3_32`, `MURMUR3_128`). Guava's `HashCode.toString()` is the lowercase hex of the
//! hash's bytes, and for the integer-valued hashes (CRC32, MurmurHash3 x86 32-bit) those bytes
//! are little-endian, so `crc32("The quick brown fox jumps over the lazy dog")` = `0x414fa339`
//! is written `39a34f41`. MurmurHash3 x64 128-bit is written as `h1` then `h2`, each
//! little-endian. All use seed 0. The official Python SDK compares the same way (it reverses
//! the bytes of the integer's hex).
//!
//! [`Hasher`] takes the image chunk by chunk, so nothing ever holds the whole image.

use std::fmt;

use md5::Digest as _;

/// A checksum algorithm ThingsBoard offers for OTA packages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ChecksumAlgorithm {
    /// MD5.
    Md5,
    /// SHA-256 (ThingsBoard's default).
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
    /// CRC-32 (IEEE), written as its little-endian bytes.
    Crc32,
    /// MurmurHash3 x86 32-bit, seed 0, written as its little-endian bytes.
    Murmur3_32,
    /// MurmurHash3 x64 128-bit, seed 0, written as `h1` then `h2`, each little-endian.
    Murmur3_128,
}

impl ChecksumAlgorithm {
    /// Every algorithm.
    pub const ALL: [ChecksumAlgorithm; 7] = [
        Self::Md5,
        Self::Sha256,
        Self::Sha384,
        Self::Sha512,
        Self::Crc32,
        Self::Murmur3_32,
        Self::Murmur3_128,
    ];

    /// ThingsBoard's name (`ChecksumAlgorithm.name()`), as found in `fw_checksum_algorithm`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Md5 => "MD5",
            Self::Sha256 => "SHA256",
            Self::Sha384 => "SHA384",
            Self::Sha512 => "SHA512",
            Self::Crc32 => "CRC32",
            Self::Murmur3_32 => "MURMUR3_32",
            Self::Murmur3_128 => "MURMUR3_128",
        }
    }

    /// Reads ThingsBoard's name, ignoring ASCII case (device SDKs lowercase it).
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|a| a.as_str().eq_ignore_ascii_case(name.trim()))
    }

    /// Length of the digest in bytes.
    pub fn digest_len(self) -> usize {
        match self {
            Self::Md5 | Self::Murmur3_128 => 16,
            Self::Sha256 => 32,
            Self::Sha384 => 48,
            Self::Sha512 => 64,
            Self::Crc32 | Self::Murmur3_32 => 4,
        }
    }

    /// A fresh incremental hasher.
    pub fn hasher(self) -> Hasher {
        Hasher::new(self)
    }

    /// The checksum of `data` in ThingsBoard's text form (lowercase hex).
    pub fn checksum(self, data: &[u8]) -> String {
        let mut h = self.hasher();
        h.update(data);
        h.finish_hex()
    }
}

impl fmt::Display for ChecksumAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An incremental checksum: [`update`](Self::update) with each chunk, then
/// [`finish_hex`](Self::finish_hex) or [`matches`](Self::matches).
#[derive(Clone)]
pub struct Hasher {
    algorithm: ChecksumAlgorithm,
    state: State,
}

#[derive(Clone)]
enum State {
    Md5(md5::Md5),
    Sha256(sha2::Sha256),
    Sha384(sha2::Sha384),
    Sha512(sha2::Sha512),
    Crc32(crc32fast::Hasher),
    Murmur32(Murmur3x86_32),
    Murmur128(Murmur3x64_128),
}

impl fmt::Debug for Hasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hasher")
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl Hasher {
    /// A hasher for `algorithm`.
    pub fn new(algorithm: ChecksumAlgorithm) -> Self {
        let state = match algorithm {
            ChecksumAlgorithm::Md5 => State::Md5(md5::Md5::new()),
            ChecksumAlgorithm::Sha256 => State::Sha256(sha2::Sha256::new()),
            ChecksumAlgorithm::Sha384 => State::Sha384(sha2::Sha384::new()),
            ChecksumAlgorithm::Sha512 => State::Sha512(sha2::Sha512::new()),
            ChecksumAlgorithm::Crc32 => State::Crc32(crc32fast::Hasher::new()),
            ChecksumAlgorithm::Murmur3_32 => State::Murmur32(Murmur3x86_32::default()),
            ChecksumAlgorithm::Murmur3_128 => State::Murmur128(Murmur3x64_128::default()),
        };
        Self { algorithm, state }
    }

    /// The algorithm.
    pub fn algorithm(&self) -> ChecksumAlgorithm {
        self.algorithm
    }

    /// Feeds the next bytes of the image.
    pub fn update(&mut self, data: &[u8]) {
        match &mut self.state {
            State::Md5(h) => h.update(data),
            State::Sha256(h) => h.update(data),
            State::Sha384(h) => h.update(data),
            State::Sha512(h) => h.update(data),
            State::Crc32(h) => h.update(data),
            State::Murmur32(h) => h.update(data),
            State::Murmur128(h) => h.update(data),
        }
    }

    /// The digest bytes, in the order ThingsBoard prints them.
    pub fn finish(self) -> Vec<u8> {
        match self.state {
            State::Md5(h) => h.finalize().to_vec(),
            State::Sha256(h) => h.finalize().to_vec(),
            State::Sha384(h) => h.finalize().to_vec(),
            State::Sha512(h) => h.finalize().to_vec(),
            State::Crc32(h) => h.finalize().to_le_bytes().to_vec(),
            State::Murmur32(h) => h.finish().to_le_bytes().to_vec(),
            State::Murmur128(h) => {
                let (h1, h2) = h.finish();
                let mut out = h1.to_le_bytes().to_vec();
                out.extend_from_slice(&h2.to_le_bytes());
                out
            }
        }
    }

    /// The checksum as ThingsBoard writes it: lowercase hex of [`finish`](Self::finish).
    pub fn finish_hex(self) -> String {
        hex(&self.finish())
    }

    /// Whether the image hashed so far has checksum `expected`, in ThingsBoard's text form.
    /// Hex case and surrounding whitespace are ignored (a checksum typed into the UI by hand
    /// may be uppercase).
    pub fn matches(self, expected: &str) -> bool {
        self.finish_hex().eq_ignore_ascii_case(expected.trim())
    }
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

// ---------------------------------------------------------------------------------------------
// MurmurHash3 (Austin Appleby's public-domain algorithm), streaming, seed 0.
// ---------------------------------------------------------------------------------------------

/// MurmurHash3_x86_32, fed in pieces of any size.
#[derive(Debug, Clone, Default)]
struct Murmur3x86_32 {
    h: u32,
    /// Bytes of an unfinished 4-byte block.
    tail: [u8; 4],
    tail_len: usize,
    len: u64,
}

const M32_C1: u32 = 0xcc9e_2d51;
const M32_C2: u32 = 0x1b87_3593;

fn m32_mix_k(k: u32) -> u32 {
    k.wrapping_mul(M32_C1).rotate_left(15).wrapping_mul(M32_C2)
}

impl Murmur3x86_32 {
    fn block(&mut self, block: [u8; 4]) {
        self.h ^= m32_mix_k(u32::from_le_bytes(block));
        self.h = self
            .h
            .rotate_left(13)
            .wrapping_mul(5)
            .wrapping_add(0xe654_6b64);
    }

    fn update(&mut self, mut data: &[u8]) {
        self.len = self.len.wrapping_add(data.len() as u64);
        if self.tail_len > 0 {
            let take = (4 - self.tail_len).min(data.len());
            self.tail[self.tail_len..self.tail_len + take].copy_from_slice(&data[..take]);
            self.tail_len += take;
            data = &data[take..];
            if self.tail_len < 4 {
                return;
            }
            self.block(self.tail);
            self.tail_len = 0;
        }
        let mut blocks = data.chunks_exact(4);
        for b in &mut blocks {
            self.block([b[0], b[1], b[2], b[3]]);
        }
        let rest = blocks.remainder();
        self.tail[..rest.len()].copy_from_slice(rest);
        self.tail_len = rest.len();
    }

    fn finish(self) -> u32 {
        let mut h = self.h;
        if self.tail_len > 0 {
            let mut k = [0u8; 4];
            k[..self.tail_len].copy_from_slice(&self.tail[..self.tail_len]);
            h ^= m32_mix_k(u32::from_le_bytes(k));
        }
        // The algorithm mixes in the length as a 32-bit value.
        h ^= self.len as u32;
        h ^= h >> 16;
        h = h.wrapping_mul(0x85eb_ca6b);
        h ^= h >> 13;
        h = h.wrapping_mul(0xc2b2_ae35);
        h ^ (h >> 16)
    }
}

/// MurmurHash3_x64_128, fed in pieces of any size.
#[derive(Debug, Clone, Default)]
struct Murmur3x64_128 {
    h1: u64,
    h2: u64,
    /// Bytes of an unfinished 16-byte block.
    tail: [u8; 16],
    tail_len: usize,
    len: u64,
}

const M128_C1: u64 = 0x87c3_7b91_1142_53d5;
const M128_C2: u64 = 0x4cf5_ad43_2745_937f;

fn m128_mix_k1(k: u64) -> u64 {
    k.wrapping_mul(M128_C1)
        .rotate_left(31)
        .wrapping_mul(M128_C2)
}

fn m128_mix_k2(k: u64) -> u64 {
    k.wrapping_mul(M128_C2)
        .rotate_left(33)
        .wrapping_mul(M128_C1)
}

fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^ (k >> 33)
}

fn le_u64(bytes: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b[..bytes.len()].copy_from_slice(bytes);
    u64::from_le_bytes(b)
}

impl Murmur3x64_128 {
    fn block(&mut self, block: &[u8]) {
        let (k1, k2) = (le_u64(&block[..8]), le_u64(&block[8..16]));
        self.h1 ^= m128_mix_k1(k1);
        self.h1 = self
            .h1
            .rotate_left(27)
            .wrapping_add(self.h2)
            .wrapping_mul(5)
            .wrapping_add(0x52dc_e729);
        self.h2 ^= m128_mix_k2(k2);
        self.h2 = self
            .h2
            .rotate_left(31)
            .wrapping_add(self.h1)
            .wrapping_mul(5)
            .wrapping_add(0x3849_5ab5);
    }

    fn update(&mut self, mut data: &[u8]) {
        self.len = self.len.wrapping_add(data.len() as u64);
        if self.tail_len > 0 {
            let take = (16 - self.tail_len).min(data.len());
            self.tail[self.tail_len..self.tail_len + take].copy_from_slice(&data[..take]);
            self.tail_len += take;
            data = &data[take..];
            if self.tail_len < 16 {
                return;
            }
            let tail = self.tail;
            self.block(&tail);
            self.tail_len = 0;
        }
        let mut blocks = data.chunks_exact(16);
        for b in &mut blocks {
            self.block(b);
        }
        let rest = blocks.remainder();
        self.tail[..rest.len()].copy_from_slice(rest);
        self.tail_len = rest.len();
    }

    fn finish(self) -> (u64, u64) {
        let (mut h1, mut h2) = (self.h1, self.h2);
        let tail = &self.tail[..self.tail_len];
        if tail.len() > 8 {
            h2 ^= m128_mix_k2(le_u64(&tail[8..]));
        }
        if !tail.is_empty() {
            h1 ^= m128_mix_k1(le_u64(&tail[..tail.len().min(8)]));
        }
        h1 ^= self.len;
        h2 ^= self.len;
        h1 = h1.wrapping_add(h2);
        h2 = h2.wrapping_add(h1);
        h1 = fmix64(h1);
        h2 = fmix64(h2);
        h1 = h1.wrapping_add(h2);
        h2 = h2.wrapping_add(h1);
        (h1, h2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FOX: &[u8] = b"The quick brown fox jumps over the lazy dog";

    /// 771 bytes: every block size and tail length is exercised.
    fn long_input() -> Vec<u8> {
        let mut v: Vec<u8> = (0..=255u8).cycle().take(768).collect();
        v.extend_from_slice(b"xyz");
        v
    }

    /// Known answers. SHA/MD5 from the published test vectors (FIPS 180 "abc" and the fox
    /// sentence); CRC-32 and MurmurHash3 as Guava's `HashCode.toString()` prints them (for
    /// the fox: Guava's own documented `murmur3_128` value `6c1b07bc...`), cross-checked
    /// with Python's `zlib.crc32` and `mmh3` (`signed=False`, bytes reversed).
    #[test]
    fn known_vectors() {
        let long = long_input();
        let cases: &[(ChecksumAlgorithm, &[u8], &str)] = &[
            (
                ChecksumAlgorithm::Md5,
                b"",
                "d41d8cd98f00b204e9800998ecf8427e",
            ),
            (
                ChecksumAlgorithm::Md5,
                FOX,
                "9e107d9d372bb6826bd81d3542a419d6",
            ),
            (
                ChecksumAlgorithm::Sha256,
                b"abc",
                "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
            ),
            (
                ChecksumAlgorithm::Sha384,
                b"abc",
                "cb00753f45a35e8bb5a03d699ac65007272c32ab0eded1631a8b605a43ff5bed\
                 8086072ba1e7cc2358baeca134c825a7",
            ),
            (
                ChecksumAlgorithm::Sha512,
                b"abc",
                "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a\
                 2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f",
            ),
            (ChecksumAlgorithm::Crc32, b"", "00000000"),
            (ChecksumAlgorithm::Crc32, b"a", "43beb7e8"),
            (ChecksumAlgorithm::Crc32, FOX, "39a34f41"),
            (ChecksumAlgorithm::Crc32, &long, "81629043"),
            (ChecksumAlgorithm::Murmur3_32, b"", "00000000"),
            (ChecksumAlgorithm::Murmur3_32, b"a", "b269253c"),
            (ChecksumAlgorithm::Murmur3_32, b"hello", "47fa8b24"),
            (ChecksumAlgorithm::Murmur3_32, FOX, "23f74f2e"),
            (ChecksumAlgorithm::Murmur3_32, &long, "3d11dd86"),
            (
                ChecksumAlgorithm::Murmur3_128,
                b"",
                "00000000000000000000000000000000",
            ),
            (
                ChecksumAlgorithm::Murmur3_128,
                b"a",
                "897859f6655555855a890e51483ab5e6",
            ),
            (
                ChecksumAlgorithm::Murmur3_128,
                b"hello",
                "029bbd41b3a7d8cb191dae486a901e5b",
            ),
            (
                ChecksumAlgorithm::Murmur3_128,
                FOX,
                "6c1b07bc7bbc4be347939ac4a93c437a",
            ),
            (
                ChecksumAlgorithm::Murmur3_128,
                &long,
                "107df987c496d78a5f8ad4ebc45e9473",
            ),
        ];
        for (alg, data, expected) in cases {
            assert_eq!(
                alg.checksum(data),
                *expected,
                "{alg} of {} bytes",
                data.len()
            );
        }
    }

    #[test]
    fn incremental_equals_one_shot_for_every_split() {
        let long = long_input();
        for alg in ChecksumAlgorithm::ALL {
            let whole = alg.checksum(&long);
            for piece in [1, 3, 7, 15, 16, 17, 64, 100] {
                let mut h = alg.hasher();
                for chunk in long.chunks(piece) {
                    h.update(chunk);
                }
                assert_eq!(h.finish_hex(), whole, "{alg} in pieces of {piece}");
            }
            assert_eq!(alg.digest_len() * 2, whole.len());
        }
    }

    #[test]
    fn names_and_comparison() {
        for alg in ChecksumAlgorithm::ALL {
            assert_eq!(ChecksumAlgorithm::parse(alg.as_str()), Some(alg));
            assert_eq!(
                ChecksumAlgorithm::parse(&alg.as_str().to_lowercase()),
                Some(alg)
            );
        }
        assert_eq!(ChecksumAlgorithm::parse("SHA1"), None);
        assert_eq!(ChecksumAlgorithm::parse(""), None);
        let mut h = ChecksumAlgorithm::Crc32.hasher();
        h.update(FOX);
        assert!(h.clone().matches(" 39A34F41 "));
        assert!(
            !h.matches("414fa339"),
            "big-endian is not ThingsBoard's form"
        );
    }
}
