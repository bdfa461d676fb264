use super::*;
use rand::{Rng, SeedableRng};

fn random(len: usize, rng: &mut impl Rng) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(-2.0..2.0)).collect()
}

/// A cache of `positions` random positions, appended in uneven chunks.
fn cache(width: usize, positions: usize, rng: &mut impl Rng) -> (LayerCache, Vec<f32>, Vec<f32>) {
    let (keys, values) = (
        random(positions * width, rng),
        random(positions * width, rng),
    );
    let mut cache = LayerCache::default();
    let mut at = 0;
    for chunk in [1, 7, 16, 3].iter().cycle() {
        if at == positions {
            break;
        }
        let n = (*chunk).min(positions - at);
        let part = at * width..(at + n) * width;
        cache.append(width, &keys[part.clone()], &values[part]);
        at += n;
    }
    (cache, keys, values)
}

/// The attention in f64 with the plain formula: scores, soft cap, softmax, weighted sum.
fn exact(shape: Heads, q: &[f32], keys: &[f32], values: &[f32], visible: Range<usize>) -> Vec<f64> {
    let (hd, kv) = (shape.head_dim, shape.kv_heads);
    let rep = shape.heads / kv;
    let mut out = vec![0f64; shape.heads * hd];
    for h in 0..shape.heads {
        let g = h / rep;
        let scores: Vec<f64> = visible
            .clone()
            .map(|p| {
                let dot: f64 = (0..hd)
                    .map(|d| f64::from(q[h * hd + d]) * f64::from(keys[(p * kv + g) * hd + d]))
                    .sum();
                let s = dot / f64::from(shape.divisor);
                match shape.softcap {
                    Some(cap) => (s / f64::from(cap)).tanh() * f64::from(cap),
                    None => s,
                }
            })
            .collect();
        let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let total: f64 = scores.iter().map(|s| (s - max).exp()).sum();
        for (s, p) in scores.iter().zip(visible.clone()) {
            let w = (s - max).exp() / total;
            for d in 0..hd {
                out[h * hd + d] += w * f64::from(values[(p * kv + g) * hd + d]);
            }
        }
    }
    out
}

#[test]
fn every_path_computes_the_attention_and_the_reference_s_bits() {
    eprintln!("attention paths on this CPU: {:?}", Path::available());
    let mut rng = rand::rngs::StdRng::seed_from_u64(21);
    // Shapes of the models (SmolLM2: 9 heads over 3 of 64; the tiny fixtures' 16; 128 and an
    // odd 40), one position, partial tiles, windows that start inside a tile.
    for (heads, kv, hd, positions, window, softcap) in [
        (9, 3, 64, 37, None, None),
        (4, 2, 16, 1, None, None),
        (8, 1, 128, 100, Some(30), Some(50.0)),
        (2, 2, 40, 17, Some(5), None),
        (6, 3, 64, 16, None, Some(20.0)),
    ] {
        let shape = Heads {
            heads,
            kv_heads: kv,
            head_dim: hd,
            divisor: (hd as f32).sqrt(),
            softcap,
        };
        let (cache, keys, values) = cache(kv * hd, positions, &mut rng);
        let q = random(heads * hd, &mut rng);
        let first = positions.saturating_sub(window.unwrap_or(usize::MAX));
        let visible = first..positions;
        let want = exact(shape, &q, &keys, &values, visible.clone());
        let reference = decode_attention(Path::Reference, &cache, shape, &q, visible.clone());
        for (got, want) in reference.iter().zip(&want) {
            assert!(
                (f64::from(*got) - want).abs() <= 1e-5 * (1.0 + want.abs()),
                "{shape:?}: {got} vs {want}"
            );
        }
        for path in Path::available() {
            let got = decode_attention(path, &cache, shape, &q, visible.clone());
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&reference), "{path:?} on {shape:?}");
        }
    }
}

#[test]
fn the_cache_gives_back_what_was_appended_by_head() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(22);
    let (kv, hd, positions) = (3, 8, 35);
    let (cache, keys, values) = cache(kv * hd, positions, &mut rng);
    assert_eq!(cache.len(), positions);
    let by_head = |v: &[f32]| -> Vec<f32> {
        (0..kv)
            .flat_map(|g| (0..positions).flat_map(move |p| (0..hd).map(move |d| (g, p, d))))
            .map(|(g, p, d)| v[(p * kv + g) * hd + d])
            .collect()
    };
    assert_eq!(cache.keys_by_head(hd), by_head(&keys));
    assert_eq!(cache.values_by_head(hd), by_head(&values));
}
