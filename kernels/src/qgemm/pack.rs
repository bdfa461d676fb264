//! The operands of the int8 product: weights quantized and repacked once at load, in the layout
//! the kernel that reads them walks in order, and activation rows quantized at each call.

use super::{QgemmError, BLOCK};

/// How a layer's weights are laid out, by the kind of kernel that reads them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Four output columns at a time, block by block, each column's 32 values side by side:
    /// `[quad][block][column][32]` (the AVX2 path, which multiplies a column's block at once).
    Quads,
    /// Sixteen output columns at a time, block by block, each block's values in eight groups of
    /// four with the sixteen columns' groups side by side: `[tile][block][group][column][4]`. One
    /// 64-byte load is group g of every column, which `vpdpbusd` multiplies by four activation
    /// bytes broadcast to every lane (the AVX-512 VNNI path). Each (block, column) also keeps
    /// 128 × the sum of its values, what the activations' +128 bias adds.
    Tiles,
}

impl Layout {
    /// Output columns packed together.
    pub const fn width(self) -> usize {
        match self {
            Layout::Quads => 4,
            Layout::Tiles => 16,
        }
    }

    /// Where value `j` of a column's block goes within its group's block (`width × 32` bytes).
    fn offset(self, column: usize, j: usize) -> usize {
        match self {
            Layout::Quads => column * BLOCK + j,
            Layout::Tiles => (j / 4) * self.width() * 4 + column * 4 + j % 4,
        }
    }
}

/// Quantizes one block: the scale is max|x| / 127 and each value rounds (half away from zero)
/// to the nearest multiple of it, so the largest maps to ±127 and none to -128.
pub(super) fn quantize_block(x: &[f32], out: &mut [i8]) -> f32 {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    for (q, v) in out.iter_mut().zip(x) {
        *q = round_half_away(v * id) as i8;
    }
    d
}

/// `x.round()` for |x| < 2²³ (and 0 for NaN) without libm's `roundf` call, which was 4% of decode
/// time: truncate, then step away from zero when the exact remainder is at least one half.
pub(super) fn round_half_away(x: f32) -> i32 {
    let t = x as i32;
    let rest = x - t as f32;
    t + i32::from(rest >= 0.5) - i32::from(rest <= -0.5)
}

pub(super) fn check_inner(k: usize) -> Result<(), QgemmError> {
    if k == 0 || !k.is_multiple_of(BLOCK) {
        return Err(QgemmError::InnerDimension { k });
    }
    Ok(())
}

/// The weights of a linear layer with `n` outputs and `k` inputs, repacked.
#[derive(Debug, Clone)]
pub struct Q8Weights {
    pub(super) n: usize,
    pub(super) k: usize,
    layout: Layout,
    /// `[group of columns][block][width × BLOCK in the layout's order]`; columns past `n` are
    /// zero.
    quants: Vec<i8>,
    /// `[group][block][column of the group]`.
    scales: Vec<f32>,
    /// `[group][block][column of the group]`: 128 × the block's values summed (`Tiles` only).
    sums: Vec<i32>,
}

/// One group of columns: its blocks, scales and (for `Tiles`) biased sums.
pub(super) type Group<'a> = (&'a [i8], &'a [f32], &'a [i32]);

impl Q8Weights {
    /// Quantizes `w`, `[n, k]` row-major (one row per output, as a linear layer's weight), laid
    /// out for the fastest path of this CPU. Q8_0 weights (values that are a multiple of their
    /// block's scale, the largest ±127 of it) come back exactly as they were.
    pub fn quantize(w: &[f32], n: usize, k: usize) -> Result<Self, QgemmError> {
        Self::quantize_as(super::Path::best().layout(), w, n, k)
    }

    /// [`Q8Weights::quantize`] in a given layout.
    pub fn quantize_as(layout: Layout, w: &[f32], n: usize, k: usize) -> Result<Self, QgemmError> {
        check_inner(k)?;
        if w.len() != n * k {
            return Err(QgemmError::Length {
                what: "the weight",
                got: w.len(),
                expected: n * k,
            });
        }
        let (width, blocks) = (layout.width(), k / BLOCK);
        let groups = n.div_ceil(width);
        let mut quants = vec![0i8; groups * blocks * width * BLOCK];
        let mut scales = vec![0f32; groups * blocks * width];
        let mut sums = vec![
            0i32;
            if layout == Layout::Tiles {
                scales.len()
            } else {
                0
            }
        ];
        let mut block = [0i8; BLOCK];
        for col in 0..n {
            let (group, c) = (col / width, col % width);
            for b in 0..blocks {
                let at = (group * blocks + b) * width;
                scales[at + c] = quantize_block(&w[col * k + b * BLOCK..][..BLOCK], &mut block);
                for (j, q) in block.iter().enumerate() {
                    quants[at * BLOCK + layout.offset(c, j)] = *q;
                }
                if let Some(sum) = sums.get_mut(at + c) {
                    *sum = 128 * block.iter().map(|q| i32::from(*q)).sum::<i32>();
                }
            }
        }
        Ok(Self {
            n,
            k,
            layout,
            quants,
            scales,
            sums,
        })
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

    /// The blocks, scales and sums of column group `g`.
    pub(super) fn group(&self, g: usize) -> Group<'_> {
        let per = self.blocks() * self.layout.width();
        let sums = if self.sums.is_empty() {
            &[][..]
        } else {
            &self.sums[g * per..(g + 1) * per]
        };
        (
            &self.quants[g * per * BLOCK..(g + 1) * per * BLOCK],
            &self.scales[g * per..(g + 1) * per],
            sums,
        )
    }

    /// Block `b` of column `col` (which must be below `outputs()`): its values and scale.
    pub(super) fn column_block(&self, col: usize, b: usize) -> ([i8; BLOCK], f32) {
        let width = self.layout.width();
        let at = ((col / width) * self.blocks() + b) * width;
        let mut out = [0i8; BLOCK];
        for (j, q) in out.iter_mut().enumerate() {
            *q = self.quants[at * BLOCK + self.layout.offset(col % width, j)];
        }
        (out, self.scales[at + col % width])
    }
}

/// Activation rows quantized per block, with the forms the SIMD paths multiply.
#[derive(Debug, Clone)]
pub struct Q8Rows {
    k: usize,
    quants: Vec<i8>,
    /// |quants| as unsigned bytes (AVX2).
    magnitudes: Vec<u8>,
    /// quants + 128 as unsigned bytes (AVX-512 VNNI).
    biased: Vec<u8>,
    /// `[row][block]`.
    scales: Vec<f32>,
    /// `[row][block]`: the block's quants summed (what Q4_0's integer offset multiplies).
    sums: Vec<i32>,
    /// `[row][block]`: the block's scale (before rounding) × its sum, rounded to f16, as
    /// llama.cpp's `block_q8_1` keeps it (what 4-bit weights' float offsets multiply).
    offset_sums: Vec<f32>,
}

/// One activation row: quants, magnitudes, biased quants, block scales, sums and offset sums.
pub(super) struct Row<'a> {
    pub quants: &'a [i8],
    pub magnitudes: &'a [u8],
    pub biased: &'a [u8],
    pub scales: &'a [f32],
    pub sums: &'a [i32],
    pub offset_sums: &'a [f32],
}

impl Q8Rows {
    /// Quantizes `x`, `[m, k]` row-major.
    pub fn quantize(x: &[f32], k: usize) -> Result<Self, QgemmError> {
        check_inner(k)?;
        if !x.len().is_multiple_of(k) {
            return Err(QgemmError::Length {
                what: "the input",
                got: x.len(),
                expected: x.len() / k * k,
            });
        }
        let mut quants = vec![0i8; x.len()];
        let exact_scales: Vec<f32> = x
            .chunks(BLOCK)
            .zip(quants.chunks_mut(BLOCK))
            .map(|(block, out)| quantize_block(block, out))
            .collect();
        let f16 = |v: f32| half::f16::from_f32(v).to_f32();
        // Each block's scale rounded to f16, as llama.cpp's (and candle's) `block_q8_0`
        // stores it: the products then equal theirs (log-probabilities of whole models
        // within 2e-6 of llama.cpp's, jobs/tests/llama_cpp_parity.rs; with f32 scales they
        // were up to 0.05 apart on the tiny fixtures).
        let scales = exact_scales.iter().map(|d| f16(*d)).collect();
        let magnitudes = quants.iter().map(|q| q.unsigned_abs()).collect();
        let biased = quants.iter().map(|q| (*q as u8) ^ 0x80).collect();
        let sums: Vec<i32> = quants
            .chunks(BLOCK)
            .map(|b| b.iter().map(|q| i32::from(*q)).sum())
            .collect();
        let offset_sums = exact_scales
            .iter()
            .zip(&sums)
            .map(|(d, sum)| f16(d * *sum as f32))
            .collect();
        Ok(Self {
            k,
            quants,
            magnitudes,
            biased,
            scales,
            sums,
            offset_sums,
        })
    }

    pub fn rows(&self) -> usize {
        self.quants.len() / self.k
    }

    /// Row `r`.
    pub(super) fn row(&self, r: usize) -> Row<'_> {
        let (k, blocks) = (self.k, self.k / BLOCK);
        Row {
            quants: &self.quants[r * k..(r + 1) * k],
            magnitudes: &self.magnitudes[r * k..(r + 1) * k],
            biased: &self.biased[r * k..(r + 1) * k],
            scales: &self.scales[r * blocks..(r + 1) * blocks],
            sums: &self.sums[r * blocks..(r + 1) * blocks],
            offset_sums: &self.offset_sums[r * blocks..(r + 1) * blocks],
        }
    }
}
