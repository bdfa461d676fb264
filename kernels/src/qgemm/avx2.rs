//! The AVX2 + FMA path of the int8 matrix product (the only `unsafe` of `qgemm`).
//!
//! Per block of 32: `_mm256_sign_epi8` moves the activation's signs onto the weights, so
//! `_mm256_maddubs_epi16` multiplies the activation magnitudes (unsigned) by them with no
//! saturation (|q| ≤ 127: a pair sums to at most 2·127² < 2¹⁵), `_mm256_madd_epi16` widens to
//! eight i32 partial sums per column, two rounds of `_mm256_hadd_epi32` gather the four columns'
//! sums into one vector (one 128-bit half each), converted exactly to f32 and accumulated with
//! one FMA against the four (row scale × column scale) products.

use std::arch::x86_64::*;

/// Proof that this CPU runs AVX2 and FMA: only [`Avx2::detect`] makes one, so the kernel checks
/// the CPU once per product rather than once per dot product.
#[derive(Debug, Clone, Copy)]
pub(super) struct Avx2(());

impl Avx2 {
    pub(super) fn detect() -> Option<Self> {
        (is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")).then_some(Self(()))
    }

    /// The four dot products of one activation row (quants, magnitudes, block scales) with one
    /// column quad (blocks, scales), as `super::quad_reference` defines them.
    pub(super) fn quad_dots(self, row: (&[i8], &[u8], &[f32]), quad: (&[i8], &[f32])) -> [f32; 4] {
        let (a, magnitudes, a_scales) = row;
        let (w, w_scales) = quad;
        let blocks = a_scales.len();
        assert!(
            a.len() == blocks * 32
                && magnitudes.len() == blocks * 32
                && w.len() == blocks * 128
                && w_scales.len() == blocks * 4,
            "operands of mismatched sizes"
        );
        // SAFETY: `self` exists only where the CPU has AVX2 and FMA (`detect`), and every slice
        // holds what the loop reads for `blocks` blocks (checked above).
        #[allow(unsafe_code)]
        unsafe {
            quad_dots_avx2(a, magnitudes, a_scales, w, w_scales)
        }
    }
}

#[allow(unsafe_code)]
#[target_feature(enable = "avx2,fma")]
unsafe fn quad_dots_avx2(
    a: &[i8],
    magnitudes: &[u8],
    a_scales: &[f32],
    w: &[i8],
    w_scales: &[f32],
) -> [f32; 4] {
    let ones = _mm256_set1_epi16(1);
    let mut acc = _mm256_setzero_ps();
    for (b, &da) in a_scales.iter().enumerate() {
        // SAFETY: b < blocks, so bytes b·32 .. b·32 + 32 of `a` and `magnitudes`, b·128 ..
        // b·128 + 128 of `w` and floats b·4 .. b·4 + 4 of `w_scales` are in bounds (the caller
        // checked the lengths); unaligned loads take any address.
        let (av, mv, wp, ws) = unsafe {
            (
                _mm256_loadu_si256(a.as_ptr().add(b * 32).cast::<__m256i>()),
                _mm256_loadu_si256(magnitudes.as_ptr().add(b * 32).cast::<__m256i>()),
                w.as_ptr().add(b * 128),
                _mm_loadu_ps(w_scales.as_ptr().add(b * 4)),
            )
        };
        let dot = |c: usize| {
            // SAFETY: c < 4, within the 128 bytes of this block's quad (above).
            let wv = unsafe { _mm256_loadu_si256(wp.add(c * 32).cast::<__m256i>()) };
            _mm256_madd_epi16(_mm256_maddubs_epi16(mv, _mm256_sign_epi8(wv, av)), ones)
        };
        let (p0, p1, p2, p3) = (dot(0), dot(1), dot(2), dot(3));
        let sums = _mm256_hadd_epi32(_mm256_hadd_epi32(p0, p1), _mm256_hadd_epi32(p2, p3));
        let scales = _mm256_mul_ps(_mm256_set_m128(ws, ws), _mm256_set1_ps(da));
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), scales, acc);
    }
    let halves = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    let mut out = [0f32; 4];
    // SAFETY: `out` holds four floats.
    unsafe { _mm_storeu_ps(out.as_mut_ptr(), halves) };
    out
}
