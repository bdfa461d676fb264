//! One new token's attention over a sequence's cached keys and values, on the CPU: what a decode
//! step of the GGUF forward pass runs per sequence and block (and each query of a short chunk).
//!
//! [`LayerCache`] holds a block's keys in tiles of sixteen positions, each dimension's sixteen
//! values side by side (`[tile][kv_head][head_dim][16]`), so the scores of sixteen positions are
//! sixteen lanes of one vector: one broadcast query value times one load per dimension, and no
//! horizontal sums. Values stay position after position (`[position][kv_head][head_dim]`), which
//! the weighted sum streams through. Appending a position writes its lane in place.
//!
//! Every path computes each number the same way, which [`Path::Reference`] defines, so the
//! output does not depend on the machine: a score is `fma(q[d], k[d], s)` over the dimensions
//! in order from 0, times `1 / divisor` (as candle's `scores / divisor` computes it), then the
//! soft cap; the softmax is shared code; an output is `fma(p[j], v[j], y)` over the visible
//! positions in order from 0.

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(test)]
mod tests;

use std::ops::Range;

/// Positions per key tile (the lanes of a score vector).
pub const LANES: usize = 16;

/// The attention's dimensions and score transform.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Heads {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Scores are `q·k × (1 / divisor)`, then `cap·tanh(score / cap)` with a soft cap.
    pub divisor: f32,
    pub softcap: Option<f32>,
}

/// A path of the decode attention.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// Plain Rust (`f32::mul_add`): the definition.
    Reference,
    /// AVX2 + FMA: a tile's sixteen scores in two vectors; eight outputs per vector.
    Avx2,
}

impl Path {
    /// Every path this CPU runs, the reference first and the fastest last.
    pub fn available() -> Vec<Path> {
        let mut paths = vec![Path::Reference];
        #[cfg(target_arch = "x86_64")]
        if avx2::Avx2Fma::detect().is_some() {
            paths.push(Path::Avx2);
        }
        paths
    }

    /// The fastest path this CPU runs (found once per process).
    pub fn best() -> Path {
        static BEST: std::sync::OnceLock<Path> = std::sync::OnceLock::new();
        *BEST.get_or_init(|| Path::available().last().copied().unwrap_or(Path::Reference))
    }
}

/// One block's keys and values of one sequence.
#[derive(Clone, Debug, Default)]
pub struct LayerCache {
    /// `[tile][kv_head][head_dim][LANES]`; lanes past `len` are 0.
    keys: Vec<f32>,
    /// `[position][kv_head][head_dim]`.
    values: Vec<f32>,
    /// `kv_heads × head_dim`.
    width: usize,
    len: usize,
}

impl LayerCache {
    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends positions: `keys` and `values` are `[position][kv_head][head_dim]`, `width =
    /// kv_heads × head_dim` values per position.
    pub fn append(&mut self, width: usize, keys: &[f32], values: &[f32]) {
        assert!(
            width > 0 && keys.len() == values.len() && keys.len().is_multiple_of(width),
            "keys and values of another shape"
        );
        assert!(
            self.len == 0 || self.width == width,
            "a cache of another width"
        );
        self.width = width;
        for key in keys.chunks_exact(width) {
            let (tile, lane) = (self.len / LANES, self.len % LANES);
            if lane == 0 {
                self.keys.resize((tile + 1) * width * LANES, 0.0);
            }
            let at = tile * width * LANES;
            for (i, k) in key.iter().enumerate() {
                self.keys[at + i * LANES + lane] = *k;
            }
            self.len += 1;
        }
        self.values.extend_from_slice(values);
    }

    /// Key `i` (of `width`: kv head × dimension) at `position`.
    fn key(&self, position: usize, i: usize) -> f32 {
        self.keys[(position / LANES * self.width + i) * LANES + position % LANES]
    }

    /// The keys `[kv_head][position][head_dim]`, as the prefill's matrix products read them.
    pub fn keys_by_head(&self, head_dim: usize) -> Vec<f32> {
        let kv = self.width / head_dim.max(1);
        let mut out = Vec::with_capacity(self.len * self.width);
        for g in 0..kv {
            for p in 0..self.len {
                let at = ((p / LANES) * self.width + g * head_dim) * LANES + p % LANES;
                out.extend(self.keys[at..].iter().step_by(LANES).take(head_dim));
            }
        }
        out
    }

    /// The values `[kv_head][position][head_dim]`.
    pub fn values_by_head(&self, head_dim: usize) -> Vec<f32> {
        let kv = self.width / head_dim.max(1);
        let mut out = Vec::with_capacity(self.len * self.width);
        for g in 0..kv {
            for p in 0..self.len {
                let at = p * self.width + g * head_dim;
                out.extend_from_slice(&self.values[at..at + head_dim]);
            }
        }
        out
    }
}

/// In-place softmax of `scores` (shared by every path): the largest, `exp(s - max)`, their sum
/// in order, each divided by it.
fn softmax(scores: &mut [f32]) {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for s in scores.iter_mut() {
        *s = (*s - max).exp();
        sum += *s;
    }
    for s in scores.iter_mut() {
        *s /= sum;
    }
}

/// The score transform after the dot product: the scale, then the soft cap.
fn finish(dot: f32, scale: f32, softcap: Option<f32>) -> f32 {
    let score = dot * scale;
    match softcap {
        Some(cap) => (score / cap).tanh() * cap,
        None => score,
    }
}

/// One new token's attention on `path`: `q` (`[head][head_dim]`) over the first positions of
/// `cache`, query head h reading kv head `h / (heads / kv_heads)` and seeing the positions
/// `visible` only (within the cache). Returns `[head][head_dim]`.
pub fn decode_attention(
    path: Path,
    cache: &LayerCache,
    shape: Heads,
    q: &[f32],
    visible: Range<usize>,
) -> Vec<f32> {
    let hd = shape.head_dim;
    assert!(
        shape.kv_heads > 0
            && shape.heads.is_multiple_of(shape.kv_heads)
            && q.len() == shape.heads * hd
            && cache.width == shape.kv_heads * hd
            && visible.end <= cache.len
            && !visible.is_empty(),
        "attention operands of mismatched shapes"
    );
    let rep = shape.heads / shape.kv_heads;
    let scale = 1.0 / shape.divisor;
    // The CPU's proof for the SIMD path, found once per call.
    #[cfg(target_arch = "x86_64")]
    let simd =
        (path == Path::Avx2).then(|| avx2::Avx2Fma::detect().expect("AVX2 and FMA on this CPU"));
    #[cfg(not(target_arch = "x86_64"))]
    let simd: Option<std::convert::Infallible> = {
        let _ = path; // only the reference runs here
        None
    };
    let mut out = vec![0f32; shape.heads * hd];
    let mut scores = vec![0f32; visible.len()];
    for (h, y) in out.chunks_exact_mut(hd).enumerate() {
        let (g, qh) = (h / rep, &q[h * hd..(h + 1) * hd]);
        match simd {
            #[cfg(target_arch = "x86_64")]
            Some(simd) => simd.scores(cache, g, qh, visible.clone(), &mut scores),
            _ => reference_scores(cache, g, qh, visible.clone(), &mut scores),
        }
        for s in scores.iter_mut() {
            *s = finish(*s, scale, shape.softcap);
        }
        softmax(&mut scores);
        match simd {
            #[cfg(target_arch = "x86_64")]
            Some(simd) if hd.is_multiple_of(8) => {
                simd.weighted_sum(cache, g, &scores, visible.start, y)
            }
            _ => reference_weighted_sum(cache, g, &scores, visible.start, y),
        }
    }
    out
}

/// The dot products of `q` with the keys of kv head `g` at `visible`, each `fma(q[d], k[d], s)`
/// over d from 0.
fn reference_scores(
    cache: &LayerCache,
    g: usize,
    q: &[f32],
    visible: Range<usize>,
    out: &mut [f32],
) {
    let hd = q.len();
    for (s, p) in out.iter_mut().zip(visible) {
        *s = q
            .iter()
            .enumerate()
            .fold(0.0, |s, (d, x)| x.mul_add(cache.key(p, g * hd + d), s));
    }
}

/// `y = Σ p[i] · value(first + i)` of kv head `g`, each output `fma(p, v, y)` over i from 0.
fn reference_weighted_sum(cache: &LayerCache, g: usize, p: &[f32], first: usize, y: &mut [f32]) {
    let hd = y.len();
    y.fill(0.0);
    for (i, p) in p.iter().enumerate() {
        let at = (first + i) * cache.width + g * hd;
        for (o, v) in y.iter_mut().zip(&cache.values[at..at + hd]) {
            *o = p.mul_add(*v, *o);
        }
    }
}
