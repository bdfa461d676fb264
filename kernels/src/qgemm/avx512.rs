//! The AVX-512 VNNI path of the int8 matrix product, on [`Layout::Tiles`](super::Layout) weights.
//!
//! `vpdpbusd` multiplies unsigned bytes by signed bytes and adds each lane's four products to
//! its i32. The weights (signed) come sixteen columns at a time, each lane one column's group
//! of four values; the activations are made unsigned by adding 128 (`Q8Rows`'s biased bytes)
//! and four of them are broadcast to every lane. Eight instructions give sixteen columns' block
//! sums plus 128 × each column's block sum, which the layout keeps and one subtraction removes:
//! the exact integer sums. Those convert exactly to f32 (|sum| ≤ 32·127² < 2²⁴) and accumulate
//! with one FMA against (row scale × column scale): `super::reference`'s arithmetic, bit for
//! bit. Four rows share each weight load.

use super::pack::{Group, Q8Rows};
use super::BLOCK;
use std::arch::x86_64::*;

/// Columns per tile.
const TILE: usize = 16;
/// Rows that share a weight load.
const ROWS: usize = 4;

/// Proof that this CPU runs AVX-512F and AVX-512 VNNI: only [`Avx512Vnni::detect`] makes one.
#[derive(Debug, Clone, Copy)]
pub(super) struct Avx512Vnni(());

/// One row's operands for the kernel: biased quants and block scales.
type Operands<'a> = (&'a [u8], &'a [f32]);

impl Avx512Vnni {
    pub(super) fn detect() -> Option<Self> {
        (is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vnni"))
            .then_some(Self(()))
    }

    /// Every row of `rows` times the sixteen columns of `tile`: `out` is `[row][16]`.
    pub(super) fn tile_dots(self, rows: &Q8Rows, tile: Group<'_>, out: &mut [f32]) {
        let (w, w_scales, w_sums) = tile;
        let m = rows.rows();
        let blocks = w_scales.len() / TILE;
        assert!(
            w.len() == blocks * TILE * BLOCK
                && w_scales.len() == blocks * TILE
                && w_sums.len() == blocks * TILE
                && out.len() == m * TILE,
            "operands of mismatched sizes"
        );
        let operands = |r: usize| {
            let row = rows.row(r);
            assert!(
                row.biased.len() == blocks * BLOCK && row.scales.len() == blocks,
                "a row of another width"
            );
            (row.biased, row.scales)
        };
        let mut r = 0;
        for dots in out.chunks_exact_mut(ROWS * TILE) {
            let group: [Operands<'_>; ROWS] = std::array::from_fn(|i| operands(r + i));
            // SAFETY: `self` exists only where the CPU has AVX-512F and VNNI (`detect`), and
            // every slice holds what the kernel reads for `blocks` blocks (checked above).
            #[allow(unsafe_code)]
            unsafe {
                rows_times_tile::<ROWS>(group, tile, dots)
            };
            r += ROWS;
        }
        for dots in out
            .chunks_exact_mut(ROWS * TILE)
            .into_remainder()
            .chunks_exact_mut(TILE)
        {
            // SAFETY: as above, for one row.
            #[allow(unsafe_code)]
            unsafe {
                rows_times_tile::<1>([operands(r)], tile, dots)
            };
            r += 1;
        }
    }
}

/// `R` rows times one tile; `out` is `[R][16]`. The caller guarantees the CPU features and that
/// each row holds `blocks × 32` biased bytes and `blocks` scales, the tile `blocks × 512` values
/// and `blocks × 16` scales and sums, and `out` `R × 16` floats.
#[allow(unsafe_code)]
#[target_feature(enable = "avx512f,avx512vnni")]
unsafe fn rows_times_tile<const R: usize>(
    rows: [Operands<'_>; R],
    tile: Group<'_>,
    out: &mut [f32],
) {
    let (w, w_scales, w_sums) = tile;
    let blocks = w_scales.len() / TILE;
    let mut acc = [_mm512_setzero_ps(); R];
    for b in 0..blocks {
        let mut isum = [_mm512_setzero_si512(); R];
        for g in 0..BLOCK / 4 {
            // SAFETY: b < blocks and g < 8, so these 64 bytes lie within the tile's
            // blocks × 512 values; unaligned loads take any address.
            let wv = unsafe {
                _mm512_loadu_si512(w.as_ptr().add(b * TILE * BLOCK + g * TILE * 4).cast())
            };
            for (sum, (biased, _)) in isum.iter_mut().zip(&rows) {
                // SAFETY: bytes b·32 + 4g .. + 4 lie within the row's blocks × 32.
                let four = unsafe {
                    biased
                        .as_ptr()
                        .add(b * BLOCK + g * 4)
                        .cast::<i32>()
                        .read_unaligned()
                };
                *sum = _mm512_dpbusd_epi32(*sum, _mm512_set1_epi32(four), wv);
            }
        }
        // SAFETY: entries b·16 .. b·16 + 16 lie within the tile's blocks × 16.
        let (bias, ws) = unsafe {
            (
                _mm512_loadu_si512(w_sums.as_ptr().add(b * TILE).cast()),
                _mm512_loadu_ps(w_scales.as_ptr().add(b * TILE)),
            )
        };
        for ((a, sum), (_, scales)) in acc.iter_mut().zip(isum).zip(&rows) {
            let exact = _mm512_cvtepi32_ps(_mm512_sub_epi32(sum, bias));
            let scale = _mm512_mul_ps(ws, _mm512_set1_ps(scales[b]));
            *a = _mm512_fmadd_ps(exact, scale, *a);
        }
    }
    for (r, a) in acc.iter().enumerate() {
        // SAFETY: floats r·16 .. r·16 + 16 lie within `out`'s R × 16.
        unsafe { _mm512_storeu_ps(out.as_mut_ptr().add(r * TILE), *a) };
    }
}
