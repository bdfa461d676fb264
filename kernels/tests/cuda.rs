//! The CUDA kernels against their CPU references (run with `--features cuda` on a machine with
//! a GPU; without one these tests say so and pass, as the `cuda` feature is only built there).
//! Inputs are fresh random numbers each run (the seed is printed; `STEERFLOW_TEST_SEED` repeats
//! a run), so every GPU check tries new values.
#![cfg(feature = "cuda")]
#![allow(clippy::unwrap_used)]

use candle_core::{Device, Tensor};
use steerflow_kernels::communicator::Communicator;
use steerflow_kernels::device_sampling::{sample_row, RowParams, SampleRows};
use steerflow_kernels::judge_digits::{digit_rating, DigitRatings};

fn gpu() -> Option<Device> {
    match Device::new_cuda(0) {
        Ok(d) => Some(d),
        Err(e) => {
            eprintln!("no CUDA device ({e}): the GPU comparisons did not run");
            None
        }
    }
}

/// Random logits in [-5, 5) from a fresh seed (printed), or `$STEERFLOW_TEST_SEED`.
fn logits(rows: usize, vocab: usize) -> Vec<f32> {
    use rand::{Rng, SeedableRng};
    let seed = std::env::var("STEERFLOW_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("logits from seed {seed} (STEERFLOW_TEST_SEED={seed} repeats them)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..rows * vocab)
        .map(|_| rng.random_range(-5.0f32..5.0))
        .collect()
}

#[test]
fn device_sampling_draws_what_the_cpu_reference_draws() {
    let Some(gpu) = gpu() else { return };
    let (rows, vocab) = (64, 49_152);
    let values = logits(rows, vocab);
    let params: Vec<RowParams> = (0..rows)
        .map(|r| RowParams {
            temperature: 0.5 + (r % 4) as f32 * 0.3,
            top_p: [0.9, 0.5, 1.0, 0.99][r % 4],
            top_k: [0, 40, 0, 200][r % 4],
            uniform: (r as f32 + 0.5) / rows as f32,
        })
        .collect();
    let on_gpu = Tensor::from_vec(values.clone(), (rows, vocab), &gpu).unwrap();
    let ids = SampleRows {
        rows: params.clone(),
    }
    .sample(&on_gpu)
    .unwrap();
    // expf on the GPU and on the CPU differ in the last bits, which can move a draw that lands
    // on a boundary by one token; anything beyond that is a bug.
    let mut same = 0;
    for (r, id) in ids.iter().enumerate() {
        let reference = sample_row(&values[r * vocab..(r + 1) * vocab], &params[r]);
        if *id == reference {
            same += 1;
        }
    }
    assert!(same >= rows - 1, "{same} of {rows} rows agree");
}

#[test]
fn device_digit_ratings_match_the_cpu_reference() {
    let Some(gpu) = gpu() else { return };
    let (rows, vocab) = (16, 49_152);
    let values = logits(rows, vocab);
    let op = DigitRatings {
        digit_token_ids: vec![32, 33, 34, 35, 36],
    };
    let on_gpu = Tensor::from_vec(values.clone(), (rows, vocab), &gpu).unwrap();
    for (r, rating) in op.ratings(&on_gpu).unwrap().iter().enumerate() {
        let reference =
            digit_rating(&values[r * vocab..(r + 1) * vocab], &op.digit_token_ids).unwrap();
        assert!(
            (rating.expected - reference.expected).abs() < 1e-9,
            "row {r}"
        );
        assert!(
            (rating.digit_mass - reference.digit_mass).abs()
                < 1e-9 * reference.digit_mass.max(1e-300),
            "row {r}"
        );
    }
}

#[test]
fn nccl_over_one_gpu_is_the_identity() {
    let Some(gpu) = gpu() else { return };
    let ranks =
        steerflow_kernels::cuda::nccl::NcclGroup::ranks(std::slice::from_ref(&gpu)).unwrap();
    assert_eq!(ranks.len(), 1);
    let x = Tensor::new(&[1.5f32, -2.0, 3.25], &gpu).unwrap();
    let sum = ranks[0].all_reduce_sum(&x).unwrap();
    assert_eq!(sum.to_vec1::<f32>().unwrap(), vec![1.5, -2.0, 3.25]);
}

#[test]
fn nccl_all_reduce_sums_over_the_gpus() {
    let devices: Vec<Device> = (0..2).filter_map(|i| Device::new_cuda(i).ok()).collect();
    if devices.len() < 2 {
        eprintln!("fewer than 2 CUDA devices: the NCCL all-reduce did not run");
        return;
    }
    let ranks = steerflow_kernels::cuda::nccl::NcclGroup::ranks(&devices).unwrap();
    let sums: Vec<Vec<f32>> = std::thread::scope(|scope| {
        let handles: Vec<_> = ranks
            .iter()
            .zip(&devices)
            .map(|(comm, device)| {
                scope.spawn(move || {
                    let x = Tensor::new(&[comm.rank() as f32 + 1.0, 10.0], device).unwrap();
                    comm.all_reduce_sum(&x).unwrap().to_vec1::<f32>().unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for sum in sums {
        assert_eq!(sum, vec![3.0, 20.0]);
    }
}
