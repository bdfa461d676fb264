//! A linear layer from a GGUF tensor: on the CPU, Q8_0 weights run on steerflow's int8 kernel
//! (`steerflow_kernels::qgemm`: repacked at load for the fastest path the CPU runs, AVX-512 VNNI
//! or AVX2, rayon threads); everything else on candle's `QMatMul`. `STEERFLOW_CPU_MATMUL` chooses
//! another kernel, to compare them in one run: `candle` (as does candle's own
//! `CANDLE_DEQUANTIZE_ALL`), or one path of the int8 kernel (`avx512-vnni`, `avx2`,
//! `reference`).

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Module, Tensor};
use std::sync::Arc;
use steerflow_kernels::qgemm::{matmul, matmul_with, Path, Q8Weights};

/// Which kernel runs the CPU's Q8_0 matrix products.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuMatmul {
    /// steerflow's int8 kernel on the fastest path this CPU runs (the default). Every path
    /// computes the same bits.
    Int8,
    /// steerflow's int8 kernel on one path (which this CPU must run).
    Int8On(Path),
    /// candle's `QMatMul`.
    Candle,
}

impl CpuMatmul {
    /// What `STEERFLOW_CPU_MATMUL` names (`int8`, `candle`, `avx512-vnni`, `avx2`, `reference`),
    /// `Candle` when `CANDLE_DEQUANTIZE_ALL` is set, else `Int8`. A path this CPU does not run,
    /// or a name it does not know, is reported and the default used.
    pub fn from_env() -> Self {
        if candle_dequantizes_all() {
            return Self::Candle;
        }
        let Ok(name) = std::env::var("STEERFLOW_CPU_MATMUL") else {
            return Self::Int8;
        };
        let path = match name.as_str() {
            "" | "int8" => return Self::Int8,
            "candle" => return Self::Candle,
            "avx512-vnni" => Some(Path::Avx512Vnni),
            "avx2" => Some(Path::Avx2),
            "reference" => Some(Path::Reference),
            _ => None,
        };
        match path {
            Some(p) if Path::available().contains(&p) => Self::Int8On(p),
            _ => {
                tracing::warn!(
                    value = %name,
                    runs = ?Path::available(),
                    "STEERFLOW_CPU_MATMUL names no kernel this CPU runs; using the fastest"
                );
                Self::Int8
            }
        }
    }
}

/// A linear layer without bias, `y = x · Wᵀ`.
#[derive(Debug, Clone)]
pub enum QLinear {
    /// The int8 kernel's weights, and the path that runs them (`None`: the fastest).
    Int8(Arc<Q8Weights>, Option<Path>),
    Candle(QMatMul),
}

/// candle's own switch `CANDLE_DEQUANTIZE_ALL`: its `QMatMul` dequantizes every weight to f32
/// at load.
pub(crate) fn candle_dequantizes_all() -> bool {
    env_set("CANDLE_DEQUANTIZE_ALL", None)
}

fn env_set(name: &str, value: Option<&str>) -> bool {
    std::env::var(name).is_ok_and(|v| match value {
        Some(want) => v == want,
        None => !v.is_empty() && v != "0",
    })
}

impl QLinear {
    /// The layer of `t` (`[outputs, inputs]`), on `kernel` where it applies (Q8_0 on the CPU).
    pub fn from_qtensor(t: QTensor, kernel: CpuMatmul) -> candle_core::Result<Self> {
        let path = match kernel {
            CpuMatmul::Int8 => None,
            CpuMatmul::Int8On(path) => Some(path),
            CpuMatmul::Candle => return Ok(Self::Candle(QMatMul::from_qtensor(t)?)),
        };
        if t.device().is_cpu() && t.dtype() == GgmlDType::Q8_0 {
            if let Ok((n, k)) = t.shape().dims2() {
                let w = t.dequantize(&t.device())?.flatten_all()?.to_vec1::<f32>()?;
                let layout = path.unwrap_or_else(Path::best).layout();
                if let Ok(weights) = Q8Weights::quantize_as(layout, &w, n, k) {
                    return Ok(Self::Int8(Arc::new(weights), path));
                }
            }
        }
        Ok(Self::Candle(QMatMul::from_qtensor(t)?))
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::Candle(m) => m.forward(x),
            Self::Int8(w, path) => {
                let mut dims = x.dims().to_vec();
                let xs = x
                    .flatten_all()?
                    .to_dtype(candle_core::DType::F32)?
                    .to_vec1::<f32>()?;
                let y = match path {
                    Some(path) => matmul_with(*path, &xs, w),
                    None => matmul(&xs, w),
                }
                .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
                if let Some(last) = dims.last_mut() {
                    *last = w.outputs();
                }
                Tensor::from_vec(y, dims, x.device())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn the_int8_kernel_computes_what_candles_q8_0_matmul_computes() {
        let (n, k, m) = (96, 576, 5);
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
            .collect();
        let x: Vec<f32> = (0..m * k)
            .map(|i| ((i * 104729) % 997) as f32 / 99.7 - 5.0)
            .collect();
        let w = Tensor::from_vec(w, (n, k), &Device::Cpu).unwrap();
        let x = Tensor::from_vec(x, (m, k), &Device::Cpu).unwrap();
        let q = || QTensor::quantize(&w, GgmlDType::Q8_0).unwrap();
        let ours = QLinear::from_qtensor(q(), CpuMatmul::Int8).unwrap();
        assert!(matches!(ours, QLinear::Int8(_, None)));
        let theirs = QLinear::Candle(QMatMul::from_qtensor(q()).unwrap());
        let (a, b) = (ours.forward(&x).unwrap(), theirs.forward(&x).unwrap());
        let diff: f32 = (a - &b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        let scale: f32 = b.abs().unwrap().max_all().unwrap().to_scalar().unwrap();
        assert!(diff <= 2e-3 * scale, "{diff} of {scale}");
    }
}
