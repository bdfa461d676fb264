//! A sequence's keys and values per block.
//!
//! On the CPU a block's keys and values are a [`LayerCache`] (steerflow-kernels' layout for the
//! decode attention: keys in tiles of sixteen positions, values position after position),
//! appended in place; a forked session shares its parent's until one of them appends (copy on
//! write, `Arc::make_mut`), so the samples drawn from one prefilled prompt copy its cache once
//! each, not once per step (before, each step concatenated the whole cache anew: ~10% of decode
//! time at batch 32). A decode step, or any chunk of up to 64 tokens, runs
//! `steerflow_kernels::attention` over it one query at a time; under
//! `STEERFLOW_CPU_MATMUL=candle` candle's operations instead, as candle's own model does
//! (tests/engine.rs holds the two to 1e-4: at that depth the int8 activations amplify a change
//! of summation order). A longer chunk (a prompt's prefill) reads the cache as tensors and runs
//! candle's matmuls. On a GPU the cache stays tensors, concatenated each step.

use candle_core::Tensor;
use std::sync::Arc;
use steerflow_kernels::attention::LayerCache;

/// One block's keys and values of one sequence.
#[derive(Clone, Debug)]
pub(super) enum LayerKv {
    /// `[1, kv_heads, positions, head_dim]` on the model's device.
    Tensors(Tensor, Tensor),
    /// The CPU's, shared with forked sessions until written.
    Host(Arc<LayerCache>),
}

impl LayerKv {
    /// Appends `keys` and `values` (`[t][kv_head][head_dim]` each, `width` values a position)
    /// to the host cache `cache`, creating it; copies it first if a forked session shares it.
    pub(super) fn append_host(
        cache: &mut Option<LayerKv>,
        width: usize,
        keys: &[f32],
        values: &[f32],
    ) {
        match cache {
            Some(LayerKv::Host(layer)) => Arc::make_mut(layer).append(width, keys, values),
            _ => {
                let mut layer = LayerCache::default();
                layer.append(width, keys, values);
                *cache = Some(LayerKv::Host(Arc::new(layer)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forked_cache_is_copied_when_written_not_before() {
        let mut parent = None;
        LayerKv::append_host(&mut parent, 2, &[1.0, 2.0], &[3.0, 4.0]);
        let mut child = parent.clone();
        let layer = |c: &Option<LayerKv>| match c {
            Some(LayerKv::Host(layer)) => layer.clone(),
            _ => panic!("no host cache"),
        };
        assert!(Arc::ptr_eq(&layer(&parent), &layer(&child)));
        LayerKv::append_host(&mut child, 2, &[5.0, 6.0], &[7.0, 8.0]);
        assert!(!Arc::ptr_eq(&layer(&parent), &layer(&child)));
        assert_eq!(layer(&parent).len(), 1);
        assert_eq!(layer(&child).len(), 2);
        assert_eq!(layer(&child).values_by_head(2), [3.0, 4.0, 7.0, 8.0]);
        assert_eq!(layer(&parent).keys_by_head(2), [1.0, 2.0]);
    }
}
