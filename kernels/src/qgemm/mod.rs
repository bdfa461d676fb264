//! Int8 matrix products on the CPU: `y = x · Wᵀ` with the weights in blocks of 32 int8 values
//! and one scale each (GGUF's Q8_0, the scales widened to f32 once at load) and the activations
//! quantized the same way, block by block of each row at each call (their scales rounded to f16
//! as GGUF's Q8_0 stores them), the way llama.cpp's `vec_dot_q8_0_q8_0` does.
//!
//! The weights are repacked at load ([`pack`]) in the layout their kernel reads in order. Every
//! path computes each (row, column) the same way, which [`reference`] defines: per block the
//! exact integer sum, then `sum = fma(isum, row scale × column scale, sum)` block after block. The
//! paths are therefore bit-identical to each other (so output does not depend on which one a
//! machine runs), and a row's result is bit-identical in any batch.
//!
//! 4- and 5-bit GGUF weights (Q4_0, Q4_1, Q4_K, Q5_0, Q5_1, Q5_K) run on the same paths without
//! being widened ([`q4`]: 32 values as nibbles with a scale and an offset per block, and the
//! fifth bits apart); Q6_K widened to a byte per value with its sub-blocks' integer scales
//! ([`wide`]). The K-quants are multiplied by activations quantized per 256 values
//! ([`Activations`]), as llama.cpp does.
//!
//! Paths: AVX-512 VNNI ([`avx512`]) and AVX2 + FMA ([`avx2`]), chosen at run time where the CPU
//! has them, and the plain Rust reference ([`Path::Reference`]).

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod pack;
pub mod peak;
mod q4;
#[cfg(test)]
mod tests;
mod wide;

use candle_core::quantized::GgmlDType;
pub use pack::{Activations, Block8, Layout, Q8Rows, Q8Weights, SUPER_BLOCK};
pub use q4::{Q4Format, Q4Weights};
use rayon::prelude::*;
pub use wide::WideFormat;

/// Values per block (and per scale).
pub const BLOCK: usize = 32;

/// A kernel implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// Plain Rust: the definition the others are checked against. Reads any layout.
    Reference,
    /// AVX2 integer dot products, a column's block at a time, with FMA accumulation.
    Avx2,
    /// AVX-512 VNNI (`vpdpbusd`): sixteen columns per instruction, four rows per weight load.
    Avx512Vnni,
}

impl Path {
    /// The fastest path this CPU runs.
    pub fn best() -> Self {
        Self::available().last().copied().unwrap_or(Path::Reference)
    }

    /// Every path this CPU runs, the reference first and the fastest last.
    pub fn available() -> Vec<Self> {
        let mut paths = vec![Path::Reference];
        #[cfg(target_arch = "x86_64")]
        {
            if avx2::Avx2::detect().is_some() {
                paths.push(Path::Avx2);
            }
            if avx512::Avx512Vnni::detect().is_some() {
                paths.push(Path::Avx512Vnni);
            }
        }
        paths
    }

    /// The layout of the weights this path reads (the reference reads any).
    pub fn layout(self) -> Layout {
        match self {
            Path::Reference | Path::Avx2 => Layout::Quads,
            Path::Avx512Vnni => Layout::Tiles,
        }
    }
}

/// The weights of one product: 8-bit or 4-bit.
#[derive(Debug, Clone, Copy)]
pub enum WeightsRef<'a> {
    Q8(&'a Q8Weights),
    Q4(&'a Q4Weights),
}

impl<'a> From<&'a Q8Weights> for WeightsRef<'a> {
    fn from(w: &'a Q8Weights) -> Self {
        WeightsRef::Q8(w)
    }
}

impl<'a> From<&'a Q4Weights> for WeightsRef<'a> {
    fn from(w: &'a Q4Weights) -> Self {
        WeightsRef::Q4(w)
    }
}

impl WeightsRef<'_> {
    /// Outputs, inputs, layout and column groups.
    fn shape(self) -> (usize, usize, Layout, usize) {
        match self {
            WeightsRef::Q8(w) => (w.n, w.k, w.layout(), w.groups()),
            WeightsRef::Q4(w) => (w.n, w.k, w.layout(), w.groups()),
        }
    }

    /// How the activations multiplied by these weights are quantized.
    pub fn activations(self) -> Activations {
        match self {
            WeightsRef::Q8(w) => w.extras().activations,
            WeightsRef::Q4(w) => w.activations(),
        }
    }
}

/// Owned weights of either width, as a model keeps them.
#[derive(Debug, Clone)]
pub enum PackedWeights {
    Q8(Q8Weights),
    Q4(Q4Weights),
}

impl PackedWeights {
    pub fn as_ref(&self) -> WeightsRef<'_> {
        match self {
            PackedWeights::Q8(w) => WeightsRef::Q8(w),
            PackedWeights::Q4(w) => WeightsRef::Q4(w),
        }
    }

    pub fn outputs(&self) -> usize {
        self.as_ref().shape().0
    }
}

/// The GGUF formats repacked as they are stored (4- and 5-bit as nibbles, Q6_K widened); Q8_0
/// goes through its values ([`Q8Weights::quantize`], exact for Q8_0).
pub const STORED_FORMATS: [GgmlDType; 7] = [
    GgmlDType::Q4_0,
    GgmlDType::Q4_1,
    GgmlDType::Q4K,
    GgmlDType::Q5_0,
    GgmlDType::Q5_1,
    GgmlDType::Q5K,
    GgmlDType::Q6K,
];

impl PackedWeights {
    /// A GGUF tensor of `dtype`, `[n, k]` (one row of `k` values per output), repacked in
    /// `layout`, every value exact; `None` for a format not in [`STORED_FORMATS`].
    pub fn from_gguf(
        layout: Layout,
        dtype: GgmlDType,
        raw: &[u8],
        (n, k): (usize, usize),
    ) -> Option<Result<Self, QgemmError>> {
        let q4 = |format| Q4Weights::from_gguf(layout, format, raw, n, k).map(Self::Q4);
        Some(match dtype {
            GgmlDType::Q4_0 => q4(Q4Format::Q4_0),
            GgmlDType::Q4_1 => q4(Q4Format::Q4_1),
            GgmlDType::Q4K => q4(Q4Format::Q4K),
            GgmlDType::Q5_0 => q4(Q4Format::Q5_0),
            GgmlDType::Q5_1 => q4(Q4Format::Q5_1),
            GgmlDType::Q5K => q4(Q4Format::Q5K),
            GgmlDType::Q6K => {
                Q8Weights::from_gguf(layout, WideFormat::Q6K, raw, n, k).map(Self::Q8)
            }
            _ => return None,
        })
    }
}

impl<'a> From<&'a PackedWeights> for WeightsRef<'a> {
    fn from(w: &'a PackedWeights) -> Self {
        w.as_ref()
    }
}

/// A path resolved for this CPU: what the product loop calls.
#[derive(Debug, Clone, Copy)]
enum Kernel {
    Reference,
    #[cfg(target_arch = "x86_64")]
    Avx2(avx2::Avx2),
    #[cfg(target_arch = "x86_64")]
    Avx512Vnni(avx512::Avx512Vnni),
}

impl Kernel {
    /// The kernel of `path`; panics when this CPU does not run it (not in [`Path::available`]).
    fn of(path: Path) -> Self {
        fn missing(path: Path) -> ! {
            panic!("{path:?} does not run on this CPU")
        }
        match path {
            Path::Reference => Kernel::Reference,
            #[cfg(target_arch = "x86_64")]
            Path::Avx2 => Kernel::Avx2(avx2::Avx2::detect().unwrap_or_else(|| missing(path))),
            #[cfg(target_arch = "x86_64")]
            Path::Avx512Vnni => {
                Kernel::Avx512Vnni(avx512::Avx512Vnni::detect().unwrap_or_else(|| missing(path)))
            }
            #[cfg(not(target_arch = "x86_64"))]
            Path::Avx2 | Path::Avx512Vnni => missing(path),
        }
    }

    /// Every row of `rows` times the columns of group `g`: `out` is `[row][width]`.
    fn group_dots(self, rows: &Q8Rows, w: WeightsRef<'_>, g: usize, out: &mut [f32]) {
        let w = match w {
            WeightsRef::Q8(w) => w,
            WeightsRef::Q4(w) => return self.q4_group_dots(rows, w, g, out),
        };
        match self {
            Kernel::Reference => reference(rows, w, g, out),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2(avx2) => {
                for (r, dots) in out.chunks_exact_mut(4).enumerate() {
                    dots.copy_from_slice(&avx2.quad_dots(&rows.row(r), w.group(g), w.extras()));
                }
            }
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Vnni(vnni) => vnni.tile_dots(rows, w.group(g), w.extras(), out),
        }
    }

    /// As [`Kernel::group_dots`], for 4-bit weights.
    fn q4_group_dots(self, rows: &Q8Rows, w: &Q4Weights, g: usize, out: &mut [f32]) {
        match self {
            Kernel::Reference => q4_reference(rows, w, g, out),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2(avx2) => {
                for (r, dots) in out.chunks_exact_mut(4).enumerate() {
                    dots.copy_from_slice(&avx2.q4_quad_dots(&rows.row(r), w.group(g)));
                }
            }
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Vnni(vnni) => vnni.q4_tile_dots(rows, w.group(g), out),
        }
    }
}

/// Why a matrix cannot be multiplied.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QgemmError {
    #[error("the inner dimension {k} is not a multiple of {multiple}")]
    InnerDimension { k: usize, multiple: usize },
    #[error("{what} holds {got} values, not {expected}")]
    Length {
        what: &'static str,
        got: usize,
        expected: usize,
    },
    #[error("the {path:?} path reads weights laid out as {wants:?}, not {got:?}")]
    Layout {
        path: Path,
        wants: Layout,
        got: Layout,
    },
}

/// The definition every path computes, in plain Rust, for column group `g`: per (row, column),
/// per block the exact integer sum (with halves, `k₀·Σ₀ + k₁·Σ₁` of the two halves' sums), then
/// `sum = fma(isum, row scale × column scale, sum)` block after block.
fn reference(rows: &Q8Rows, w: &Q8Weights, g: usize, out: &mut [f32]) {
    let (width, n, blocks) = (w.layout().width(), w.n, w.blocks());
    let halves = w.extras().halves;
    let block = |col, b| w.column_block(col, b);
    over_columns(
        rows,
        (g, width, n, blocks),
        out,
        block,
        |b, block: Block8, row, dot| {
            let (a, v) = (&row.quants[b * BLOCK..(b + 1) * BLOCK], &block.values);
            let isum = match halves {
                false => integer_dot(a, v),
                true => {
                    let (half, [k0, k1]) = (BLOCK / 2, block.halves.map(i32::from));
                    k0 * integer_dot(&a[..half], &v[..half])
                        + k1 * integer_dot(&a[half..], &v[half..])
                }
            };
            (isum as f32).mul_add(row.scales[b] * block.scale, dot)
        },
    );
}

/// What every path computes for 4- and 5-bit weights, in plain Rust, for column group `g`: per
/// (row, column), per block the exact integer sum `i = Σ u·a + o·Σa`, then `sum = fma(i, d_a·s,
/// sum)` and, with float offsets, `sum = fma(m, d_a·Σa, sum)` (the rows' offset sums: rounded to
/// f16 per block of 32, in f32 per super-block).
fn q4_reference(rows: &Q8Rows, w: &Q4Weights, g: usize, out: &mut [f32]) {
    let (width, n, blocks) = (w.layout().width(), w.n, w.blocks());
    let (int_offset, float_offsets) = w.offset_kind();
    let block = |col, b| w.column_block(col, b);
    over_columns(
        rows,
        (g, width, n, blocks),
        out,
        block,
        |b, (values, scale, offset), row, dot| {
            let a = &row.quants[b * BLOCK..(b + 1) * BLOCK];
            let isum = integer_dot(a, &values) + int_offset * row.sums[b];
            let dot = (isum as f32).mul_add(scale * row.scales[b], dot);
            match float_offsets {
                true => offset.mul_add(row.offset_sums[b], dot),
                false => dot,
            }
        },
    );
}

/// The exact integer dot product of a block of quants with a block of weight values.
fn integer_dot<T: Copy + Into<i32>>(a: &[i8], values: &[T]) -> i32 {
    a.iter()
        .zip(values)
        .map(|(x, v)| i32::from(*x) * (*v).into())
        .sum()
}

/// Fills `out` (`[row][width]`) for column group `g` of `n` columns of `blocks` blocks: each
/// column block read once (`block(column, b)`), and each (row, column) the fold of `step(b,
/// &that block, row, sum)` over the blocks from 0.
fn over_columns<B: Copy>(
    rows: &Q8Rows,
    (g, width, n, blocks): (usize, usize, usize, usize),
    out: &mut [f32],
    block: impl Fn(usize, usize) -> B,
    step: impl Fn(usize, B, &pack::Row<'_>, f32) -> f32,
) {
    out.fill(0.0);
    for c in 0..width {
        let col = g * width + c;
        if col >= n {
            break;
        }
        for b in 0..blocks {
            let weights = block(col, b);
            for (r, dots) in out.chunks_exact_mut(width).enumerate() {
                dots[c] = step(b, weights, &rows.row(r), dots[c]);
            }
        }
    }
}

/// `x · Wᵀ` for `x` `[m, k]` row-major: `[m, n]` row-major, on `path` (which must be one of
/// [`Path::available`], reading the weights' layout), the column groups split over rayon's
/// threads.
pub fn matmul_with<'a>(
    path: Path,
    x: &[f32],
    w: impl Into<WeightsRef<'a>>,
) -> Result<Vec<f32>, QgemmError> {
    let w = w.into();
    let (n, k, layout, groups) = w.shape();
    if path != Path::Reference && path.layout() != layout {
        return Err(QgemmError::Layout {
            path,
            wants: path.layout(),
            got: layout,
        });
    }
    let kernel = Kernel::of(path);
    let rows = Q8Rows::quantize_for(x, k, w.activations())?;
    let (m, width) = (rows.rows(), layout.width());
    // Enough pieces for every thread to stay busy, each a run of groups for every row.
    let pieces = (rayon::current_num_threads() * 4).min(groups).max(1);
    let per = groups.div_ceil(pieces);
    let parts: Vec<(usize, Vec<f32>)> = (0..groups)
        .step_by(per)
        .collect::<Vec<_>>()
        .into_par_iter()
        .map(|first| {
            let last = (first + per).min(groups);
            let mut out = vec![0f32; (last - first) * m * width];
            for (g, dots) in (first..last).zip(out.chunks_exact_mut(m * width)) {
                kernel.group_dots(&rows, w, g, dots);
            }
            (first, out)
        })
        .collect();
    let mut y = vec![0f32; m * n];
    for (first, out) in parts {
        for (i, dots) in out.chunks_exact(width).enumerate() {
            let (g, r) = (first + i / m, i % m);
            let cols = (n - g * width).min(width);
            y[r * n + g * width..][..cols].copy_from_slice(&dots[..cols]);
        }
    }
    Ok(y)
}

/// `x · Wᵀ` on the fastest path of this CPU (found once per process) that reads the weights'
/// layout.
pub fn matmul<'a>(x: &[f32], w: impl Into<WeightsRef<'a>>) -> Result<Vec<f32>, QgemmError> {
    static BEST: std::sync::OnceLock<Path> = std::sync::OnceLock::new();
    let best = *BEST.get_or_init(Path::best);
    let w = w.into();
    let layout = w.shape().2;
    let path = if best.layout() == layout {
        best
    } else {
        Path::available()
            .into_iter()
            .rev()
            .find(|p| p.layout() == layout)
            .unwrap_or(Path::Reference)
    };
    matmul_with(path, x, w)
}
