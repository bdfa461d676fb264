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

use super::pack::{Extras, Group, Q8Rows};
use super::q4::{Q4Group, BLOCK_BYTES};
use super::BLOCK;
use std::arch::x86_64::*;

/// Columns per tile.
const TILE: usize = 16;
/// Rows that share a weight load.
const ROWS: usize = 4;

/// Proof that this CPU runs AVX-512F, BW and VNNI: only [`Avx512Vnni::detect`] makes one.
#[derive(Debug, Clone, Copy)]
pub(super) struct Avx512Vnni(());

/// One row's operands for the kernel: biased quants and block scales.
type Operands<'a> = (&'a [u8], &'a [f32]);

impl Avx512Vnni {
    pub(super) fn detect() -> Option<Self> {
        (is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vnni"))
        .then_some(Self(()))
    }

    /// Every row of `rows` times the sixteen columns of `tile`: `out` is `[row][16]`.
    pub(super) fn tile_dots(self, rows: &Q8Rows, tile: Group<'_>, extras: Extras, out: &mut [f32]) {
        let m = rows.rows();
        let blocks = tile.scales.len() / TILE;
        let per_half = if extras.halves { 2 } else { 1 };
        assert!(
            tile.quants.len() == blocks * TILE * BLOCK
                && tile.sums.len() == blocks * TILE * per_half
                && (!extras.halves || tile.halves.len() == blocks * TILE * 2)
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
        // SAFETY (both calls): `self` exists only where the CPU has AVX-512F and VNNI
        // (`detect`), and every slice holds what the kernel reads for `blocks` blocks with
        // these extras (checked above).
        #[allow(unsafe_code)]
        let four = |r: usize, dots: &mut [f32]| unsafe {
            let group: [Operands<'_>; ROWS] = std::array::from_fn(|i| operands(r + i));
            match extras.halves {
                false => rows_times_tile::<ROWS, false>(group, tile, dots),
                true => rows_times_tile::<ROWS, true>(group, tile, dots),
            }
        };
        #[allow(unsafe_code)]
        let one = |r: usize, dots: &mut [f32]| unsafe {
            let group = [operands(r)];
            match extras.halves {
                false => rows_times_tile::<1, false>(group, tile, dots),
                true => rows_times_tile::<1, true>(group, tile, dots),
            }
        };
        by_row_groups(out, four, one);
    }
}

/// Runs `four(first row, out of four rows)` over the rows of `out` (`[row][16]`) four at a time,
/// then `one(row, out of one row)` over the rows left.
fn by_row_groups(
    out: &mut [f32],
    mut four: impl FnMut(usize, &mut [f32]),
    mut one: impl FnMut(usize, &mut [f32]),
) {
    let mut r = 0;
    for dots in out.chunks_exact_mut(ROWS * TILE) {
        four(r, dots);
        r += ROWS;
    }
    for dots in out
        .chunks_exact_mut(ROWS * TILE)
        .into_remainder()
        .chunks_exact_mut(TILE)
    {
        one(r, dots);
        r += 1;
    }
}

/// `R` rows (1 or 4) times one tile; `out` is `[R][16]`. The caller guarantees the CPU features
/// and that each row holds `blocks × 32` biased bytes and `blocks` scales, the tile `blocks ×
/// 512` values, `blocks × 16` scales and value sums (`× 2` sums with `HALVES`), with `HALVES`
/// `blocks × 32` half scales, and `out` `R × 16` floats. The bias of the activations' +128 is
/// 128 × a value sum (the i16 sums widened and shifted). With `HALVES` groups 0-3 (values 0-15)
/// and 4-7 (values 16-31) sum apart, and each half's exact sum is multiplied by its integer
/// scale (the i8 scales widened). The rows' sums and accumulators are
/// named variables (not arrays), so that they stay in registers.
#[allow(unsafe_code)]
#[target_feature(enable = "avx512f,avx512vnni")]
unsafe fn rows_times_tile<const R: usize, const HALVES: bool>(
    rows: [Operands<'_>; R],
    tile: Group<'_>,
    out: &mut [f32],
) {
    let (w, w_scales, w_sums) = (tile.quants, tile.scales, tile.sums);
    let blocks = w_scales.len() / TILE;
    // Raw pointers, so that the loops compile to straight-line code without bounds checks (the
    // caller checked every length). Row i of a one-row call reads row 0 again (unused).
    let a: [*const u8; 4] = std::array::from_fn(|r| rows[r.min(R - 1)].0.as_ptr());
    let sc: [*const f32; 4] = std::array::from_fn(|r| rows[r.min(R - 1)].1.as_ptr());
    let zero = _mm512_setzero_ps();
    let (mut acc0, mut acc1, mut acc2, mut acc3) = (zero, zero, zero, zero);
    for b in 0..blocks {
        let zero = _mm512_setzero_si512();
        let (mut s0, mut s1, mut s2, mut s3) = (zero, zero, zero, zero);
        let (mut h0, mut h1, mut h2, mut h3) = (zero, zero, zero, zero);
        for g in 0..BLOCK / 4 {
            let at = b * BLOCK + g * 4;
            // SAFETY: b < blocks and g < 8: these 64 bytes lie within the tile's blocks × 512
            // values, and bytes `at .. at + 4` within each row's blocks × 32; unaligned loads and
            // reads take any address.
            unsafe {
                let wv = _mm512_loadu_si512(w.as_ptr().add(b * TILE * BLOCK + g * TILE * 4).cast());
                let four =
                    |row: *const u8| _mm512_set1_epi32(row.add(at).cast::<i32>().read_unaligned());
                if HALVES && g >= BLOCK / 8 {
                    h0 = _mm512_dpbusd_epi32(h0, four(a[0]), wv);
                    if R == 4 {
                        h1 = _mm512_dpbusd_epi32(h1, four(a[1]), wv);
                        h2 = _mm512_dpbusd_epi32(h2, four(a[2]), wv);
                        h3 = _mm512_dpbusd_epi32(h3, four(a[3]), wv);
                    }
                } else {
                    s0 = _mm512_dpbusd_epi32(s0, four(a[0]), wv);
                    if R == 4 {
                        s1 = _mm512_dpbusd_epi32(s1, four(a[1]), wv);
                        s2 = _mm512_dpbusd_epi32(s2, four(a[2]), wv);
                        s3 = _mm512_dpbusd_epi32(s3, four(a[3]), wv);
                    }
                }
            }
        }
        // SAFETY: entries b·16 .. b·16 + 16 of the tile's scales, b·16 .. b·16 + 16 of its sums
        // (b·32 .. b·32 + 32 with halves, as its half scales), and entry b of each row's
        // scales, are in bounds.
        unsafe {
            let ws = _mm512_loadu_ps(w_scales.as_ptr().add(b * TILE));
            let per_block = if HALVES { 2 * TILE } else { TILE };
            // 128 × the sixteen i16 value sums from `at`.
            let bias_at = |at: usize| {
                let sums = _mm256_loadu_si256(w_sums.as_ptr().add(at).cast());
                _mm512_slli_epi32::<7>(_mm512_cvtepi16_epi32(sums))
            };
            let scales_at = |at: usize| {
                _mm512_cvtepi8_epi32(_mm_loadu_si128(tile.halves.as_ptr().add(at).cast()))
            };
            let bias = bias_at(b * per_block);
            // The exact sums: without halves the biased sum less the bias; with halves k₀·(low
            // half's) + k₁·(high half's).
            let exact = |s: __m512i, h: __m512i| {
                if HALVES {
                    let bias1 = bias_at(b * per_block + TILE);
                    let (k0, k1) = (scales_at(b * per_block), scales_at(b * per_block + TILE));
                    _mm512_add_epi32(
                        _mm512_mullo_epi32(_mm512_sub_epi32(s, bias), k0),
                        _mm512_mullo_epi32(_mm512_sub_epi32(h, bias1), k1),
                    )
                } else {
                    _mm512_sub_epi32(s, bias)
                }
            };
            // Times (column scale × row scale), added with one FMA.
            let step = |s: __m512i, h: __m512i, r: usize, acc: __m512| {
                _mm512_fmadd_ps(
                    _mm512_cvtepi32_ps(exact(s, h)),
                    _mm512_mul_ps(ws, _mm512_set1_ps(*sc[r].add(b))),
                    acc,
                )
            };
            acc0 = step(s0, h0, 0, acc0);
            if R == 4 {
                acc1 = step(s1, h1, 1, acc1);
                acc2 = step(s2, h2, 2, acc2);
                acc3 = step(s3, h3, 3, acc3);
            }
        }
    }
    for (r, acc) in [acc0, acc1, acc2, acc3].into_iter().take(R).enumerate() {
        // SAFETY: floats r·16 .. r·16 + 16 lie within `out`'s R × 16.
        unsafe { _mm512_storeu_ps(out.as_mut_ptr().add(r * TILE), acc) };
    }
}

/// One row's operands for the 4-bit kernel: quants, block scales, block sums and offset sums.
type Q4Operands<'a> = (&'a [i8], &'a [f32], &'a [i32], &'a [f32]);

impl Avx512Vnni {
    /// Every row of `rows` times the sixteen columns of a 4-bit `tile` (`super::q4`): `out` is
    /// `[row][16]`.
    pub(super) fn q4_tile_dots(self, rows: &Q8Rows, tile: Q4Group<'_>, out: &mut [f32]) {
        let m = rows.rows();
        let blocks = tile.scales.len() / TILE;
        let five = !tile.fifth.is_empty();
        assert!(
            tile.nibbles.len() == blocks * TILE * BLOCK_BYTES
                && tile.offsets.len() == blocks * TILE
                && (!five || tile.fifth.len() == blocks * TILE * 4)
                && out.len() == m * TILE,
            "operands of mismatched sizes"
        );
        let operands = |r: usize| {
            let row = rows.row(r);
            assert!(
                row.quants.len() == blocks * BLOCK
                    && row.scales.len() == blocks
                    && row.sums.len() == blocks
                    && row.offset_sums.len() == blocks,
                "a row of another width"
            );
            (row.quants, row.scales, row.sums, row.offset_sums)
        };
        // SAFETY (both calls): `self` exists only where the CPU has AVX-512F, BW and VNNI
        // (`detect`), and every slice holds what the kernel reads for `blocks` blocks (checked
        // above).
        #[allow(unsafe_code)]
        let four = |r: usize, dots: &mut [f32]| unsafe {
            let group: [Q4Operands<'_>; ROWS] = std::array::from_fn(|i| operands(r + i));
            match five {
                false => rows_times_q4_tile::<ROWS, false>(group, tile, dots),
                true => rows_times_q4_tile::<ROWS, true>(group, tile, dots),
            }
        };
        #[allow(unsafe_code)]
        let one = |r: usize, dots: &mut [f32]| unsafe {
            match five {
                false => rows_times_q4_tile::<1, false>([operands(r)], tile, dots),
                true => rows_times_q4_tile::<1, true>([operands(r)], tile, dots),
            }
        };
        by_row_groups(out, four, one);
    }
}

/// `R` rows (1 or 4) times one 4-bit tile; `out` is `[R][16]`. The caller guarantees the CPU
/// features and that each row holds `blocks × 32` quants and `blocks` scales, sums and offset
/// sums, the tile `blocks × 256` bytes and `blocks × 16` scales and offsets, and `out` `R × 16`
/// floats (with `FIVE`, `blocks × 64` bytes of fifth bits). Each 64-byte load holds groups g
/// (low nibbles) and g + 4 (high nibbles) of the sixteen columns: a mask and a shift give them
/// as unsigned bytes (with `FIVE`, a masked add of 16 where a value's fifth bit is set), which
/// `vpdpbusd` multiplies by four signed activation quants broadcast to every lane.
#[allow(unsafe_code)]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn rows_times_q4_tile<const R: usize, const FIVE: bool>(
    rows: [Q4Operands<'_>; R],
    tile: Q4Group<'_>,
    out: &mut [f32],
) {
    let (w, w_scales, w_offsets) = (tile.nibbles, tile.scales, tile.offsets);
    let blocks = w_scales.len() / TILE;
    // Raw pointers, as in `rows_times_tile`; row i of a one-row call reads row 0 again (unused).
    let a: [*const i8; 4] = std::array::from_fn(|r| rows[r.min(R - 1)].0.as_ptr());
    let sc: [*const f32; 4] = std::array::from_fn(|r| rows[r.min(R - 1)].1.as_ptr());
    let su: [*const i32; 4] = std::array::from_fn(|r| rows[r.min(R - 1)].2.as_ptr());
    let so: [*const f32; 4] = std::array::from_fn(|r| rows[r.min(R - 1)].3.as_ptr());
    let (low, sixteen) = (_mm512_set1_epi8(0x0F), _mm512_set1_epi8(16));
    let zero = _mm512_setzero_ps();
    let (mut acc0, mut acc1, mut acc2, mut acc3) = (zero, zero, zero, zero);
    for b in 0..blocks {
        let zero = _mm512_setzero_si512();
        let (mut s0, mut s1, mut s2, mut s3) = (zero, zero, zero, zero);
        for g in 0..BLOCK / 8 {
            let at = b * BLOCK + g * 4;
            // SAFETY: b < blocks and g < 4: these 64 bytes lie within the tile's blocks × 256,
            // the 16 bytes of masks within its blocks × 64 fifth bits (with `FIVE`), and quants
            // `at .. at + 4` and `at + 16 .. at + 20` within each row's blocks × 32; unaligned
            // loads and reads take any address.
            unsafe {
                let wv = _mm512_loadu_si512(
                    w.as_ptr().add(b * TILE * BLOCK_BYTES + g * TILE * 4).cast(),
                );
                let mut lo = _mm512_and_si512(wv, low);
                let mut hi = _mm512_and_si512(_mm512_srli_epi32::<4>(wv), low);
                if FIVE {
                    // Bytes b·64 + g·16 .. + 16 of the fifth bits: the two lanes' masks.
                    let masks = tile.fifth.as_ptr().add(b * TILE * 4 + g * 16).cast::<u64>();
                    lo = _mm512_mask_add_epi8(lo, masks.read_unaligned(), lo, sixteen);
                    hi = _mm512_mask_add_epi8(hi, masks.add(1).read_unaligned(), hi, sixteen);
                }
                let four = |row: *const i8, at: usize| {
                    _mm512_set1_epi32(row.add(at).cast::<i32>().read_unaligned())
                };
                let dot = |s: __m512i, row: *const i8| {
                    _mm512_dpbusd_epi32(
                        _mm512_dpbusd_epi32(s, lo, four(row, at)),
                        hi,
                        four(row, at + 16),
                    )
                };
                s0 = dot(s0, a[0]);
                if R == 4 {
                    s1 = dot(s1, a[1]);
                    s2 = dot(s2, a[2]);
                    s3 = dot(s3, a[3]);
                }
            }
        }
        // SAFETY: entries b·16 .. b·16 + 16 of the tile's scales and offsets, and entry b of each
        // row's scales, sums and offset sums, are in bounds.
        unsafe {
            let ws = _mm512_loadu_ps(w_scales.as_ptr().add(b * TILE));
            let wm = _mm512_loadu_ps(w_offsets.as_ptr().add(b * TILE));
            // i = Σ u·a + o·Σa; sum = fma(i, d_a·s, sum), then fma(m, f16(d_a·Σa), sum) where
            // the format has float offsets.
            let step = |sum: __m512i, r: usize, acc: __m512| {
                let (da, asum) = (*sc[r].add(b), *su[r].add(b));
                let da = _mm512_set1_ps(da);
                let exact = _mm512_add_epi32(sum, _mm512_set1_epi32(tile.int_offset * asum));
                let acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(exact), _mm512_mul_ps(ws, da), acc);
                if tile.float_offsets {
                    _mm512_fmadd_ps(wm, _mm512_set1_ps(*so[r].add(b)), acc)
                } else {
                    acc
                }
            };
            acc0 = step(s0, 0, acc0);
            if R == 4 {
                acc1 = step(s1, 1, acc1);
                acc2 = step(s2, 2, acc2);
                acc3 = step(s3, 3, acc3);
            }
        }
    }
    for (r, acc) in [acc0, acc1, acc2, acc3].into_iter().take(R).enumerate() {
        // SAFETY: floats r·16 .. r·16 + 16 lie within `out`'s R × 16.
        unsafe { _mm512_storeu_ps(out.as_mut_ptr().add(r * TILE), acc) };
    }
}

impl Avx512Vnni {
    /// `rounds` of eight independent `vpdpbusd` chains of `a` × `b` (64 multiply-adds each): the
    /// instruction's peak rate, for `super::peak`. Returns every lane of every chain summed.
    pub(super) fn dpbusd_chains(self, rounds: u32, a: u8, b: i8) -> i64 {
        // SAFETY: `self` exists only where the CPU has AVX-512F and VNNI (`detect`).
        #[allow(unsafe_code)]
        unsafe {
            dpbusd_chains(rounds, a, b)
        }
    }

    /// `rounds` of eight independent FMA chains `x = x·1 + c` on 16 lanes: the f32 peak rate.
    /// Returns every lane of every chain summed.
    pub(super) fn fma_chains(self, rounds: u32, c: f32) -> f64 {
        // SAFETY: as above (FMA on zmm registers is AVX-512F).
        #[allow(unsafe_code)]
        unsafe {
            fma_chains(rounds, c)
        }
    }
}

#[allow(unsafe_code)]
#[target_feature(enable = "avx512f,avx512vnni")]
unsafe fn dpbusd_chains(rounds: u32, a: u8, b: i8) -> i64 {
    let (av, bv) = (
        _mm512_set1_epi8(std::hint::black_box(a) as i8),
        _mm512_set1_epi8(std::hint::black_box(b)),
    );
    let mut acc = [_mm512_setzero_si512(); 8];
    for _ in 0..rounds {
        for x in &mut acc {
            *x = _mm512_dpbusd_epi32(*x, av, bv);
        }
    }
    let mut lanes = [0i32; 16];
    let mut total = 0i64;
    for x in acc {
        // SAFETY: `lanes` holds sixteen i32.
        unsafe { _mm512_storeu_si512(lanes.as_mut_ptr().cast(), x) };
        total += lanes.iter().map(|v| i64::from(*v)).sum::<i64>();
    }
    total
}

#[allow(unsafe_code)]
#[target_feature(enable = "avx512f")]
unsafe fn fma_chains(rounds: u32, c: f32) -> f64 {
    let (one, cv) = (
        _mm512_set1_ps(std::hint::black_box(1.0)),
        _mm512_set1_ps(std::hint::black_box(c)),
    );
    let mut acc = [_mm512_setzero_ps(); 8];
    for _ in 0..rounds {
        for x in &mut acc {
            *x = _mm512_fmadd_ps(*x, one, cv);
        }
    }
    let mut lanes = [0f32; 16];
    let mut total = 0f64;
    for x in acc {
        // SAFETY: `lanes` holds sixteen f32.
        unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), x) };
        total += lanes.iter().map(|v| f64::from(*v)).sum::<f64>();
    }
    total
}
