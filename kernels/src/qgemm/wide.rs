//! GGUF weights of 5 and 6 bits (Q5_0, Q5_1, Q5_K, Q6_K), widened at load to a byte per value
//! in the 8-bit weights ([`Q8Weights`]), every value kept exactly:
//! - Q5_0: value = d·(u - 16), u of 5 bits: the signed byte u - 16, scale d;
//! - Q5_1: value = d·u + m: the byte u, scale d, float offset m;
//! - Q5_K: per sub-block of 32, value = d·sc·u - dmin·mn (6-bit sc and mn, as Q4_K's): the byte
//!   u, scale d·sc and offset -dmin·mn (exact in f32);
//! - Q6_K: per sub-block of 16, value = d·sc·(q - 32) with an int8 sc: the signed byte q - 32,
//!   scale d, and the two sub-blocks' sc as the block's integer half scales.
//!
//! The products are llama.cpp's: Q5_0 and Q5_1 against activations per block of 32 (`block_q8_0`,
//! `block_q8_1`), the K-quants against activations per super-block of 256 (`block_q8_K`), whose
//! integer sums `Σ sc·Σ q·a` are then exactly its own (super::reference).

use super::pack::{check_inner, Activations, Block8, Extras, Layout, Q8Weights, SUPER_BLOCK};
use super::q4::{f16_at, q4k_scale_min};
use super::{QgemmError, BLOCK};

/// The GGUF formats widened to a byte per value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WideFormat {
    Q5_0,
    Q5_1,
    Q5K,
    Q6K,
}

impl WideFormat {
    /// Values and bytes of one GGUF block.
    const fn block(self) -> (usize, usize) {
        match self {
            WideFormat::Q5_0 => (32, 22),
            WideFormat::Q5_1 => (32, 24),
            WideFormat::Q5K => (SUPER_BLOCK, 176),
            WideFormat::Q6K => (SUPER_BLOCK, 210),
        }
    }

    fn extras(self) -> Extras {
        let activations = match self {
            WideFormat::Q5_0 | WideFormat::Q5_1 => Activations::Blocks,
            WideFormat::Q5K | WideFormat::Q6K => Activations::SuperBlocks,
        };
        Extras {
            offsets: matches!(self, WideFormat::Q5_1 | WideFormat::Q5K),
            halves: self == WideFormat::Q6K,
            activations,
        }
    }
}

fn block8(values: [i8; BLOCK], scale: f32, offset: f32) -> Block8 {
    Block8 {
        values,
        scale,
        offset,
        halves: [1, 1],
    }
}

/// Q5_0's and Q5_1's 32 values from their high bits `qh` (bit j for value j) and nibbles `qs`
/// (value j low, j + 16 high), less `minus`.
fn q5_values(qh: &[u8], qs: &[u8], minus: i8) -> [i8; BLOCK] {
    let qh = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
    std::array::from_fn(|j| {
        let low = if j < 16 {
            qs[j] & 0x0F
        } else {
            qs[j - 16] >> 4
        };
        let high = ((qh >> j) & 1) as u8;
        (low | (high << 4)) as i8 - minus
    })
}

/// The 32-value blocks of one GGUF block of `format`, in order.
fn gguf_blocks(format: WideFormat, raw: &[u8]) -> Vec<Block8> {
    match format {
        WideFormat::Q5_0 => vec![block8(
            q5_values(&raw[2..6], &raw[6..22], 16),
            f16_at(raw, 0),
            0.0,
        )],
        WideFormat::Q5_1 => vec![block8(
            q5_values(&raw[4..8], &raw[8..24], 0),
            f16_at(raw, 0),
            f16_at(raw, 2),
        )],
        WideFormat::Q5K => {
            let (d, dmin) = (f16_at(raw, 0), f16_at(raw, 2));
            let (scales, qh, qs) = (&raw[4..16], &raw[16..48], &raw[48..176]);
            (0..8)
                .map(|sub| {
                    let (sc, mn) = q4k_scale_min(sub, scales);
                    // Sub-blocks 2i and 2i + 1 are the low and high nibbles of bytes 32i..32i+32;
                    // bit `sub` of qh[l] is the fifth bit of value l of sub-block `sub`.
                    let bytes = &qs[(sub / 2) * 32..][..32];
                    let shift = 4 * (sub % 2);
                    let values = std::array::from_fn(|l| {
                        let low = (bytes[l] >> shift) & 0x0F;
                        (low | (((qh[l] >> sub) & 1) << 4)) as i8
                    });
                    block8(values, d * f32::from(sc), -(dmin * f32::from(mn)))
                })
                .collect()
        }
        WideFormat::Q6K => {
            let (ql, qh, scales, d) = (
                &raw[..128],
                &raw[128..192],
                &raw[192..208],
                f16_at(raw, 208),
            );
            // Value h·128 + q·32 + l (h < 2, q < 4, l < 32): low nibble (q < 2) or high nibble
            // of ql[h·64 + (q % 2)·32 + l], high two bits at 2q of qh[h·32 + l], scale
            // sc[h·8 + q·2 + l / 16].
            (0..8)
                .map(|b| {
                    let (h, q) = (b / 4, b % 4);
                    let values = std::array::from_fn(|l| {
                        let low = (ql[h * 64 + (q % 2) * 32 + l] >> (4 * (q / 2))) & 0x0F;
                        let high = (qh[h * 32 + l] >> (2 * q)) & 3;
                        (low | (high << 4)) as i8 - 32
                    });
                    let sc = |i: usize| i32::from(scales[h * 8 + q * 2 + i] as i8);
                    Block8 {
                        values,
                        scale: d,
                        offset: 0.0,
                        halves: [sc(0), sc(1)],
                    }
                })
                .collect()
        }
    }
}

impl Q8Weights {
    /// Widens a GGUF tensor of `format`, `[n, k]` (one row of `k` values per output), in
    /// `layout`. Every value is kept exactly.
    pub fn from_gguf(
        layout: Layout,
        format: WideFormat,
        raw: &[u8],
        n: usize,
        k: usize,
    ) -> Result<Self, QgemmError> {
        check_inner(k)?;
        let (per_block, block_bytes) = format.block();
        if !k.is_multiple_of(per_block) {
            return Err(QgemmError::InnerDimension {
                k,
                multiple: per_block,
            });
        }
        let row_bytes = k / per_block * block_bytes;
        if raw.len() != n * row_bytes {
            return Err(QgemmError::Length {
                what: "the weight",
                got: raw.len(),
                expected: n * row_bytes,
            });
        }
        Ok(Self::from_columns(layout, (n, k), format.extras(), |col| {
            raw[col * row_bytes..(col + 1) * row_bytes]
                .chunks_exact(block_bytes)
                .flat_map(|b| gguf_blocks(format, b))
                .collect()
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tensor_of_the_wrong_size_is_refused() {
        let err = Q8Weights::from_gguf(Layout::Tiles, WideFormat::Q6K, &[0; 209], 1, 256);
        assert!(matches!(err, Err(QgemmError::Length { expected: 210, .. })));
        let err = Q8Weights::from_gguf(Layout::Quads, WideFormat::Q5K, &[0; 176], 1, 64);
        assert_eq!(
            err.unwrap_err(),
            QgemmError::InnerDimension {
                k: 64,
                multiple: 256
            }
        );
    }
}
