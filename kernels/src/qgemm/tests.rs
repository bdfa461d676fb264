use super::pack::Extras;
use super::*;
use candle_core::quantized::{GgmlDType, QTensor};
use rand::{Rng, SeedableRng};

fn random(len: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..len).map(|_| rng.random_range(-scale..scale)).collect()
}

/// The f32 product of the dequantized operands, in f64: what the int8 product approximates.
fn dequantized_product(x: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> Vec<f64> {
    let (rows, weights) = (
        Q8Rows::quantize(x, k).unwrap(),
        Q8Weights::quantize_as(Layout::Quads, w, n, k).unwrap(),
    );
    let value = |q: i8, d: f32| f64::from(q) * f64::from(d);
    let mut y = vec![0f64; m * n];
    for r in 0..m {
        let row = rows.row(r);
        for col in 0..n {
            y[r * n + col] = (0..k / BLOCK)
                .map(|b| {
                    let Block8 { values, scale, .. } = weights.column_block(col, b);
                    (0..BLOCK)
                        .map(|j| {
                            value(row.quants[b * BLOCK + j], row.scales[b])
                                * value(values[j], scale)
                        })
                        .sum::<f64>()
                })
                .sum();
        }
    }
    y
}

/// Shapes of the models (576, 1536 inner dimensions: not multiples of 256), single rows,
/// ragged batches (row counts that are not a multiple of four) and outputs that are not a
/// multiple of four or sixteen.
const SHAPES: [(usize, usize, usize); 7] = [
    (1, 576, 576),
    (3, 1536, 576),
    (5, 576, 1536),
    (7, 6, 64),
    (1, 1, 32),
    (17, 193, 96),
    (8, 40, 576),
];

fn operands(s: usize) -> (Vec<f32>, Vec<f32>) {
    let (m, n, k) = SHAPES[s];
    (
        random(m * k, s as u64, 3.0),
        random(n * k, 100 + s as u64, 0.1),
    )
}

#[test]
fn every_path_of_this_cpu_matches_the_exact_product_of_the_quantized_operands() {
    eprintln!("paths on this CPU: {:?}", Path::available());
    for (s, &(m, n, k)) in SHAPES.iter().enumerate() {
        let (x, w) = operands(s);
        let exact = dequantized_product(&x, &w, m, n, k);
        for path in Path::available() {
            let weights = Q8Weights::quantize_as(path.layout(), &w, n, k).unwrap();
            let y = matmul_with(path, &x, &weights).unwrap();
            assert_eq!(y.len(), m * n);
            for (i, (got, want)) in y.iter().zip(&exact).enumerate() {
                // f32 accumulation of k / 32 block sums: a few ulps of the largest term.
                let tolerance = 1e-5 * (1.0 + want.abs()) * (k as f64 / 32.0).sqrt();
                assert!(
                    (f64::from(*got) - want).abs() <= tolerance,
                    "{path:?} ({m}, {n}, {k}) element {i}: {got} vs {want}"
                );
            }
        }
    }
}

#[test]
fn every_path_is_bit_identical_to_the_reference_on_either_layout() {
    for (s, &(_, n, k)) in SHAPES.iter().enumerate() {
        let (x, w) = operands(s);
        for layout in [Layout::Quads, Layout::Tiles] {
            let weights = Q8Weights::quantize_as(layout, &w, n, k).unwrap();
            let reference = matmul_with(Path::Reference, &x, &weights).unwrap();
            for path in Path::available() {
                if path.layout() == layout {
                    let y = matmul_with(path, &x, &weights).unwrap();
                    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&y), bits(&reference), "{path:?} on shape {s}");
                }
            }
        }
    }
}

#[test]
fn the_int8_product_approximates_the_float_product() {
    // Quantization of both operands to 8 bits: about 1% of the typical magnitude.
    let (m, n, k) = (4, 64, 576);
    let (x, w) = (random(m * k, 1, 1.0), random(n * k, 2, 1.0));
    let y = matmul(&x, &Q8Weights::quantize(&w, n, k).unwrap()).unwrap();
    for r in 0..m {
        for c in 0..n {
            let exact: f32 = (0..k).map(|i| x[r * k + i] * w[c * k + i]).sum();
            let typical = (k as f32).sqrt() / 3.0;
            assert!(
                (y[r * n + c] - exact).abs() < 0.02 * typical,
                "{r},{c}: {} vs {exact}",
                y[r * n + c]
            );
        }
    }
}

#[test]
fn a_row_is_bit_identical_alone_and_in_any_batch() {
    let (m, n, k) = (9, 40, 576);
    let (x, w) = (random(m * k, 5, 2.0), random(n * k, 6, 0.2));
    for path in Path::available() {
        let weights = Q8Weights::quantize_as(path.layout(), &w, n, k).unwrap();
        let batched = matmul_with(path, &x, &weights).unwrap();
        for r in 0..m {
            let alone = matmul_with(path, &x[r * k..(r + 1) * k], &weights).unwrap();
            assert_eq!(alone, batched[r * n..(r + 1) * n], "{path:?} row {r}");
        }
    }
}

#[test]
fn q8_0_weights_repack_exactly_in_either_layout_and_bad_shapes_are_errors() {
    // Values that are multiples of their block's scale with ±127 present: GGUF's Q8_0.
    let d = 0.0123f32;
    let w: Vec<f32> = (0..3 * 64)
        .map(|i| match i % 32 {
            0 => 127.0 * d,
            _ => (((i * 37) % 255) as f32 - 127.0) * d,
        })
        .collect();
    for layout in [Layout::Quads, Layout::Tiles] {
        let q = Q8Weights::quantize_as(layout, &w, 3, 64).unwrap();
        for col in 0..3 {
            for b in 0..2 {
                let Block8 { values, scale, .. } = q.column_block(col, b);
                assert_eq!(scale, d);
                for (j, v) in values.iter().enumerate() {
                    assert_eq!(f32::from(*v) * d, w[col * 64 + b * BLOCK + j], "{layout:?}");
                }
            }
        }
    }
    assert_eq!(
        Q8Weights::quantize(&[0.0; 40], 1, 40).unwrap_err(),
        QgemmError::InnerDimension {
            k: 40,
            multiple: 32
        }
    );
    assert!(matches!(
        matmul(&[0.0; 33], &Q8Weights::quantize(&[0.0; 32], 1, 32).unwrap()),
        Err(QgemmError::Length { .. })
    ));
    let tiles = Q8Weights::quantize_as(Layout::Tiles, &[0.5; 32], 1, 32).unwrap();
    assert_eq!(
        matmul_with(Path::Avx2, &[0.0; 32], &tiles).unwrap_err(),
        QgemmError::Layout {
            path: Path::Avx2,
            wants: Layout::Quads,
            got: Layout::Tiles
        }
    );
    // Zero activations have block scale 0 and multiply to 0 in either layout.
    for layout in [Layout::Quads, Layout::Tiles] {
        let q = Q8Weights::quantize_as(layout, &[1.0; 32], 1, 32).unwrap();
        assert_eq!(matmul(&[0.0; 32], &q).unwrap(), vec![0.0]);
    }
}

#[test]
fn rounding_is_half_away_from_zero_as_f32_round() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    let halves = (-300..=300).map(|i| i as f32 * 0.5);
    let near = [
        0.49999997f32,
        -0.49999997,
        126.49999,
        126.5,
        -126.5,
        127.0,
        f32::EPSILON,
    ];
    let randoms: Vec<f32> = (0..100_000)
        .map(|_| rng.random_range(-128.0..128.0))
        .collect();
    for x in halves.chain(near).chain(randoms) {
        assert_eq!(pack::round_half_away(x), x.round() as i32, "{x}");
    }
    assert_eq!(pack::round_half_away(f32::NAN), 0);
}

/// 4-bit (or, with `five_bits`, 5-bit) weights with random values, scales and offsets (any
/// inner dimension of whole blocks). With `int_offset` ≠ 0 (Q4_0's and Q5_0's form) the float
/// offsets are 0.
fn random_q4(
    layout: Layout,
    (n, k): (usize, usize),
    (int_offset, five_bits): (i32, bool),
    seed: u64,
) -> Q4Weights {
    let top = if five_bits { 32 } else { 16 };
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let columns: Vec<Vec<_>> = (0..n)
        .map(|_| {
            (0..k / BLOCK)
                .map(|_| {
                    let values: [u8; BLOCK] = std::array::from_fn(|_| rng.random_range(0..top));
                    let scale = rng.random_range(0.001..0.02f32);
                    let offset = match int_offset {
                        0 => -rng.random_range(0.0..0.2f32),
                        _ => 0.0,
                    };
                    (values, scale, offset)
                })
                .collect()
        })
        .collect();
    Q4Weights::from_columns(layout, (n, k), (int_offset, five_bits), |col| {
        columns[col].clone()
    })
}

#[test]
fn every_path_of_this_cpu_computes_4_and_5_bit_weights_as_the_reference_does() {
    for (s, &(m, n, k)) in SHAPES.iter().enumerate() {
        let x = operands(s).0;
        let rows = Q8Rows::quantize(&x, k).unwrap();
        let forms = [(0, false), (-8, false), (0, true), (-16, true)];
        for (layout, (int_offset, five_bits)) in [Layout::Quads, Layout::Tiles]
            .into_iter()
            .flat_map(|l| forms.map(|f| (l, f)))
        {
            let weights = random_q4(layout, (n, k), (int_offset, five_bits), 200 + s as u64);
            let reference = matmul_with(Path::Reference, &x, &weights).unwrap();
            // The reference against the product of the dequantized operands, in f64.
            for r in 0..m {
                let row = rows.row(r);
                for col in 0..n {
                    let want: f64 = (0..k / BLOCK)
                        .flat_map(|b| {
                            let (u, scale, offset) = weights.column_block(col, b);
                            let a = f64::from(row.scales[b]);
                            // The offsets multiply d_a·Σa as rounded to f16.
                            let offsets = f64::from(offset) * f64::from(row.offset_sums[b]);
                            (0..BLOCK)
                                .map(move |j| {
                                    let u = f64::from(i32::from(u[j]) + int_offset);
                                    f64::from(scale) * u * a * f64::from(row.quants[b * BLOCK + j])
                                })
                                .chain([offsets])
                        })
                        .sum();
                    let got = f64::from(reference[r * n + col]);
                    let tolerance = 1e-5 * (1.0 + want.abs()) * (k as f64 / 32.0).sqrt();
                    assert!(
                        (got - want).abs() <= tolerance,
                        "shape {s} ({r}, {col}): {got} vs {want}"
                    );
                }
            }
            for path in Path::available() {
                if path.layout() == layout {
                    let y = matmul_with(path, &x, &weights).unwrap();
                    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&y), bits(&reference), "{path:?} on shape {s}");
                    // A row alone is the same row in the batch.
                    let alone = matmul_with(path, &x[..k], &weights).unwrap();
                    assert_eq!(bits(&alone), bits(&y[..n]), "{path:?} row 0 of shape {s}");
                }
            }
        }
    }
}

/// 8-bit weights with random values (6 bits, signed), scales and, as `extras` says, half
/// scales.
fn random_wide(layout: Layout, (n, k): (usize, usize), extras: Extras, seed: u64) -> Q8Weights {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let columns: Vec<Vec<Block8>> = (0..n)
        .map(|_| {
            (0..k / BLOCK)
                .map(|_| Block8 {
                    values: std::array::from_fn(|_| rng.random_range(-32..32)),
                    scale: rng.random_range(0.0001..0.002f32),
                    halves: match extras.halves {
                        true => [rng.random_range(-128..=127), rng.random_range(-128..=127)],
                        false => [1, 1],
                    },
                })
                .collect()
        })
        .collect();
    Q8Weights::from_columns(layout, (n, k), extras, |col| columns[col].clone())
}

#[test]
fn every_path_of_this_cpu_computes_half_scales_and_super_blocks_as_the_reference_does() {
    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
    for (s, &(m, n, k)) in SHAPES.iter().enumerate() {
        let x = operands(s).0;
        let mut kinds = vec![Activations::Blocks];
        if k % SUPER_BLOCK == 0 {
            kinds.push(Activations::SuperBlocks);
        }
        for (activations, halves) in kinds.into_iter().flat_map(|a| [(a, false), (a, true)]) {
            let extras = Extras {
                halves,
                activations,
            };
            let rows = Q8Rows::quantize_for(&x, k, activations).unwrap();
            for layout in [Layout::Quads, Layout::Tiles] {
                let weights = random_wide(layout, (n, k), extras, 300 + s as u64);
                let reference = matmul_with(Path::Reference, &x, &weights).unwrap();
                for r in 0..m {
                    let row = rows.row(r);
                    for col in 0..n {
                        let want: f64 = (0..k / BLOCK)
                            .map(|b| {
                                let w = weights.column_block(col, b);
                                let a = f64::from(row.scales[b]);
                                let products: f64 = (0..BLOCK)
                                    .map(|j| {
                                        let half = i32::from(w.halves[j / 16]);
                                        let v = f64::from(half * i32::from(w.values[j]));
                                        f64::from(w.scale)
                                            * v
                                            * a
                                            * f64::from(row.quants[b * BLOCK + j])
                                    })
                                    .sum();
                                products
                            })
                            .sum();
                        let got = f64::from(reference[r * n + col]);
                        let tolerance = 1e-5 * (1.0 + want.abs()) * (k as f64 / 32.0).sqrt();
                        assert!(
                            (got - want).abs() <= tolerance,
                            "shape {s} {extras:?} ({r}, {col}): {got} vs {want}"
                        );
                    }
                }
                for path in Path::available() {
                    if path.layout() == layout {
                        let y = matmul_with(path, &x, &weights).unwrap();
                        assert_eq!(bits(&y), bits(&reference), "{path:?} {extras:?} shape {s}");
                        let alone = matmul_with(path, &x[..k], &weights).unwrap();
                        assert_eq!(bits(&alone), bits(&y[..n]), "{path:?} row 0 of shape {s}");
                    }
                }
            }
        }
    }
}

/// A random `[n, k]` matrix (values in ±0.2, +0.05) quantized by candle to `dtype` (ggml's
/// formats, ported): its GGUF bytes and candle's dequantization of them.
pub(super) fn ggml_tensor(
    dtype: GgmlDType,
    (n, k): (usize, usize),
    seed: u64,
) -> (Vec<u8>, Vec<f32>) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let w: Vec<f32> = (0..n * k).map(|_| rng.random_range(-0.2..0.3)).collect();
    let t = candle_core::Tensor::from_vec(w, (n, k), &candle_core::Device::Cpu).unwrap();
    let q = QTensor::quantize(&t, dtype).unwrap();
    let dequantized = q.dequantize(&candle_core::Device::Cpu).unwrap();
    let dequantized = dequantized.flatten_all().unwrap().to_vec1().unwrap();
    (q.data().unwrap().into_owned(), dequantized)
}

/// GGUF bytes of `dtype` (one of `STORED_FORMATS`) repacked in `layout`.
fn packed(layout: Layout, dtype: GgmlDType, raw: &[u8], shape: (usize, usize)) -> PackedWeights {
    PackedWeights::from_gguf(layout, dtype, raw, shape)
        .expect("a stored format")
        .unwrap()
}

/// The float offset of block `b` of column `col` (none for 8-bit weights).
fn block_offset(w: &PackedWeights, col: usize, b: usize) -> f32 {
    match w {
        PackedWeights::Q4(w) => w.column_block(col, b).2,
        PackedWeights::Q8(_) => 0.0,
    }
}

/// Value `i` of column `col`, as the repacked form gives it.
fn value(w: &PackedWeights, col: usize, i: usize) -> f32 {
    let (b, j) = (i / BLOCK, i % BLOCK);
    match w {
        PackedWeights::Q4(w) => {
            let ((u, s, m), (o, _)) = (w.column_block(col, b), w.offset_kind());
            s * (i32::from(u[j]) + o) as f32 + m
        }
        PackedWeights::Q8(w) => {
            let block = w.column_block(col, b);
            let v = i32::from(block.halves[j / 16]) * i32::from(block.values[j]);
            block.scale * v as f32
        }
    }
}

#[test]
fn gguf_tensors_repack_to_what_ggml_dequantizes() {
    // Every value of a tensor quantized by candle (ggml's formats, ported), in either layout;
    // with the high bits of the K-quants' packed 6-bit scales in use, and Q6_K's two halves of
    // a block scaled apart.
    let (n, k) = (19, 512);
    for dtype in STORED_FORMATS {
        let (raw, want) = ggml_tensor(dtype, (n, k), 8);
        let block = match dtype {
            GgmlDType::Q4K => Some(144),
            GgmlDType::Q5K => Some(176),
            _ => None,
        };
        if let Some(bytes) = block {
            assert!(raw
                .chunks(bytes)
                .any(|b| (4..8).any(|j| q4::q4k_scale_min(j, &b[4..16]).0 > 15)));
        }
        for layout in [Layout::Quads, Layout::Tiles] {
            let packed = packed(layout, dtype, &raw, (n, k));
            for col in 0..n {
                for i in 0..k {
                    let (got, want) = (value(&packed, col, i), want[col * k + i]);
                    assert!(
                        (got - want).abs() <= 1e-7 * want.abs().max(1e-3),
                        "{dtype:?} {layout:?} ({col}, {i}): {got} vs {want}"
                    );
                }
            }
            if let PackedWeights::Q8(w) = &packed {
                let halves = (0..k / BLOCK).any(|b| {
                    let h = w.column_block(0, b).halves;
                    h[0] != h[1]
                });
                assert_eq!(halves, dtype == GgmlDType::Q6K, "{dtype:?}");
            }
        }
    }
}

#[test]
fn gguf_tensors_multiply_as_their_dequantized_values() {
    // candle's Q4_0, Q4_1, Q4_K, Q5_0, Q5_1, Q5_K and Q6_K of a random matrix, against the f64
    // product of its dequantized weights with the int8 activations as the product quantizes
    // them (per super-block for the K-quants): 5e-5 relative (f32 sums of blocks), plus the f16
    // rounding of d_a·Σa where float offsets multiply it per block of 32.
    for dtype in STORED_FORMATS {
        let (m, n, k) = (5, 33, 768);
        let x = random(m * k, 13, 2.0);
        let (raw, dequantized) = ggml_tensor(dtype, (n, k), 14);
        let k_quant = matches!(dtype, GgmlDType::Q4K | GgmlDType::Q5K | GgmlDType::Q6K);
        for path in Path::available() {
            let weights = packed(path.layout(), dtype, &raw, (n, k));
            let activations = weights.as_ref().activations();
            assert_eq!(activations == Activations::SuperBlocks, k_quant);
            let rows = Q8Rows::quantize_for(&x, k, activations).unwrap();
            let y = matmul_with(path, &x, &weights).unwrap();
            for r in 0..m {
                let row = rows.row(r);
                for col in 0..n {
                    let want: f64 = (0..k)
                        .map(|i| {
                            f64::from(dequantized[col * k + i])
                                * f64::from(row.scales[i / BLOCK])
                                * f64::from(row.quants[i])
                        })
                        .sum();
                    let rounding: f64 = match k_quant {
                        true => 0.0,
                        false => (0..k / BLOCK)
                            .map(|b| {
                                let offset = f64::from(block_offset(&weights, col, b));
                                (offset * f64::from(row.offset_sums[b])).abs() / 2048.0
                            })
                            .sum(),
                    };
                    let got = f64::from(y[r * n + col]);
                    assert!(
                        (got - want).abs() <= 5e-5 * (1.0 + want.abs()) + rounding,
                        "{dtype:?} {path:?} ({r}, {col}): {got} vs {want}"
                    );
                }
            }
        }
    }
}

#[test]
fn super_blocks_quantize_as_llama_cpp_does() {
    // ggml's quantize_row_q8_K_ref, written out: iscale = -127 / (the value of largest
    // magnitude), q = nearest_int(iscale·x) (ties to even), d = 1 / iscale.
    let mut rng = rand::rngs::StdRng::seed_from_u64(15);
    for scale in [1.0f32, 1e-3, 300.0] {
        let mut x: Vec<f32> = (0..SUPER_BLOCK)
            .map(|_| rng.random_range(-scale..scale))
            .collect();
        x[17] = 0.5 * 2.0 * scale; // a positive maximum in one, then a negative one
        for sign in [1.0f32, -1.0] {
            x[17] *= sign;
            let max = x
                .iter()
                .copied()
                .fold(0f32, |m, v| if v.abs() > m.abs() { v } else { m });
            let iscale = -127.0 / max;
            let theirs: Vec<i32> = x
                .iter()
                .map(|v| (iscale * v).round_ties_even() as i32)
                .collect();
            let d_theirs = 1.0 / iscale;
            let mut ours = [0i8; SUPER_BLOCK];
            let d = pack::quantize_super_block(&x, &mut ours);
            for (q, t) in ours.iter().zip(&theirs) {
                assert_eq!(
                    (d * f32::from(*q)).to_bits(),
                    (d_theirs * *t as f32).to_bits()
                );
            }
        }
    }
    for v in [0.5f32, 1.5, 2.5, -0.5, -2.5, 126.5, -126.5, 3.2, -3.7] {
        assert_eq!(pack::nearest_even(v), v.round_ties_even() as i32, "{v}");
    }
    assert_eq!(
        Q8Rows::quantize_for(&[0.0; 64], 64, Activations::SuperBlocks).unwrap_err(),
        QgemmError::InnerDimension {
            k: 64,
            multiple: 256
        }
    );
}
