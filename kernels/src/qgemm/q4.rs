//! 4- and 5-bit weights as GGUF stores them (Q4_0, Q4_1, Q4_K, Q5_0, Q5_1, Q5_K), repacked at
//! load for the int8 product without widening them: each block of 32 values of a column is 32
//! unsigned values `u` (4 bits, or 5 with the fifth bits kept apart) with one f32 scale `s` and
//! an offset, which the formats give exactly:
//! - Q4_0, Q5_0: value = s·(u - 8) or s·(u - 16), s = d (the f16 `d` widened): an integer offset;
//! - Q4_1, Q5_1: value = s·u + m, s = d and m the block's f16 minimum;
//! - Q4_K, Q5_K: value = s·u + m, per sub-block of 32 s = d · its 6-bit scale and m = -dmin ·
//!   its 6-bit minimum (products of an f16 and a 6-bit integer: exact in f32).
//!
//! The product of an activation block (int8 `a`, scale `d_a`, sum `Σa`) with a weight block is
//! `d_a·s·(Σ u·a + o·Σa) + m·d_a·Σa` (o the integer offset; m = 0 with one); every path computes
//! it as the reference does: per block the exact integer sum `i = Σ u·a + o·Σa`, then `sum =
//! fma(i, d_a·s, sum)` and, where the format has float offsets, `sum = fma(m, d_a·Σa, sum)` with
//! the activations' `d_a·Σa` as they keep it. That is llama.cpp's arithmetic: for Q4_0 `Σ (u -
//! 8)·a` exactly, times `d·d_a`; for Q4_1 and Q5_1 `d_a·Σa` rounded to f16 as its `block_q8_1`
//! stores it (with it unrounded, log-probabilities of the tiny Q4_1 fixtures were 5e-2 to 7e-2
//! from llama.cpp's; rounded, as close as Q8_0's); for the K-quants activations per 256 values
//! (`block_q8_K`, `super::pack::Activations`), whose `Σ sc·Σ u·a` and `Σ m·Σa` are its own.
//!
//! Layouts, two values per byte (low nibble, then high), 16 bytes per column block:
//! - `Tiles`: byte `(j / 4)·64 + column·4 + j % 4` holds values j (low) and j + 16 (high) of
//!   its column, j < 16, so one 64-byte load gives, after a mask and a shift, group g and group
//!   g + 4 of sixteen columns, as `vpdpbusd` multiplies them;
//! - `Quads`: byte `column·16 + j` holds values j (low) and j + 16 (high), GGUF's own order
//!   within a block, which AVX2 widens to 32 bytes in order.
//!
//! The fifth bits of 5-bit values take 4 bytes per column block more, as [`fifth_bit`] places
//! them for each layout.

use super::pack::{gguf_row_bytes, Activations, Layout, SUPER_BLOCK};
use super::{QgemmError, BLOCK};

/// The GGUF formats these weights are read from: 4-bit, and 5-bit with the fifth bits apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Q4Format {
    Q4_0,
    Q4_1,
    Q4K,
    Q5_0,
    Q5_1,
    Q5K,
}

impl Q4Format {
    /// Values and bytes of one GGUF block.
    const fn block(self) -> (usize, usize) {
        match self {
            Q4Format::Q4_0 => (32, 18),
            Q4Format::Q4_1 => (32, 20),
            Q4Format::Q4K => (256, 144),
            Q4Format::Q5_0 => (32, 22),
            Q4Format::Q5_1 => (32, 24),
            Q4Format::Q5K => (256, 176),
        }
    }

    /// Whether values have a fifth bit.
    const fn five_bits(self) -> bool {
        matches!(self, Q4Format::Q5_0 | Q4Format::Q5_1 | Q4Format::Q5K)
    }

    /// The integer offset of every value (Q4_0's -8, Q5_0's -16).
    const fn int_offset(self) -> i32 {
        match self {
            Q4Format::Q4_0 => -8,
            Q4Format::Q5_0 => -16,
            _ => 0,
        }
    }
}

/// Bytes of one column block (32 values, two per byte).
pub(super) const BLOCK_BYTES: usize = BLOCK / 2;

/// A linear layer's 4-bit weights with `n` outputs and `k` inputs, repacked.
#[derive(Debug, Clone)]
pub struct Q4Weights {
    pub(super) n: usize,
    pub(super) k: usize,
    layout: Layout,
    /// `[group of columns][block][width × 16 bytes in the layout's order]`; columns past `n`
    /// are zero.
    nibbles: Vec<u8>,
    /// `[group][block][width × 4 bytes]`: the fifth bits of 5-bit values (empty for 4-bit), as
    /// [`fifth_bit`] places them.
    fifth: Vec<u8>,
    /// `[group][block][column of the group]`.
    scales: Vec<f32>,
    /// `[group][block][column of the group]` (zero without float offsets).
    offsets: Vec<f32>,
    /// The integer offset `o` of every value (-8 for Q4_0, else 0).
    int_offset: i32,
    /// Whether `offsets` apply (Q4_1, Q4_K).
    float_offsets: bool,
    /// How the activations are quantized (per super-block for Q4_K).
    activations: Activations,
}

/// One group of columns, as the kernels read it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Q4Group<'a> {
    pub nibbles: &'a [u8],
    /// The fifth bits (empty for 4-bit values).
    pub fifth: &'a [u8],
    pub scales: &'a [f32],
    pub offsets: &'a [f32],
    pub int_offset: i32,
    pub float_offsets: bool,
}

/// One 32-value block of a column: its values (0..=15), scale and offset.
type ColumnBlock = ([u8; BLOCK], f32, f32);

pub(super) fn f16_at(bytes: &[u8], at: usize) -> f32 {
    half::f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

/// Q4_K's 6-bit scale and minimum of sub-block `j` (0..8) from its 12 packed bytes.
pub(super) fn q4k_scale_min(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Q5_0's and Q5_1's 32 values from their fifth bits `qh` (bit j for value j) and nibbles `qs`
/// (value j low, j + 16 high).
fn q5_values(qh: &[u8], qs: &[u8]) -> [u8; BLOCK] {
    let qh = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
    std::array::from_fn(|j| {
        let low = if j < 16 {
            qs[j] & 0x0F
        } else {
            qs[j - 16] >> 4
        };
        low | ((((qh >> j) & 1) as u8) << 4)
    })
}

/// Q4_K's and Q5_K's eight 32-value blocks: sub-block `sub` is the low (even) or high (odd)
/// nibbles of `qs[32·(sub/2)..][..32]`, with Q5_K's fifth bit `sub` of each `qh[l]`.
fn k_blocks(raw: &[u8], qh: Option<&[u8]>, qs: &[u8]) -> Vec<ColumnBlock> {
    let (d, dmin, scales) = (f16_at(raw, 0), f16_at(raw, 2), &raw[4..16]);
    (0..8)
        .map(|sub| {
            let (sc, mn) = q4k_scale_min(sub, scales);
            let bytes = &qs[(sub / 2) * 32..][..32];
            let shift = 4 * (sub % 2);
            let values = std::array::from_fn(|l| {
                let high = qh.map_or(0, |qh| (qh[l] >> sub) & 1);
                ((bytes[l] >> shift) & 0x0F) | (high << 4)
            });
            (values, d * f32::from(sc), -(dmin * f32::from(mn)))
        })
        .collect()
}

/// The 32-value blocks of one GGUF block of `format`, in order.
fn gguf_blocks(format: Q4Format, raw: &[u8]) -> Vec<ColumnBlock> {
    let split = |qs: &[u8]| -> [u8; BLOCK] {
        std::array::from_fn(|j| {
            if j < 16 {
                qs[j] & 0x0F
            } else {
                qs[j - 16] >> 4
            }
        })
    };
    match format {
        Q4Format::Q4_0 => vec![(split(&raw[2..18]), f16_at(raw, 0), 0.0)],
        Q4Format::Q4_1 => vec![(split(&raw[4..20]), f16_at(raw, 0), f16_at(raw, 2))],
        Q4Format::Q5_0 => vec![(q5_values(&raw[2..6], &raw[6..22]), f16_at(raw, 0), 0.0)],
        Q4Format::Q5_1 => vec![(
            q5_values(&raw[4..8], &raw[8..24]),
            f16_at(raw, 0),
            f16_at(raw, 2),
        )],
        Q4Format::Q4K => k_blocks(raw, None, &raw[16..144]),
        Q4Format::Q5K => k_blocks(raw, Some(&raw[16..48]), &raw[48..176]),
    }
}

impl Q4Weights {
    /// Repacks a GGUF tensor of `format`, `[n, k]` (one row of `k` values per output), in
    /// `layout`. Every value is kept exactly.
    pub fn from_gguf(
        layout: Layout,
        format: Q4Format,
        raw: &[u8],
        n: usize,
        k: usize,
    ) -> Result<Self, QgemmError> {
        let (per_block, block_bytes) = format.block();
        let row_bytes = gguf_row_bytes(raw, (n, k), format.block(), "the 4- or 5-bit weight")?;
        let bits = (format.int_offset(), format.five_bits());
        let mut weights = Self::from_columns(layout, (n, k), bits, |col| {
            raw[col * row_bytes..(col + 1) * row_bytes]
                .chunks_exact(block_bytes)
                .flat_map(|b| gguf_blocks(format, b))
                .collect()
        });
        if per_block == SUPER_BLOCK {
            weights.activations = Activations::SuperBlocks;
        }
        Ok(weights)
    }

    /// Packs columns given as their 32-value blocks (`k / 32` of them each): values (below 16,
    /// or with `five_bits` below 32), scale and float offset; with `int_offset` ≠ 0 the float
    /// offsets must be 0 and are not applied.
    pub(super) fn from_columns(
        layout: Layout,
        (n, k): (usize, usize),
        (int_offset, five_bits): (i32, bool),
        column: impl Fn(usize) -> Vec<ColumnBlock>,
    ) -> Self {
        let (width, blocks) = (layout.width(), k / BLOCK);
        let cells = n.div_ceil(width) * blocks * width;
        let mut nibbles = vec![0u8; cells * BLOCK_BYTES];
        let mut fifth = vec![0u8; if five_bits { cells * 4 } else { 0 }];
        let mut scales = vec![0f32; cells];
        let mut offsets = vec![0f32; cells];
        for col in 0..n {
            let (group, c) = (col / width, col % width);
            for (b, (values, s, m)) in column(col).into_iter().enumerate() {
                let at = (group * blocks + b) * width;
                scales[at + c] = s;
                offsets[at + c] = m;
                for j in 0..BLOCK_BYTES {
                    nibbles[at * BLOCK_BYTES + byte_offset(layout, c, j)] =
                        (values[j] & 0x0F) | (values[j + BLOCK_BYTES] << 4);
                }
                if five_bits {
                    for (j, v) in values.iter().enumerate() {
                        let (byte, bit) = fifth_bit(layout, c, j);
                        fifth[at * 4 + byte] |= ((v >> 4) & 1) << bit;
                    }
                }
            }
        }
        Self {
            n,
            k,
            layout,
            nibbles,
            fifth,
            scales,
            offsets,
            int_offset,
            float_offsets: int_offset == 0,
            activations: Activations::Blocks,
        }
    }

    /// How the activations multiplied by these weights are quantized.
    pub(super) fn activations(&self) -> Activations {
        self.activations
    }

    pub fn outputs(&self) -> usize {
        self.n
    }

    pub fn inputs(&self) -> usize {
        self.k
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    pub(super) fn blocks(&self) -> usize {
        self.k / BLOCK
    }

    /// Groups of `layout().width()` columns.
    pub(super) fn groups(&self) -> usize {
        self.n.div_ceil(self.layout.width())
    }

    /// Column group `g`.
    pub(super) fn group(&self, g: usize) -> Q4Group<'_> {
        let per = self.blocks() * self.layout.width();
        Q4Group {
            nibbles: &self.nibbles[g * per * BLOCK_BYTES..(g + 1) * per * BLOCK_BYTES],
            fifth: self
                .fifth
                .get(g * per * 4..(g + 1) * per * 4)
                .unwrap_or(&[]),
            scales: &self.scales[g * per..(g + 1) * per],
            offsets: &self.offsets[g * per..(g + 1) * per],
            int_offset: self.int_offset,
            float_offsets: self.float_offsets,
        }
    }

    /// The integer offset of every value, and whether the float offsets apply.
    pub(super) fn offset_kind(&self) -> (i32, bool) {
        (self.int_offset, self.float_offsets)
    }

    /// Block `b` of column `col` (below `outputs()`): its values, scale and float offset.
    pub(super) fn column_block(&self, col: usize, b: usize) -> ColumnBlock {
        let width = self.layout.width();
        let at = ((col / width) * self.blocks() + b) * width;
        let c = col % width;
        let mut values = [0u8; BLOCK];
        for j in 0..BLOCK_BYTES {
            let byte = self.nibbles[at * BLOCK_BYTES + byte_offset(self.layout, c, j)];
            values[j] = byte & 0x0F;
            values[j + BLOCK_BYTES] = byte >> 4;
        }
        if !self.fifth.is_empty() {
            for (j, v) in values.iter_mut().enumerate() {
                let (byte, bit) = fifth_bit(self.layout, c, j);
                *v |= ((self.fifth[at * 4 + byte] >> bit) & 1) << 4;
            }
        }
        (values, self.scales[at + c], self.offsets[at + c])
    }
}

/// Where the byte holding values j and j + 16 (j < 16) of `column` goes within its group's
/// block (`width × 16` bytes).
fn byte_offset(layout: Layout, column: usize, j: usize) -> usize {
    match layout {
        Layout::Quads => column * BLOCK_BYTES + j,
        Layout::Tiles => (j / 4) * layout.width() * 4 + column * 4 + j % 4,
    }
}

/// Where the fifth bit of value j (< 32) of `column` goes within its group's block of fifth
/// bits (`width × 4` bytes): the byte and the bit.
/// - `Tiles`: for each group g of four (0..4) a 64-bit mask of the sixteen columns' values
///   4g..4g+4 (bit 4·column + j % 4) at byte 16g, then one of their values 16 + 4g.. at byte
///   16g + 8: the lanes of the 64-byte load of low and of high nibbles, which a masked add
///   completes;
/// - `Quads`: each column's 32 bits in order (GGUF's own `qh`), at byte 4·column.
pub(super) fn fifth_bit(layout: Layout, column: usize, j: usize) -> (usize, usize) {
    match layout {
        Layout::Quads => (column * 4 + j / 8, j % 8),
        Layout::Tiles => {
            let (high, j) = (j / 16, j % 16);
            let lane = column * 4 + j % 4;
            ((j / 4) * 16 + high * 8 + lane / 8, lane % 8)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tensor_of_the_wrong_size_is_refused() {
        let err = Q4Weights::from_gguf(Layout::Tiles, Q4Format::Q4K, &[0; 143], 1, 256);
        assert!(matches!(err, Err(QgemmError::Length { expected: 144, .. })));
        let err = Q4Weights::from_gguf(Layout::Tiles, Q4Format::Q4K, &[0; 144], 1, 64);
        assert!(matches!(err, Err(QgemmError::InnerDimension { k: 64, .. })));
    }
}
