//! Compute threads. Each thread of work (a dataflow worker, or a command's main thread) runs the
//! kernels' parallel loops (the int8 products, candle's f32 matmuls) on a rayon pool of its own
//! that includes itself: the thread computes its share of each product and helpers steal the
//! rest, instead of handing every product to one shared pool and sleeping until it is done.
//! With a pool of one (two dataflow workers on two cores) the loops run inline with no
//! hand-off at all; two workers never queue their products behind each other on a shared pool.

/// The calling thread's pool: keep it for as long as the thread computes.
#[derive(Debug)]
pub struct ComputePool {
    pool: Option<rayon::ThreadPool>,
}

impl ComputePool {
    /// Threads in the calling thread's pool, itself included.
    pub fn threads(&self) -> usize {
        self.pool
            .as_ref()
            .map_or_else(rayon::current_num_threads, |p| p.current_num_threads())
    }
}

/// The compute threads each of `workers` threads of work gets: `RAYON_NUM_THREADS` when set
/// (the job sets it at start-up), else max(1, cores ÷ workers).
pub fn configured_threads(workers: usize) -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            (cores / workers.max(1)).max(1)
        })
}

/// Makes the calling thread the first of a pool of `threads` (it and `threads - 1` helpers). A
/// thread already in a pool stays in it.
pub fn join(threads: usize) -> ComputePool {
    if rayon::current_thread_index().is_some() {
        return ComputePool { pool: None };
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .thread_name(|i| format!("steerflow-compute-{i}"))
        .use_current_thread()
        .build()
        .ok();
    ComputePool { pool }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayon::prelude::*;

    #[test]
    fn a_joined_thread_is_the_first_of_its_own_pool_and_computes_in_it() {
        std::thread::spawn(|| {
            assert_eq!(rayon::current_thread_index(), None);
            let pool = join(2);
            assert_eq!(rayon::current_thread_index(), Some(0));
            assert_eq!((pool.threads(), rayon::current_num_threads()), (2, 2));
            let sum: u64 = (0..10_000u64).into_par_iter().sum();
            assert_eq!(sum, 49_995_000);
            // Joining again keeps the pool it is in.
            assert_eq!(join(4).threads(), 2);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_pool_of_one_runs_parallel_loops_on_the_calling_thread() {
        std::thread::spawn(|| {
            let _pool = join(1);
            let me = std::thread::current().id();
            let threads: Vec<_> = (0..64)
                .into_par_iter()
                .map(|_| std::thread::current().id())
                .collect();
            assert!(threads.iter().all(|t| *t == me));
        })
        .join()
        .unwrap();
    }
}
