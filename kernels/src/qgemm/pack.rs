//! The operands of the int8 product: weights quantized and repacked once at load, in the layout
//! the kernel that reads them walks in order, and activation rows quantized at each call.

use super::{QgemmError, BLOCK};

/// Values per K-quant super-block (GGUF's `QK_K`).
pub const SUPER_BLOCK: usize = 256;

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

/// Quantizes one super-block of 256 as llama.cpp's `quantize_row_q8_K_ref` does: values
/// `nearest_even(127 / max|x| · x)`, scale `1 / (127 / max|x|)` in f32. (llama.cpp divides by the
/// signed value of largest magnitude, which negates both the values and the scale where it is
/// positive: the same products, bit for bit.)
pub(super) fn quantize_super_block(x: &[f32], out: &mut [i8]) -> f32 {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    if amax == 0.0 {
        out.fill(0);
        return 0.0;
    }
    let iscale = 127.0 / amax;
    for (q, v) in out.iter_mut().zip(x) {
        *q = nearest_even(iscale * v).min(127) as i8;
    }
    1.0 / iscale
}

/// `x` rounded to the nearest integer, ties to even, for |x| < 2²²: ggml's `nearest_int` (the
/// sum with 1.5·2²³ leaves the rounded value in the low mantissa bits).
pub(super) fn nearest_even(x: f32) -> i32 {
    ((x + 12_582_912.0).to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

/// Each block of 32 quants summed.
fn block_sums(quants: &[i8]) -> Vec<i32> {
    quants
        .chunks(BLOCK)
        .map(|b| b.iter().map(|q| i32::from(*q)).sum())
        .collect()
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
        return Err(QgemmError::InnerDimension { k, multiple: BLOCK });
    }
    Ok(())
}

/// The bytes of one row of a GGUF tensor `[n, k]` stored as `raw` in blocks of `per_block` values
/// and `block_bytes` bytes, once `k` and `raw`'s length are checked (`what` names the tensor in
/// the error).
pub(super) fn gguf_row_bytes(
    raw: &[u8],
    (n, k): (usize, usize),
    (per_block, block_bytes): (usize, usize),
    what: &'static str,
) -> Result<usize, QgemmError> {
    check_inner(k)?;
    if !k.is_multiple_of(per_block) {
        return Err(QgemmError::InnerDimension {
            k,
            multiple: per_block,
        });
    }
    let row_bytes = k / per_block * block_bytes;
    if raw.len() != n * row_bytes {
        return Err(QgemmError::Length {
            what,
            got: raw.len(),
            expected: n * row_bytes,
        });
    }
    Ok(row_bytes)
}

/// How the activations of a product are quantized: as llama.cpp pairs them with the weights'
/// format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activations {
    /// Per block of 32, scale max|x| / 127 rounded to f16, values rounded half away from zero
    /// (`block_q8_0`, and `block_q8_1`'s `d·Σa` rounded to f16): for Q8_0, Q4_0, Q4_1, Q5_0 and
    /// Q5_1 weights.
    Blocks,
    /// Per super-block of 256, f32 scale `1 / (127 / max|x|)`, values rounded half to even
    /// (`block_q8_K`): for the K-quants, whose integer sums then equal llama.cpp's.
    SuperBlocks,
}

/// One 32-value block of a column of 8-bit weights: values, scale and the integer scales of its
/// two halves of 16 (`[1, 1]` without).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Block8 {
    pub values: [i8; BLOCK],
    pub scale: f32,
    pub halves: [i8; 2],
}

/// What a layer's 8-bit weights carry beyond values and scales.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Extras {
    /// An integer scale per half block of 16 (Q6_K).
    pub halves: bool,
    pub activations: Activations,
}

impl Extras {
    pub(super) const PLAIN: Extras = Extras {
        halves: false,
        activations: Activations::Blocks,
    };
}

/// The weights of a linear layer with `n` outputs and `k` inputs, repacked: values of up to 8
/// bits (GGUF's Q8_0; Q6_K widened to a byte, `super::wide`).
#[derive(Debug, Clone)]
pub struct Q8Weights {
    pub(super) n: usize,
    pub(super) k: usize,
    layout: Layout,
    extras: Extras,
    /// `[group of columns][block][width × BLOCK in the layout's order]`; columns past `n` are
    /// zero.
    quants: Vec<i8>,
    /// `[group][block][column of the group]`.
    scales: Vec<f32>,
    /// `Tiles` only: `[group][block][column]` the block's values summed (|sum| ≤ 32·127), or
    /// with halves `[group][block][half][column]` each half's; the kernel multiplies by 128.
    sums: Vec<i16>,
    /// `[group][block][half][column]` the halves' integer scales (empty without).
    halves: Vec<i8>,
}

/// One group of columns as the kernels read it (empty slices for what the weights lack).
#[derive(Debug, Clone, Copy)]
pub(super) struct Group<'a> {
    pub quants: &'a [i8],
    pub scales: &'a [f32],
    pub sums: &'a [i16],
    pub halves: &'a [i8],
}

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
        Ok(Self::from_columns(layout, (n, k), Extras::PLAIN, |col| {
            w[col * k..(col + 1) * k]
                .chunks_exact(BLOCK)
                .map(|x| {
                    let mut values = [0i8; BLOCK];
                    let scale = quantize_block(x, &mut values);
                    Block8 {
                        values,
                        scale,
                        halves: [1, 1],
                    }
                })
                .collect()
        }))
    }

    /// Packs columns given as their `k / 32` blocks.
    pub(super) fn from_columns(
        layout: Layout,
        (n, k): (usize, usize),
        extras: Extras,
        column: impl Fn(usize) -> Vec<Block8>,
    ) -> Self {
        let (width, blocks) = (layout.width(), k / BLOCK);
        let cells = n.div_ceil(width) * blocks * width;
        let per_cell = |on: bool, per: usize| if on { cells * per } else { 0 };
        let halves_per = if extras.halves { 2 } else { 1 };
        let mut weights = Self {
            n,
            k,
            layout,
            extras,
            quants: vec![0; cells * BLOCK],
            scales: vec![0.0; cells],
            sums: vec![0; per_cell(layout == Layout::Tiles, halves_per)],
            halves: vec![0; per_cell(extras.halves, 2)],
        };
        for col in 0..n {
            let (group, c) = (col / width, col % width);
            for (b, block) in column(col).into_iter().enumerate() {
                let at = (group * blocks + b) * width;
                weights.scales[at + c] = block.scale;
                for (j, q) in block.values.iter().enumerate() {
                    weights.quants[at * BLOCK + layout.offset(c, j)] = *q;
                }
                let sum = |values: &[i8]| values.iter().map(|q| i16::from(*q)).sum::<i16>();
                if extras.halves {
                    for (h, values) in block.values.chunks_exact(BLOCK / 2).enumerate() {
                        let cell = (at * 2) + h * width + c;
                        weights.halves[cell] = block.halves[h];
                        if let Some(s) = weights.sums.get_mut(cell) {
                            *s = sum(values);
                        }
                    }
                } else if let Some(s) = weights.sums.get_mut(at + c) {
                    *s = sum(&block.values);
                }
            }
        }
        weights
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

    pub(super) fn extras(&self) -> Extras {
        self.extras
    }

    pub(super) fn blocks(&self) -> usize {
        self.k / BLOCK
    }

    /// Groups of `layout().width()` columns.
    pub(super) fn groups(&self) -> usize {
        self.n.div_ceil(self.layout.width())
    }

    /// Column group `g`.
    pub(super) fn group(&self, g: usize) -> Group<'_> {
        let per = self.blocks() * self.layout.width();
        fn part<T>(v: &[T], g: usize, per: usize) -> &[T] {
            v.get(g * per..(g + 1) * per).unwrap_or(&[])
        }
        Group {
            quants: &self.quants[g * per * BLOCK..(g + 1) * per * BLOCK],
            scales: &self.scales[g * per..(g + 1) * per],
            sums: part(&self.sums, g, per * if self.extras.halves { 2 } else { 1 }),
            halves: part(&self.halves, g, per * 2),
        }
    }

    /// Block `b` of column `col` (which must be below `outputs()`).
    pub fn column_block(&self, col: usize, b: usize) -> Block8 {
        let width = self.layout.width();
        let at = ((col / width) * self.blocks() + b) * width;
        let c = col % width;
        let mut values = [0i8; BLOCK];
        for (j, q) in values.iter_mut().enumerate() {
            *q = self.quants[at * BLOCK + self.layout.offset(c, j)];
        }
        let half = |h: usize| {
            self.halves
                .get(at * 2 + h * width + c)
                .copied()
                .unwrap_or(1)
        };
        Block8 {
            values,
            scale: self.scales[at + c],
            halves: [half(0), half(1)],
        }
    }
}

/// Activation rows quantized per block (or super-block), with the forms the SIMD paths
/// multiply.
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
    /// `[row][block]`: the block's scale × its sum, what weights' float offsets multiply: per
    /// block of 32 the scale before rounding, the product rounded to f16, as llama.cpp's
    /// `block_q8_1` keeps it; per super-block in f32.
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
    /// Quantizes `x`, `[m, k]` row-major, per block of 32 ([`Activations::Blocks`]).
    pub fn quantize(x: &[f32], k: usize) -> Result<Self, QgemmError> {
        Self::quantize_for(x, k, Activations::Blocks)
    }

    /// Quantizes `x`, `[m, k]` row-major, as `activations` says. Every block of 32 keeps its
    /// scale (a super-block's scale for each of its eight blocks), sum and offset sum.
    pub fn quantize_for(x: &[f32], k: usize, activations: Activations) -> Result<Self, QgemmError> {
        check_inner(k)?;
        if activations == Activations::SuperBlocks && !k.is_multiple_of(SUPER_BLOCK) {
            return Err(QgemmError::InnerDimension {
                k,
                multiple: SUPER_BLOCK,
            });
        }
        if !x.len().is_multiple_of(k) {
            return Err(QgemmError::Length {
                what: "the input",
                got: x.len(),
                expected: x.len() / k * k,
            });
        }
        let mut quants = vec![0i8; x.len()];
        let f16 = |v: f32| half::f16::from_f32(v).to_f32();
        let sums: Vec<i32>;
        let (scales, offset_sums): (Vec<f32>, Vec<f32>) = match activations {
            Activations::Blocks => {
                let exact_scales: Vec<f32> = x
                    .chunks(BLOCK)
                    .zip(quants.chunks_mut(BLOCK))
                    .map(|(block, out)| quantize_block(block, out))
                    .collect();
                sums = block_sums(&quants);
                // Each block's scale rounded to f16, as llama.cpp's (and candle's) `block_q8_0`
                // stores it: the products then equal theirs (log-probabilities of whole models
                // within 2e-6 of llama.cpp's, jobs/tests/llama_cpp_parity.rs; with f32 scales
                // they were up to 0.05 apart on the tiny fixtures).
                let scales = exact_scales.iter().map(|d| f16(*d)).collect();
                let offset_sums = exact_scales
                    .iter()
                    .zip(&sums)
                    .map(|(d, sum)| f16(d * *sum as f32))
                    .collect();
                (scales, offset_sums)
            }
            Activations::SuperBlocks => {
                let scales: Vec<f32> = x
                    .chunks(SUPER_BLOCK)
                    .zip(quants.chunks_mut(SUPER_BLOCK))
                    .flat_map(|(block, out)| {
                        [quantize_super_block(block, out); SUPER_BLOCK / BLOCK]
                    })
                    .collect();
                sums = block_sums(&quants);
                let offset_sums = scales
                    .iter()
                    .zip(&sums)
                    .map(|(d, sum)| d * *sum as f32)
                    .collect();
                (scales, offset_sums)
            }
        };
        let magnitudes = quants.iter().map(|q| q.unsigned_abs()).collect();
        let biased = quants.iter().map(|q| (*q as u8) ^ 0x80).collect();
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
