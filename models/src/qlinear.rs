//! A linear layer from a GGUF tensor: on the CPU, Q8_0, 4-bit (Q4_0, Q4_1, Q4_K), 5-bit (Q5_0,
//! Q5_1, Q5_K) and 6-bit (Q6_K) weights run on steerflow's int8 kernel
//! (`steerflow_kernels::qgemm`: repacked at load for the fastest path the CPU runs, AVX-512 VNNI
//! or AVX2, rayon threads); everything else on candle's `QMatMul`. `STEERFLOW_CPU_MATMUL` chooses
//! another kernel, to compare them in one run: `candle` (as does candle's own
//! `CANDLE_DEQUANTIZE_ALL`), or one path of the int8 kernel (`avx512-vnni`, `avx2`, `reference`).

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Module, Tensor};
use std::sync::Arc;
use steerflow_kernels::qgemm::{
    matmul, matmul_with, PackedWeights, Path, Q8Weights, STORED_FORMATS,
};

/// Which kernel runs the CPU's quantized matrix products.
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
    Int8(Arc<PackedWeights>, Option<Path>),
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

impl CpuMatmul {
    /// The int8 kernel's path this choice runs (`Some(None)`: the fastest), or `None` for
    /// candle's kernel.
    fn int8_path(self) -> Option<Option<Path>> {
        match self {
            CpuMatmul::Int8 => Some(None),
            CpuMatmul::Int8On(path) => Some(Some(path)),
            CpuMatmul::Candle => None,
        }
    }
}

/// Whether the int8 kernel runs weights of `dtype` (as they are stored, without requantizing).
pub(crate) fn int8_kernel_runs(dtype: GgmlDType) -> bool {
    dtype == GgmlDType::Q8_0 || STORED_FORMATS.contains(&dtype)
}

/// `tensors` (each `[outputs, inputs]`, the same inputs) stacked into the int8 kernel's weights
/// in the layout of `path` (`None`: the fastest), with each tensor's outputs; `None` unless
/// every one is on the CPU and of one format the kernel runs (Q8_0, or one 4-, 5- or 6-bit
/// format, whose stored blocks are repacked as they are).
fn stacked_int8(
    tensors: &[QTensor],
    path: Option<Path>,
) -> candle_core::Result<Option<(PackedWeights, Vec<usize>)>> {
    let shapes: Vec<Option<(usize, usize)>> =
        tensors.iter().map(|t| t.shape().dims2().ok()).collect();
    let inputs = shapes.first().copied().flatten().map(|(_, k)| k);
    let dtype = tensors.first().map(QTensor::dtype);
    let same = tensors.iter().zip(&shapes).all(|(t, shape)| {
        t.device().is_cpu()
            && Some(t.dtype()) == dtype
            && shape.is_some_and(|(_, k)| Some(k) == inputs)
    });
    let (Some(k), Some(dtype)) = (inputs.filter(|_| same), dtype) else {
        return Ok(None);
    };
    let outputs: Vec<usize> = shapes.iter().map(|s| s.map_or(0, |(n, _)| n)).collect();
    let n = outputs.iter().sum();
    let layout = path.unwrap_or_else(Path::best).layout();
    let weights = if dtype == GgmlDType::Q8_0 {
        let mut stacked = Vec::with_capacity(n * k);
        for t in tensors {
            stacked.extend(t.dequantize(&t.device())?.flatten_all()?.to_vec1::<f32>()?);
        }
        Q8Weights::quantize_as(layout, &stacked, n, k)
            .ok()
            .map(PackedWeights::Q8)
    } else if int8_kernel_runs(dtype) {
        // Stacking rows of whole blocks is concatenating the tensors' bytes.
        let mut raw = Vec::new();
        for t in tensors {
            raw.extend_from_slice(&t.data()?);
        }
        PackedWeights::from_gguf(layout, dtype, &raw, (n, k)).and_then(Result::ok)
    } else {
        None
    };
    Ok(weights.map(|w| (w, outputs)))
}

impl QLinear {
    /// The layer of `t` (`[outputs, inputs]`), on `kernel` where it applies (weights on the CPU
    /// of a format it runs).
    pub fn from_qtensor(t: QTensor, kernel: CpuMatmul) -> candle_core::Result<Self> {
        if let Some(path) = kernel.int8_path() {
            if let Some((weights, _)) = stacked_int8(std::slice::from_ref(&t), path)? {
                return Ok(Self::Int8(Arc::new(weights), path));
            }
        }
        Ok(Self::Candle(QMatMul::from_qtensor(t)?))
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::Candle(m) => m.forward(x),
            Self::Int8(w, path) => {
                let (y, mut dims) = int8_product(w, *path, x)?;
                if let Some(last) = dims.last_mut() {
                    *last = w.outputs();
                }
                Tensor::from_vec(y, dims, x.device())
            }
        }
    }
}

/// `x · Wᵀ` on the int8 kernel: the product, row-major, and `x`'s dimensions.
fn int8_product(
    w: &PackedWeights,
    path: Option<Path>,
    x: &Tensor,
) -> candle_core::Result<(Vec<f32>, Vec<usize>)> {
    let xs = x
        .flatten_all()?
        .to_dtype(candle_core::DType::F32)?
        .to_vec1::<f32>()?;
    let y = match path {
        Some(path) => matmul_with(path, &xs, w),
        None => matmul(&xs, w),
    }
    .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    Ok((y, x.dims().to_vec()))
}

/// Linear layers that read the same input (q, k and v; gate and up), run as one product where
/// the int8 kernel runs them all: the input is quantized once and one pass covers every output
/// column, which keeps the narrow k and v products from running alone. Each column's result is
/// what it is alone (the kernel computes every (row, column) the same way), so fusing changes
/// no bit.
#[derive(Debug, Clone)]
pub enum FusedLinear {
    /// The layers' weights stacked, the path that runs them, and each layer's outputs.
    Int8 {
        weights: Arc<PackedWeights>,
        path: Option<Path>,
        outputs: Vec<usize>,
    },
    /// Each layer on its own (candle's kernel, or weights the int8 kernel does not take).
    Separate(Vec<QLinear>),
}

impl FusedLinear {
    /// The layers of `tensors` (each `[outputs, inputs]`, the same inputs), fused where every
    /// one is of one format the int8 kernel runs, on the CPU, and `kernel` is the int8 kernel.
    pub fn from_qtensors(tensors: Vec<QTensor>, kernel: CpuMatmul) -> candle_core::Result<Self> {
        if let Some(path) = kernel.int8_path() {
            if let Some((weights, outputs)) = stacked_int8(&tensors, path)? {
                return Ok(Self::Int8 {
                    weights: Arc::new(weights),
                    path,
                    outputs,
                });
            }
        }
        let layers = tensors
            .into_iter()
            .map(|t| QLinear::from_qtensor(t, kernel))
            .collect::<candle_core::Result<_>>()?;
        Ok(Self::Separate(layers))
    }

    /// Each layer's `x · Wᵀ`, in the order the layers were given.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Vec<Tensor>> {
        let (weights, path, outputs) = match self {
            Self::Separate(layers) => return layers.iter().map(|l| l.forward(x)).collect(),
            Self::Int8 {
                weights,
                path,
                outputs,
            } => (weights, *path, outputs),
        };
        let (y, dims) = int8_product(weights, path, x)?;
        let total = weights.outputs();
        let rows = y.len() / total.max(1);
        let mut first = 0;
        let mut parts = Vec::with_capacity(outputs.len());
        for &n in outputs {
            let mut part = Vec::with_capacity(rows * n);
            for row in y.chunks_exact(total) {
                part.extend_from_slice(&row[first..first + n]);
            }
            let mut dims = dims.clone();
            if let Some(last) = dims.last_mut() {
                *last = n;
            }
            parts.push(Tensor::from_vec(part, dims, x.device())?);
            first += n;
        }
        Ok(parts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn the_int8_kernel_is_as_close_as_candles_to_the_dequantized_product_in_every_format() {
        let (n, k, m) = (96, 768, 5);
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
            .collect();
        let x: Vec<f32> = (0..m * k)
            .map(|i| ((i * 104729) % 997) as f32 / 99.7 - 5.0)
            .collect();
        let w = Tensor::from_vec(w, (n, k), &Device::Cpu).unwrap();
        let x = Tensor::from_vec(x, (m, k), &Device::Cpu).unwrap();
        for dtype in [
            GgmlDType::Q8_0,
            GgmlDType::Q4_0,
            GgmlDType::Q4_1,
            GgmlDType::Q4K,
            GgmlDType::Q5_0,
            GgmlDType::Q5_1,
            GgmlDType::Q5K,
            GgmlDType::Q6K,
        ] {
            assert!(int8_kernel_runs(dtype), "{dtype:?}");
            let q = || QTensor::quantize(&w, dtype).unwrap();
            let exact = x.matmul(&q().dequantize(&Device::Cpu).unwrap().t().unwrap());
            let exact = exact.unwrap();
            let ours = QLinear::from_qtensor(q(), CpuMatmul::Int8).unwrap();
            assert!(matches!(ours, QLinear::Int8(_, None)), "{dtype:?}");
            let theirs = QLinear::Candle(QMatMul::from_qtensor(q()).unwrap());
            let error = |y: Tensor| -> f32 {
                let d = (y - &exact).unwrap().abs().unwrap();
                d.max_all().unwrap().to_scalar().unwrap()
            };
            let ours = error(ours.forward(&x).unwrap());
            let theirs = error(theirs.forward(&x).unwrap());
            let scale: f32 = exact.abs().unwrap().max_all().unwrap().to_scalar().unwrap();
            // Against the product of the dequantized weights both differ by the activations'
            // 8-bit quantization (0.5-0.8% of the largest output here): ours no more than
            // candle's, give or take a tenth of a percent.
            eprintln!("{dtype:?}: ours {ours}, candle {theirs} of {scale}");
            assert!(ours <= 0.01 * scale, "{dtype:?}: {ours} of {scale}");
            assert!(
                ours <= theirs + 1e-3 * scale,
                "{dtype:?}: {ours} vs {theirs}"
            );
        }
    }

    #[test]
    fn fused_layers_compute_the_bits_of_each_layer_alone() {
        let k = 576;
        let x: Vec<f32> = (0..3 * k)
            .map(|i| ((i * 104729) % 997) as f32 / 99.7 - 5.0)
            .collect();
        let x = Tensor::from_vec(x, (3, k), &Device::Cpu).unwrap();
        let layer = |n: usize, seed: usize| {
            let w: Vec<f32> = (0..n * k)
                .map(|i| (((i + seed) * 7919) % 1000) as f32 / 1000.0 - 0.5)
                .collect();
            let w = Tensor::from_vec(w, (n, k), &Device::Cpu).unwrap();
            QTensor::quantize(&w, GgmlDType::Q8_0).unwrap()
        };
        let shapes = [(576, 1), (192, 2), (40, 3)];
        for kernel in [CpuMatmul::Int8, CpuMatmul::Candle] {
            let fused = FusedLinear::from_qtensors(
                shapes.iter().map(|&(n, s)| layer(n, s)).collect(),
                kernel,
            )
            .unwrap();
            assert_eq!(
                matches!(fused, FusedLinear::Int8 { .. }),
                kernel == CpuMatmul::Int8
            );
            let parts = fused.forward(&x).unwrap();
            for (part, &(n, s)) in parts.iter().zip(&shapes) {
                let alone = QLinear::from_qtensor(layer(n, s), kernel)
                    .unwrap()
                    .forward(&x)
                    .unwrap();
                assert_eq!(part.dims(), &[3, n]);
                let bits = |t: &Tensor| {
                    t.flatten_all()
                        .unwrap()
                        .to_vec1::<f32>()
                        .unwrap()
                        .iter()
                        .map(|v| v.to_bits())
                        .collect::<Vec<_>>()
                };
                assert_eq!(bits(part), bits(&alone), "{kernel:?} layer of {n}");
            }
        }
    }
}
