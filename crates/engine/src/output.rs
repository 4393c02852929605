//! Output encodings of an embedding (decisions.md, "Normalisation and encodings").

use std::str::FromStr;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::error::Error;

/// How an embedding is written out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EmbeddingType {
    /// JSON numbers.
    Float,
    /// Base64 of the little-endian f32 bytes.
    Base64,
    /// Sign bits packed MSB-first, minus 128, as signed bytes.
    Binary,
    /// Sign bits packed MSB-first, as unsigned bytes.
    Ubinary,
}

impl EmbeddingType {
    /// Every type, in documentation order.
    pub const ALL: [EmbeddingType; 4] = [
        EmbeddingType::Float,
        EmbeddingType::Base64,
        EmbeddingType::Binary,
        EmbeddingType::Ubinary,
    ];

    /// The name used in requests.
    pub fn name(self) -> &'static str {
        match self {
            EmbeddingType::Float => "float",
            EmbeddingType::Base64 => "base64",
            EmbeddingType::Binary => "binary",
            EmbeddingType::Ubinary => "ubinary",
        }
    }
}

impl FromStr for EmbeddingType {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        EmbeddingType::ALL.into_iter().find(|t| t.name() == s).ok_or_else(|| {
            Error::InvalidRequest(format!(
                "embedding_type {s:?} is not supported; accepted values are float, base64, binary, ubinary"
            ))
        })
    }
}

/// An embedding in one encoding.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Encoded {
    /// `float`.
    Float(Vec<f32>),
    /// `base64`.
    Base64(String),
    /// `binary`.
    Binary(Vec<i8>),
    /// `ubinary`.
    Ubinary(Vec<u8>),
}

/// Encodes `v` as `ty`.
pub fn encode(v: &[f32], ty: EmbeddingType) -> Encoded {
    match ty {
        EmbeddingType::Float => Encoded::Float(v.to_vec()),
        EmbeddingType::Base64 => Encoded::Base64(base64_f32(v)),
        EmbeddingType::Ubinary => Encoded::Ubinary(pack_bits(v)),
        EmbeddingType::Binary => Encoded::Binary(
            pack_bits(v)
                .into_iter()
                .map(|b| (b as i16 - 128) as i8)
                .collect(),
        ),
    }
}

/// Base64 (standard alphabet, padded) of the little-endian f32 bytes.
pub fn base64_f32(v: &[f32]) -> String {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Bit i = (v[i] > 0), packed most-significant bit first, 8 values per byte; a final partial
/// byte is zero-padded on the right.
pub fn pack_bits(v: &[f32]) -> Vec<u8> {
    v.chunks(8)
        .map(|chunk| {
            chunk
                .iter()
                .enumerate()
                .fold(0u8, |byte, (i, &x)| byte | (((x > 0.0) as u8) << (7 - i)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_are_msb_first_and_padded() {
        let v = [1.0, -1.0, 0.0, 2.0, 0.5, -0.1, 3.0, 1.0, 0.7];
        assert_eq!(pack_bits(&v), vec![0b1001_1011, 0b1000_0000]);
        assert_eq!(
            encode(&v, EmbeddingType::Binary),
            Encoded::Binary(vec![(0b1001_1011u8 as i16 - 128) as i8, 0])
        );
    }

    #[test]
    fn base64_is_little_endian_f32() {
        assert_eq!(base64_f32(&[1.0]), "AACAPw==");
    }

    #[test]
    fn names_round_trip() {
        for t in EmbeddingType::ALL {
            assert_eq!(t.name().parse::<EmbeddingType>().unwrap(), t);
        }
        assert!("int8"
            .parse::<EmbeddingType>()
            .unwrap_err()
            .to_string()
            .contains("\"int8\""));
    }
}
