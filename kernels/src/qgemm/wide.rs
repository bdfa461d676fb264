//! GGUF's Q6_K weights widened at load to a byte per value in the 8-bit weights
//! ([`Q8Weights`]), every value exact: per sub-block of 16, value = d·sc·(q - 32) with an int8
//! sc, kept as the signed byte q - 32, the super-block's scale d, and the two sub-blocks' sc as
//! the block's integer half scales. (5-bit weights stay nibbles with their fifth bits apart,
//! `super::q4`.)
//!
//! The product is llama.cpp's: against activations per super-block of 256 (`block_q8_K`), whose
//! integer sums `Σ sc·Σ q·a` are then exactly its own (super::reference).

use super::pack::{gguf_row_bytes, Activations, Block8, Extras, Layout, Q8Weights, SUPER_BLOCK};
use super::q4::f16_at;
use super::QgemmError;

/// The GGUF formats widened to a byte per value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WideFormat {
    Q6K,
}

impl WideFormat {
    /// Values and bytes of one GGUF block.
    const fn block(self) -> (usize, usize) {
        match self {
            WideFormat::Q6K => (SUPER_BLOCK, 210),
        }
    }

    fn extras(self) -> Extras {
        Extras {
            halves: true,
            activations: Activations::SuperBlocks,
        }
    }
}

/// The eight 32-value blocks of one Q6_K block: value h·128 + q·32 + l (h < 2, q < 4, l < 32)
/// is the low nibble (q < 2) or high nibble of ql[h·64 + (q % 2)·32 + l] with the two bits at
/// 2q of qh[h·32 + l] above it, less 32; its scale sc[h·8 + q·2 + l / 16].
fn q6k_blocks(raw: &[u8]) -> Vec<Block8> {
    let (ql, qh, scales, d) = (
        &raw[..128],
        &raw[128..192],
        &raw[192..208],
        f16_at(raw, 208),
    );
    (0..8)
        .map(|b| {
            let (h, q) = (b / 4, b % 4);
            let values = std::array::from_fn(|l| {
                let low = (ql[h * 64 + (q % 2) * 32 + l] >> (4 * (q / 2))) & 0x0F;
                let high = (qh[h * 32 + l] >> (2 * q)) & 3;
                (low | (high << 4)) as i8 - 32
            });
            let sc = |i: usize| scales[h * 8 + q * 2 + i] as i8;
            Block8 {
                values,
                scale: d,
                halves: [sc(0), sc(1)],
            }
        })
        .collect()
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
        let block_bytes = format.block().1;
        let row_bytes = gguf_row_bytes(raw, (n, k), format.block(), "the weight")?;
        Ok(Self::from_columns(layout, (n, k), format.extras(), |col| {
            raw[col * row_bytes..(col + 1) * row_bytes]
                .chunks_exact(block_bytes)
                .flat_map(q6k_blocks)
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
        let err = Q8Weights::from_gguf(Layout::Quads, WideFormat::Q6K, &[0; 210], 1, 64);
        assert_eq!(
            err.unwrap_err(),
            QgemmError::InnerDimension {
                k: 64,
                multiple: 256
            }
        );
    }
}
