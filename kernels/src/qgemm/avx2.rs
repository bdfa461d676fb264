//! The AVX2 + FMA path of the int8 matrix product, on [`Layout::Quads`](super::Layout) weights.
//!
//! Per block of 32: `_mm256_sign_epi8` moves the activation's signs onto the weights, so
//! `_mm256_maddubs_epi16` multiplies the activation magnitudes (unsigned) by them with no
//! saturation (|q| ≤ 127: a pair sums to at most 2·127² < 2¹⁵), `_mm256_madd_epi16` widens to
//! eight i32 partial sums per column, two rounds of `_mm256_hadd_epi32` and one add of the two
//! 128-bit halves gather the four columns' exact block sums into one vector, converted exactly to
//! f32 (|sum| ≤ 32·127² < 2²⁴) and accumulated with one FMA against the four (row scale × column
//! scale) products: `super::reference`'s arithmetic, bit for bit.

use super::pack::{Extras, Group, Row};
use super::q4::{Q4Group, BLOCK_BYTES};
use std::arch::x86_64::*;

/// Proof that this CPU runs AVX2 and FMA: only [`Avx2::detect`] makes one, so the kernel checks
/// the CPU once per product rather than once per dot product.
#[derive(Debug, Clone, Copy)]
pub(super) struct Avx2(());

impl Avx2 {
    pub(super) fn detect() -> Option<Self> {
        (is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")).then_some(Self(()))
    }

    /// The four dot products of one activation row with one column quad.
    pub(super) fn quad_dots(self, row: &Row<'_>, quad: Group<'_>, extras: Extras) -> [f32; 4] {
        let blocks = row.scales.len();
        assert!(
            row.quants.len() == blocks * 32
                && row.magnitudes.len() == blocks * 32
                && quad.quants.len() == blocks * 128
                && quad.scales.len() == blocks * 4
                && (!extras.halves || quad.halves.len() == blocks * 8),
            "operands of mismatched sizes"
        );
        // SAFETY: `self` exists only where the CPU has AVX2 and FMA (`detect`), and every slice
        // holds what the loop reads for `blocks` blocks (checked above).
        #[allow(unsafe_code)]
        unsafe {
            match extras.halves {
                false => quad_dots_avx2::<false>(row, quad),
                true => quad_dots_avx2::<true>(row, quad),
            }
        }
    }
}

/// Per block: the four columns' exact integer sums (with `HALVES`, each half's eight-lane
/// partial sums first multiplied by its integer scale: lanes 0-3 hold values 0-15, lanes 4-7
/// values 16-31), then one FMA against (column scale × row scale): `super::reference`'s
/// arithmetic.
#[allow(unsafe_code)]
#[target_feature(enable = "avx2,fma")]
unsafe fn quad_dots_avx2<const HALVES: bool>(row: &Row<'_>, quad: Group<'_>) -> [f32; 4] {
    let ones = _mm256_set1_epi16(1);
    let mut acc = _mm_setzero_ps();
    for (b, &da) in row.scales.iter().enumerate() {
        // SAFETY: b < blocks, so bytes b·32 .. b·32 + 32 of the quants and magnitudes, b·128 ..
        // b·128 + 128 of the weights, floats b·4 .. b·4 + 4 of the scales and the bytes b·8 ..
        // b·8 + 8 of the halves' scales are in bounds (the caller checked the
        // lengths); unaligned loads take any address.
        let (av, mv, wp, ws) = unsafe {
            (
                _mm256_loadu_si256(row.quants.as_ptr().add(b * 32).cast::<__m256i>()),
                _mm256_loadu_si256(row.magnitudes.as_ptr().add(b * 32).cast::<__m256i>()),
                quad.quants.as_ptr().add(b * 128),
                _mm_loadu_ps(quad.scales.as_ptr().add(b * 4)),
            )
        };
        let dot = |c: usize| {
            // SAFETY: c < 4, within the 128 bytes of this block's quad (above).
            let wv = unsafe { _mm256_loadu_si256(wp.add(c * 32).cast::<__m256i>()) };
            let p = _mm256_madd_epi16(_mm256_maddubs_epi16(mv, _mm256_sign_epi8(wv, av)), ones);
            if HALVES {
                // SAFETY: as above: the halves' scales of column c, block b.
                let (k0, k1) = unsafe {
                    let at = quad.halves.as_ptr().add(b * 8 + c);
                    (i32::from(*at), i32::from(*at.add(4)))
                };
                _mm256_mullo_epi32(p, _mm256_set_m128i(_mm_set1_epi32(k1), _mm_set1_epi32(k0)))
            } else {
                p
            }
        };
        let (p0, p1, p2, p3) = (dot(0), dot(1), dot(2), dot(3));
        let halves = _mm256_hadd_epi32(_mm256_hadd_epi32(p0, p1), _mm256_hadd_epi32(p2, p3));
        let sums = _mm_add_epi32(
            _mm256_castsi256_si128(halves),
            _mm256_extracti128_si256(halves, 1),
        );
        let scales = _mm_mul_ps(ws, _mm_set1_ps(da));
        acc = _mm_fmadd_ps(_mm_cvtepi32_ps(sums), scales, acc);
    }
    let mut out = [0f32; 4];
    // SAFETY: `out` holds four floats.
    unsafe { _mm_storeu_ps(out.as_mut_ptr(), acc) };
    out
}

impl Avx2 {
    /// The four dot products of one activation row with one 4-bit column quad (`super::q4`).
    pub(super) fn q4_quad_dots(self, row: &Row<'_>, quad: Q4Group<'_>) -> [f32; 4] {
        let blocks = row.scales.len();
        assert!(
            row.quants.len() == blocks * 32
                && row.sums.len() == blocks
                && row.offset_sums.len() == blocks
                && quad.nibbles.len() == blocks * 4 * BLOCK_BYTES
                && quad.scales.len() == blocks * 4
                && quad.offsets.len() == blocks * 4
                && (quad.fifth.is_empty() || quad.fifth.len() == blocks * 16),
            "operands of mismatched sizes"
        );
        // SAFETY: `self` exists only where the CPU has AVX2 and FMA (`detect`), and every slice
        // holds what the loop reads for `blocks` blocks (checked above).
        #[allow(unsafe_code)]
        unsafe {
            match quad.fifth.is_empty() {
                true => q4_quad_dots_avx2::<false>(row, quad),
                false => q4_quad_dots_avx2::<true>(row, quad),
            }
        }
    }
}

/// Per block: each column's 16 bytes widened to its 32 values in order (low nibbles, then high)
/// as unsigned bytes, which `_mm256_maddubs_epi16` multiplies by the signed activation quants
/// (pairs at most 2·15·128 < 2¹⁵: no saturation); then as `quad_dots_avx2` with the integer
/// offset added to the exact sums, and the float offsets' term `fma(m, f16(d_a·Σa), sum)`.
/// With `FIVE`, each column's 32 fifth bits (a u32, bit j for value j) become 16 in the bytes
/// whose bit is set (each byte picks its bit with a shuffle and a compare), added to the values
/// (at most 31: pairs at most 2·31·128 < 2¹⁵).
#[allow(unsafe_code)]
#[target_feature(enable = "avx2,fma")]
unsafe fn q4_quad_dots_avx2<const FIVE: bool>(row: &Row<'_>, quad: Q4Group<'_>) -> [f32; 4] {
    let (w, w_scales, w_offsets) = (quad.nibbles, quad.scales, quad.offsets);
    let ones = _mm256_set1_epi16(1);
    let low = _mm_set1_epi8(0x0F);
    // Byte i of a column's values takes byte i / 8 of its fifth bits and bit i % 8 of it.
    let spread = _mm256_setr_epi8(
        0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3,
        3, 3,
    );
    let select = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    let sixteen = _mm256_set1_epi8(16);
    let mut acc = _mm_setzero_ps();
    let per_block = row.scales.iter().zip(row.sums).zip(row.offset_sums);
    for (b, ((&da, &asum), &offset_sum)) in per_block.enumerate() {
        // SAFETY: b < blocks, so quants b·32 .. b·32 + 32, bytes b·64 .. b·64 + 64 of `w` and
        // floats b·4 .. b·4 + 4 of the scales and offsets are in bounds (the caller checked the
        // lengths); unaligned loads take any address.
        let (av, wp, ws, wm) = unsafe {
            (
                _mm256_loadu_si256(row.quants.as_ptr().add(b * 32).cast::<__m256i>()),
                w.as_ptr().add(b * 4 * BLOCK_BYTES),
                _mm_loadu_ps(w_scales.as_ptr().add(b * 4)),
                _mm_loadu_ps(w_offsets.as_ptr().add(b * 4)),
            )
        };
        let dot = |c: usize| {
            // SAFETY: c < 4, within the 64 bytes of this block's quad (above).
            let v = unsafe { _mm_loadu_si128(wp.add(c * BLOCK_BYTES).cast::<__m128i>()) };
            let mut values = _mm256_set_m128i(
                _mm_and_si128(_mm_srli_epi16(v, 4), low),
                _mm_and_si128(v, low),
            );
            if FIVE {
                // SAFETY: b < blocks and c < 4: bytes b·16 + 4c .. + 4 lie within the quad's
                // blocks × 16 bytes of fifth bits (checked by the caller); an unaligned read
                // takes any address.
                let bits = unsafe {
                    quad.fifth
                        .as_ptr()
                        .add(b * 16 + c * 4)
                        .cast::<i32>()
                        .read_unaligned()
                };
                let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(bits), spread);
                let set = _mm256_cmpeq_epi8(_mm256_and_si256(bytes, select), select);
                values = _mm256_or_si256(values, _mm256_and_si256(set, sixteen));
            }
            _mm256_madd_epi16(_mm256_maddubs_epi16(values, av), ones)
        };
        let (p0, p1, p2, p3) = (dot(0), dot(1), dot(2), dot(3));
        let halves = _mm256_hadd_epi32(_mm256_hadd_epi32(p0, p1), _mm256_hadd_epi32(p2, p3));
        let sums = _mm_add_epi32(
            _mm_add_epi32(
                _mm256_castsi256_si128(halves),
                _mm256_extracti128_si256(halves, 1),
            ),
            _mm_set1_epi32(quad.int_offset * asum),
        );
        let dav = _mm_set1_ps(da);
        acc = _mm_fmadd_ps(_mm_cvtepi32_ps(sums), _mm_mul_ps(ws, dav), acc);
        if quad.float_offsets {
            acc = _mm_fmadd_ps(wm, _mm_set1_ps(offset_sum), acc);
        }
    }
    let mut out = [0f32; 4];
    // SAFETY: `out` holds four floats.
    unsafe { _mm_storeu_ps(out.as_mut_ptr(), acc) };
    out
}

impl Avx2 {
    /// `rounds` of eight independent chains of the AVX2 multiply-add (`maddubs` + `madd` +
    /// `add`: 32 multiply-adds each), chain i multiplying `a + i` by `b` in even rounds and by
    /// `b ^ flip` in odd ones (so no product is the same from one round to the next or between
    /// chains): the kernel's peak integer rate, for `super::peak`. Each pair of products must
    /// stay within i16. Returns every lane of every chain summed.
    pub(super) fn maddubs_chains(self, rounds: u32, a: u8, b: i8, flip: i8) -> i64 {
        // SAFETY: `self` exists only where the CPU has AVX2 and FMA (`detect`).
        #[allow(unsafe_code)]
        unsafe {
            maddubs_chains(rounds, a, b, flip)
        }
    }

    /// `rounds` of eight independent FMA chains `x = x·1 + c` on 8 lanes: the f32 peak rate.
    pub(super) fn fma_chains(self, rounds: u32, c: f32) -> f64 {
        // SAFETY: as above.
        #[allow(unsafe_code)]
        unsafe {
            fma_chains(rounds, c)
        }
    }
}

#[allow(unsafe_code)]
#[target_feature(enable = "avx2,fma")]
unsafe fn maddubs_chains(rounds: u32, a: u8, b: i8, flip: i8) -> i64 {
    let a = std::hint::black_box(a);
    let avs: [__m256i; 8] =
        std::array::from_fn(|i| _mm256_set1_epi8(a.wrapping_add(i as u8) as i8));
    let (mut y, flip, ones) = (
        _mm256_set1_epi8(std::hint::black_box(b)),
        _mm256_set1_epi8(std::hint::black_box(flip)),
        _mm256_set1_epi16(1),
    );
    let mut acc = [_mm256_setzero_si256(); 8];
    for _ in 0..rounds {
        for (x, av) in acc.iter_mut().zip(&avs) {
            let products = _mm256_madd_epi16(_mm256_maddubs_epi16(*av, y), ones);
            *x = _mm256_add_epi32(*x, products);
        }
        y = _mm256_xor_si256(y, flip);
    }
    let mut lanes = [0i32; 8];
    let mut total = 0i64;
    for x in acc {
        // SAFETY: `lanes` holds eight i32.
        unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast(), x) };
        total += lanes.iter().map(|v| i64::from(*v)).sum::<i64>();
    }
    total
}

#[allow(unsafe_code)]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma_chains(rounds: u32, c: f32) -> f64 {
    let (one, cv) = (
        _mm256_set1_ps(std::hint::black_box(1.0)),
        _mm256_set1_ps(std::hint::black_box(c)),
    );
    let mut acc = [_mm256_setzero_ps(); 8];
    for _ in 0..rounds {
        for x in &mut acc {
            *x = _mm256_fmadd_ps(*x, one, cv);
        }
    }
    let mut lanes = [0f32; 8];
    let mut total = 0f64;
    for x in acc {
        // SAFETY: `lanes` holds eight f32.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), x) };
        total += lanes.iter().map(|v| f64::from(*v)).sum::<f64>();
    }
    total
}
