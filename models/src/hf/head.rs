//! The head read at the last token: one linear layer (`lm_head`, the tied embedding, or a
//! sequence classifier's `score`, `[outputs, hidden]`), or a two-layer MLP score head as
//! INF-ORM-Llama3.1-70B has (`score.0`: hidden → hidden with bias, ReLU, `score.2`: hidden →
//! labels with bias; recognised from those weight names). Heads run in f32.

use candle_core::{DType, Device, Result, Tensor};
use std::collections::HashMap;

/// A head on the decoder's last hidden state.
#[derive(Clone, Debug)]
pub enum Head {
    /// `x Wᵀ`, no bias.
    Linear(Tensor),
    /// `relu(x W0ᵀ + b0) W2ᵀ + b2`.
    Mlp {
        hidden: (Tensor, Tensor),
        out: (Tensor, Tensor),
    },
    /// Another head's outputs soft-capped: `cap · tanh(y / cap)` (Gemma 2's logits).
    Capped { head: Box<Head>, cap: f64 },
}

impl Head {
    /// Outputs per token (vocabulary size or labels).
    pub fn outputs(&self) -> usize {
        match self {
            Head::Linear(w) => w.dims()[0],
            Head::Mlp { out, .. } => out.0.dims()[0],
            Head::Capped { head, .. } => head.outputs(),
        }
    }

    /// The head on `x` (`[n, hidden]`, f32): `[n, outputs]`.
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Head::Linear(w) => crate::transformer::project(x, w),
            Head::Mlp { hidden, out } => {
                let h = crate::transformer::project(x, &hidden.0)?.broadcast_add(&hidden.1)?;
                crate::transformer::project(&h.relu()?, &out.0)?.broadcast_add(&out.1)
            }
            Head::Capped { head, cap } => (head.apply(x)? / *cap)?.tanh()? * *cap,
        }
    }

    /// The sequence-classification head among `tensors`: `score.weight`, or the MLP's
    /// `score.0.{weight,bias}` and `score.2.{weight,bias}`. `Err` names the `score.*` tensors of
    /// a head of another shape; `Ok(None)` when there are none.
    pub fn score_from(
        tensors: &HashMap<String, Tensor>,
        device: &Device,
    ) -> std::result::Result<Option<Head>, String> {
        let mut names: Vec<&str> = tensors
            .keys()
            .map(String::as_str)
            .filter(|k| *k == "score" || k.starts_with("score."))
            .collect();
        names.sort_unstable();
        let get = |name: &str| -> std::result::Result<Tensor, String> {
            tensors[name]
                .to_dtype(DType::F32)
                .and_then(|t| t.to_device(device))
                .map_err(|e| format!("{name}: {e}"))
        };
        const MLP: [&str; 4] = [
            "score.0.bias",
            "score.0.weight",
            "score.2.bias",
            "score.2.weight",
        ];
        match names.as_slice() {
            [] => Ok(None),
            ["score.weight"] => Ok(Some(Head::Linear(get("score.weight")?))),
            n if n == MLP => Ok(Some(Head::Mlp {
                hidden: (get("score.0.weight")?, get("score.0.bias")?),
                out: (get("score.2.weight")?, get("score.2.bias")?),
            })),
            other => Err(format!(
                "the score head ({}) is neither one linear layer (`score.weight`) nor the \
                 two-layer MLP of INF-ORM (`score.0`, ReLU, `score.2`, with biases)",
                other.join(", ")
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mlp_head_is_linear_relu_linear_and_odd_heads_are_named() {
        let d = Device::Cpu;
        let t = |v: &[f32], shape: &[usize]| Tensor::from_slice(v, shape, &d).unwrap();
        let mut tensors = HashMap::new();
        tensors.insert(
            "score.0.weight".to_string(),
            t(&[1.0, 0.0, 0.0, -1.0], &[2, 2]),
        );
        tensors.insert("score.0.bias".to_string(), t(&[0.5, 0.5], &[2]));
        tensors.insert("score.2.weight".to_string(), t(&[2.0, 3.0], &[1, 2]));
        tensors.insert("score.2.bias".to_string(), t(&[1.0], &[1]));
        let head = Head::score_from(&tensors, &d).unwrap().unwrap();
        assert_eq!(head.outputs(), 1);
        // x = (1, 2): hidden = relu(1.5, -1.5) = (1.5, 0); out = 2·1.5 + 3·0 + 1 = 4.
        let y = head.apply(&t(&[1.0, 2.0], &[1, 2])).unwrap();
        assert_eq!(y.to_vec2::<f32>().unwrap(), vec![vec![4.0]]);
        tensors.insert("score.1.weight".to_string(), t(&[1.0], &[1]));
        let err = Head::score_from(&tensors, &d).unwrap_err();
        assert!(
            err.contains("score.1.weight") && err.contains("INF-ORM"),
            "{err}"
        );
        assert!(Head::score_from(&HashMap::new(), &d).unwrap().is_none());
    }
}
