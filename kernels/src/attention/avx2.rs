//! The AVX2 + FMA path of the decode attention: a key tile's sixteen scores as two vectors of
//! eight lanes, each lane `fma(q[d], k[d], s)` over the dimensions in order; the weighted sum
//! eight outputs per vector, `fma(p, v, y)` over the positions in order: `super`'s reference
//! arithmetic, bit for bit (`f32::mul_add` is the same fused operation).

use super::{LayerCache, LANES};
use std::arch::x86_64::*;
use std::ops::Range;

/// Proof that this CPU runs AVX2 and FMA: only [`Avx2Fma::detect`] makes one.
#[derive(Clone, Copy, Debug)]
pub(super) struct Avx2Fma(());

impl Avx2Fma {
    pub(super) fn detect() -> Option<Self> {
        (is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")).then_some(Self(()))
    }

    /// The dot products of `q` with the keys of kv head `g` at `visible` into `out`.
    pub(super) fn scores(
        self,
        cache: &LayerCache,
        g: usize,
        q: &[f32],
        visible: Range<usize>,
        out: &mut [f32],
    ) {
        let hd = q.len();
        assert!(
            out.len() == visible.len()
                && visible.end <= cache.len
                && (g + 1) * hd <= cache.width
                && cache.keys.len() >= cache.len.div_ceil(LANES) * cache.width * LANES,
            "operands of mismatched sizes"
        );
        let mut lanes = [0f32; LANES];
        for tile in visible.start / LANES..visible.end.div_ceil(LANES) {
            let base = (tile * cache.width + g * hd) * LANES;
            // SAFETY: `self` exists only where the CPU has AVX2 and FMA; the tile's `hd × 16`
            // keys from `base` lie within the cache's whole tiles (checked above: the tile holds
            // a visible position, so it is below `len.div_ceil(16)`).
            #[allow(unsafe_code)]
            unsafe {
                tile_scores(&cache.keys[base..base + hd * LANES], q, &mut lanes)
            };
            for (lane, s) in lanes.iter().enumerate() {
                let p = tile * LANES + lane;
                if visible.contains(&p) {
                    out[p - visible.start] = *s;
                }
            }
        }
    }

    /// `y = Σ p[i] · value(first + i)` of kv head `g` (`y.len()` a multiple of 8).
    pub(super) fn weighted_sum(
        self,
        cache: &LayerCache,
        g: usize,
        p: &[f32],
        first: usize,
        y: &mut [f32],
    ) {
        let hd = y.len();
        assert!(
            hd.is_multiple_of(8)
                && (first + p.len()) * cache.width <= cache.values.len()
                && (g + 1) * hd <= cache.width,
            "operands of mismatched sizes"
        );
        let rows = &cache.values[first * cache.width..(first + p.len()) * cache.width];
        let mut c = 0;
        while c < hd {
            let at = g * hd + c;
            // SAFETY: `self` exists only where the CPU has AVX2 and FMA; every row of `rows` holds
            // `width` values, of which `at .. at + 32` (or `+ 8`) lie within it (checked above,
            // `at + 32 ≤ g·hd + hd ≤ width`), and `y[c..]` holds as many.
            #[allow(unsafe_code)]
            unsafe {
                if c + 32 <= hd {
                    weighted_chunk::<4>(rows, cache.width, at, p, &mut y[c..c + 32]);
                    c += 32;
                } else {
                    weighted_chunk::<1>(rows, cache.width, at, p, &mut y[c..c + 8]);
                    c += 8;
                }
            }
        }
    }
}

/// Sixteen scores of one key tile (`[dimension][16]`) with `q`: two chains of FMAs over the
/// dimensions in order. The caller guarantees the CPU features and `keys.len() = 16·q.len()`.
#[allow(unsafe_code)]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_scores(keys: &[f32], q: &[f32], out: &mut [f32; LANES]) {
    let (mut lo, mut hi) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    for (d, x) in q.iter().enumerate() {
        let x = _mm256_set1_ps(*x);
        // SAFETY: d < q.len(), so floats d·16 .. d·16 + 16 lie within `keys`.
        unsafe {
            let k = keys.as_ptr().add(d * LANES);
            lo = _mm256_fmadd_ps(x, _mm256_loadu_ps(k), lo);
            hi = _mm256_fmadd_ps(x, _mm256_loadu_ps(k.add(8)), hi);
        }
    }
    // SAFETY: `out` holds sixteen floats.
    unsafe {
        _mm256_storeu_ps(out.as_mut_ptr(), lo);
        _mm256_storeu_ps(out.as_mut_ptr().add(8), hi);
    }
}

/// `N × 8` outputs of the weighted sum: `y[..] = Σ_i p[i] · rows[i·width + at ..]`, each a chain
/// of FMAs over i in order. The caller guarantees the CPU features, `y.len() = 8N`, and that
/// `at + 8N ≤ width` with `rows` holding `p.len()` rows of `width`.
#[allow(unsafe_code)]
#[target_feature(enable = "avx2,fma")]
unsafe fn weighted_chunk<const N: usize>(
    rows: &[f32],
    width: usize,
    at: usize,
    p: &[f32],
    y: &mut [f32],
) {
    let mut acc = [_mm256_setzero_ps(); N];
    for (i, p) in p.iter().enumerate() {
        let p = _mm256_set1_ps(*p);
        // SAFETY: row i's floats at .. at + 8N lie within `rows` (the caller's guarantee).
        let row = unsafe { rows.as_ptr().add(i * width + at) };
        for (c, a) in acc.iter_mut().enumerate() {
            // SAFETY: c < N: within the row's 8N floats from `at`.
            *a = _mm256_fmadd_ps(p, unsafe { _mm256_loadu_ps(row.add(c * 8)) }, *a);
        }
    }
    for (c, a) in acc.iter().enumerate() {
        // SAFETY: `y` holds 8N floats.
        unsafe { _mm256_storeu_ps(y.as_mut_ptr().add(c * 8), *a) };
    }
}
