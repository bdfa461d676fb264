//! This machine's peak rates for the kernel's instructions, measured: integer multiply-adds
//! (`vpdpbusd` on AVX-512 VNNI; `maddubs` + `madd` + `add` on AVX2) and f32 FMAs, eight
//! independent chains per thread on every thread at once. docs/performance.md states each
//! product's rate as a fraction of them (`cargo run -p steerflow-kernels --example
//! qgemm_bench`).

use super::Path;
use std::time::Instant;

/// Measured rates, per second over all threads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Peak {
    /// 8-bit multiply-adds per second.
    pub int8_macs: f64,
    /// f32 fused multiply-adds per second.
    pub f32_fmas: f64,
}

/// Rounds per measurement: enough for tens of milliseconds per thread.
const ROUNDS: u32 = 20_000_000;

/// The peak of `path`'s instructions on `threads` threads at once; `None` for the reference
/// (plain Rust has no fixed instruction mix to measure).
pub fn measure(path: Path, threads: usize) -> Option<Peak> {
    let threads = threads.max(1);
    let (int8_per_round, f32_per_round) = match path {
        Path::Reference => return None,
        // Eight chains of 64 (VNNI) or 32 (AVX2) multiply-adds; eight chains of 16 or 8 lanes.
        Path::Avx512Vnni => (8.0 * 64.0, 8.0 * 16.0),
        Path::Avx2 => (8.0 * 32.0, 8.0 * 8.0),
    };
    let kernel = super::Kernel::of(path);
    let timed = |int8: bool| {
        let started = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(move || {
                    std::hint::black_box(if int8 {
                        int8_chains(kernel, ROUNDS, 1, 1) as f64
                    } else {
                        fma_chains(kernel, ROUNDS, 1.0)
                    })
                });
            }
        });
        started.elapsed().as_secs_f64()
    };
    let rounds = f64::from(ROUNDS) * threads as f64;
    Some(Peak {
        int8_macs: rounds * int8_per_round / timed(true),
        f32_fmas: rounds * f32_per_round / timed(false),
    })
}

/// The integer chains of `kernel`: every lane of every chain summed.
fn int8_chains(kernel: super::Kernel, rounds: u32, a: u8, b: i8) -> i64 {
    match kernel {
        super::Kernel::Reference => 0,
        #[cfg(target_arch = "x86_64")]
        super::Kernel::Avx2(k) => k.maddubs_chains(rounds, a, b, FLIP),
        #[cfg(target_arch = "x86_64")]
        super::Kernel::Avx512Vnni(k) => k.dpbusd_chains(rounds, a, b),
    }
}

fn fma_chains(kernel: super::Kernel, rounds: u32, c: f32) -> f64 {
    match kernel {
        super::Kernel::Reference => 0.0,
        #[cfg(target_arch = "x86_64")]
        super::Kernel::Avx2(k) => k.fma_chains(rounds, c),
        #[cfg(target_arch = "x86_64")]
        super::Kernel::Avx512Vnni(k) => k.fma_chains(rounds, c),
    }
}

/// What the AVX2 chains flip `b` by every other round.
const FLIP: i8 = 0b0000_0110;

#[cfg(test)]
mod tests {
    use super::*;

    /// The chains' sums in plain Rust (i32 lanes wrap as the registers do).
    fn int8_reference(path: Path, rounds: u32, a: u8, b: i8) -> i64 {
        let lane = |chain: u8| {
            let mut v = 0i32;
            for r in 0..rounds {
                let (x, y) = match path {
                    Path::Avx2 => (a.wrapping_add(chain), if r % 2 == 0 { b } else { b ^ FLIP }),
                    _ => (a, b),
                };
                v = v.wrapping_add(4 * i32::from(x) * i32::from(y));
            }
            i64::from(v)
        };
        let lanes = if path == Path::Avx2 { 8 } else { 16 };
        (0..8u8).map(|c| lanes * lane(c)).sum()
    }

    #[test]
    fn every_path_s_peak_loops_compute_what_plain_rust_computes() {
        for path in Path::available() {
            let kernel = super::super::Kernel::of(path);
            if path == Path::Reference {
                assert_eq!(measure(path, 1), None);
                continue;
            }
            for (rounds, a, b) in [(1000, 3, -7), (777, 9, 11), (5, 1, 1)] {
                assert_eq!(
                    int8_chains(kernel, rounds, a, b),
                    int8_reference(path, rounds, a, b),
                    "{path:?}"
                );
            }
            let lanes = if path == Path::Avx2 { 64.0 } else { 128.0 };
            // 0.25 × 1000 is exact in f32 at every step.
            assert_eq!(fma_chains(kernel, 1000, 0.25), lanes * 250.0, "{path:?}");
        }
    }
}
