//! Int8 matrix products on the CPU: `y = x · Wᵀ` with the weights in blocks of 32 int8 values
//! and one scale each (GGUF's Q8_0, the scales widened to f32 once at load) and the activations
//! quantized the same way, block by block of each row at each call (their scales rounded to f16
//! as GGUF's Q8_0 stores them), the way llama.cpp's `vec_dot_q8_0_q8_0` does.
//!
//! The weights are repacked at load for the kernel to read in order: four output columns at a
//! time, block by block (`[column quad][block][column][32]`), with their four scales side by
//! side. Each (row, column) dot product is computed by the same sequence of operations whatever
//! the other rows of the call, so a row's result is bit-identical in any batch.
//!
//! Paths: AVX2 + FMA ([`avx2`], chosen at run time where the CPU has both) and the plain Rust
//! reference ([`Path::Reference`]), which every other path is tested against.

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(test)]
mod tests;

use rayon::prelude::*;

/// Values per block (and per scale).
pub const BLOCK: usize = 32;
/// Output columns a kernel call computes together.
const QUAD: usize = 4;

/// A kernel implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// Plain Rust: the definition the others are checked against.
    Reference,
    /// AVX2 integer dot products with FMA accumulation.
    Avx2,
}

impl Path {
    /// The fastest path this CPU runs.
    pub fn best() -> Self {
        Self::available().last().copied().unwrap_or(Path::Reference)
    }

    /// Every path this CPU runs, the reference first.
    pub fn available() -> Vec<Self> {
        let mut paths = vec![Path::Reference];
        #[cfg(target_arch = "x86_64")]
        if avx2::Avx2::detect().is_some() {
            paths.push(Path::Avx2);
        }
        paths
    }
}

/// A path resolved for this CPU: what the product loop calls.
#[derive(Debug, Clone, Copy)]
enum Kernel {
    Reference,
    #[cfg(target_arch = "x86_64")]
    Avx2(avx2::Avx2),
}

impl Kernel {
    /// The kernel of `path`; panics when this CPU does not run it (not in [`Path::available`]).
    fn of(path: Path) -> Self {
        match path {
            Path::Reference => Kernel::Reference,
            #[cfg(target_arch = "x86_64")]
            Path::Avx2 => Kernel::Avx2(
                avx2::Avx2::detect().unwrap_or_else(|| panic!("{path:?} does not run on this CPU")),
            ),
            #[cfg(not(target_arch = "x86_64"))]
            Path::Avx2 => panic!("{path:?} does not run on this CPU"),
        }
    }

    fn quad_dots(self, row: (&[i8], &[u8], &[f32]), quad: (&[i8], &[f32])) -> [f32; QUAD] {
        match self {
            Kernel::Reference => quad_reference(row, quad),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2(avx2) => avx2.quad_dots(row, quad),
        }
    }
}

/// Why a matrix cannot be multiplied.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QgemmError {
    #[error("the inner dimension {k} is not a multiple of {BLOCK}")]
    InnerDimension { k: usize },
    #[error("{what} holds {got} values, not {expected}")]
    Length {
        what: &'static str,
        got: usize,
        expected: usize,
    },
}

/// Quantizes one block: the scale is max|x| / 127 and each value rounds (half away from zero)
/// to the nearest multiple of it, so the largest maps to ±127 and none to -128.
fn quantize_block(x: &[f32], out: &mut [i8]) -> f32 {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    for (q, v) in out.iter_mut().zip(x) {
        *q = (v * id).round() as i8;
    }
    d
}

/// The weights of a linear layer with `n` outputs and `k` inputs, repacked.
#[derive(Debug, Clone)]
pub struct Q8Weights {
    n: usize,
    k: usize,
    /// `[quad][block][column of the quad][BLOCK]`; columns past `n` are zero.
    quants: Vec<i8>,
    /// `[quad][block][column of the quad]`.
    scales: Vec<f32>,
}

impl Q8Weights {
    /// Quantizes `w`, `[n, k]` row-major (one row per output, as a linear layer's weight).
    /// Q8_0 weights (values that are a multiple of their block's scale, the largest ±127 of
    /// it) come back exactly as they were.
    pub fn quantize(w: &[f32], n: usize, k: usize) -> Result<Self, QgemmError> {
        if k == 0 || !k.is_multiple_of(BLOCK) {
            return Err(QgemmError::InnerDimension { k });
        }
        if w.len() != n * k {
            return Err(QgemmError::Length {
                what: "the weight",
                got: w.len(),
                expected: n * k,
            });
        }
        let (quads, blocks) = (n.div_ceil(QUAD), k / BLOCK);
        let mut quants = vec![0i8; quads * blocks * QUAD * BLOCK];
        let mut scales = vec![0f32; quads * blocks * QUAD];
        for col in 0..n {
            let (quad, c) = (col / QUAD, col % QUAD);
            for b in 0..blocks {
                let at = (quad * blocks + b) * QUAD + c;
                scales[at] = quantize_block(
                    &w[col * k + b * BLOCK..col * k + (b + 1) * BLOCK],
                    &mut quants[at * BLOCK..(at + 1) * BLOCK],
                );
            }
        }
        Ok(Self {
            n,
            k,
            quants,
            scales,
        })
    }

    pub fn outputs(&self) -> usize {
        self.n
    }

    pub fn inputs(&self) -> usize {
        self.k
    }

    fn blocks(&self) -> usize {
        self.k / BLOCK
    }

    /// The blocks and scales of column quad `q`.
    fn quad(&self, q: usize) -> (&[i8], &[f32]) {
        let b = self.blocks();
        (
            &self.quants[q * b * QUAD * BLOCK..(q + 1) * b * QUAD * BLOCK],
            &self.scales[q * b * QUAD..(q + 1) * b * QUAD],
        )
    }
}

/// Activation rows quantized per block, with the absolute values the AVX2 path multiplies.
#[derive(Debug, Clone)]
pub struct Q8Rows {
    k: usize,
    quants: Vec<i8>,
    /// |quants| as unsigned bytes.
    magnitudes: Vec<u8>,
    /// `[row][block]`.
    scales: Vec<f32>,
}

impl Q8Rows {
    /// Quantizes `x`, `[m, k]` row-major.
    pub fn quantize(x: &[f32], k: usize) -> Result<Self, QgemmError> {
        if k == 0 || !k.is_multiple_of(BLOCK) {
            return Err(QgemmError::InnerDimension { k });
        }
        if !x.len().is_multiple_of(k) {
            return Err(QgemmError::Length {
                what: "the input",
                got: x.len(),
                expected: x.len() / k * k,
            });
        }
        let mut quants = vec![0i8; x.len()];
        let scales = x
            .chunks(BLOCK)
            .zip(quants.chunks_mut(BLOCK))
            // Each block's scale rounded to f16, as llama.cpp's (and candle's) `block_q8_0`
            // stores it: the products then equal theirs (log-probabilities of whole models
            // within 2e-6 of llama.cpp's, jobs/tests/llama_cpp_parity.rs; with f32 scales they
            // were up to 0.05 apart on the tiny fixtures).
            .map(|(block, out)| half::f16::from_f32(quantize_block(block, out)).to_f32())
            .collect();
        let magnitudes = quants.iter().map(|q| q.unsigned_abs()).collect();
        Ok(Self {
            k,
            quants,
            magnitudes,
            scales,
        })
    }

    pub fn rows(&self) -> usize {
        self.quants.len() / self.k
    }

    /// Row `r`: its quants, magnitudes and block scales.
    fn row(&self, r: usize) -> (&[i8], &[u8], &[f32]) {
        let blocks = self.k / BLOCK;
        (
            &self.quants[r * self.k..(r + 1) * self.k],
            &self.magnitudes[r * self.k..(r + 1) * self.k],
            &self.scales[r * blocks..(r + 1) * blocks],
        )
    }
}

/// The four dot products of one activation row with one column quad, in plain Rust: per block
/// the exact integer sum, then `sum += isum × (row scale × column scale)` block after block.
fn quad_reference(row: (&[i8], &[u8], &[f32]), quad: (&[i8], &[f32])) -> [f32; QUAD] {
    let (a, _, a_scales) = row;
    let (w, w_scales) = quad;
    let mut out = [0f32; QUAD];
    for (b, &da) in a_scales.iter().enumerate() {
        let a = &a[b * BLOCK..(b + 1) * BLOCK];
        for (c, o) in out.iter_mut().enumerate() {
            let at = b * QUAD + c;
            let w = &w[at * BLOCK..(at + 1) * BLOCK];
            let isum: i32 = a
                .iter()
                .zip(w)
                .map(|(x, y)| i32::from(*x) * i32::from(*y))
                .sum();
            *o += isum as f32 * (da * w_scales[at]);
        }
    }
    out
}

/// `x · Wᵀ` for `x` `[m, k]` row-major: `[m, n]` row-major, on `path` (which must be one of
/// [`Path::available`]), the column quads split over rayon's threads.
pub fn matmul_with(path: Path, x: &[f32], w: &Q8Weights) -> Result<Vec<f32>, QgemmError> {
    let kernel = Kernel::of(path);
    let rows = Q8Rows::quantize(x, w.k)?;
    let (m, n) = (rows.rows(), w.n);
    let quads = n.div_ceil(QUAD);
    // Enough pieces for every thread to stay busy, each a run of quads for every row.
    let pieces = (rayon::current_num_threads() * 4).min(quads).max(1);
    let per = quads.div_ceil(pieces);
    let parts: Vec<(usize, Vec<[f32; QUAD]>)> = (0..quads)
        .step_by(per)
        .collect::<Vec<_>>()
        .into_par_iter()
        .map(|first| {
            let last = (first + per).min(quads);
            let mut out = Vec::with_capacity((last - first) * m);
            for q in first..last {
                let quad = w.quad(q);
                for r in 0..m {
                    out.push(kernel.quad_dots(rows.row(r), quad));
                }
            }
            (first, out)
        })
        .collect();
    let mut y = vec![0f32; m * n];
    for (first, out) in parts {
        for (i, dots) in out.iter().enumerate() {
            let (q, r) = (first + i / m, i % m);
            for (c, v) in dots.iter().enumerate() {
                let col = q * QUAD + c;
                if col < n {
                    y[r * n + col] = *v;
                }
            }
        }
    }
    Ok(y)
}

/// `x · Wᵀ` on the fastest path of this CPU (found once per process).
pub fn matmul(x: &[f32], w: &Q8Weights) -> Result<Vec<f32>, QgemmError> {
    static BEST: std::sync::OnceLock<Path> = std::sync::OnceLock::new();
    matmul_with(*BEST.get_or_init(Path::best), x, w)
}
