//! The forms a dataset is written in and the files of a run: export formats, which shard of
//! which run a file is, and its path as the Hugging Face hub names split files.

use serde::{Deserialize, Serialize};

/// A file the run wrote.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardFile {
    pub path: String,
    pub rows: u64,
    pub bytes: u64,
    pub format: ExportFormat,
}

/// The forms pairs are written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExportFormat {
    /// TRL conversational: `prompt`, `chosen`, `rejected` as message lists, with all score
    /// columns (`data/`, the dataset's default config).
    Conversational,
    /// TRL standard: strings, the prompt rendered by the policy's chat template with the
    /// generation prompt (`standard/`).
    Standard,
    /// NeMo-Aligner DPO jsonl: `prompt` (chat template applied), `chosen_response`,
    /// `rejected_response`, `chosen_reward`, `rejected_reward` (`nemo/`).
    Nemo,
}

impl ExportFormat {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "conversational" => Some(Self::Conversational),
            "standard" => Some(Self::Standard),
            "nemo" => Some(Self::Nemo),
            _ => None,
        }
    }

    /// The path of shard `k` of `n` in this format.
    pub fn shard_path(self, k: usize, n: usize) -> String {
        self.path_of(Shard::plain(k, n))
    }

    /// The path of `shard` in this format: `<folder>/[<run>/]train-0000k-of-0000n.<ext>`.
    pub fn path_of(self, shard: Shard<'_>) -> String {
        let (folder, ext) = match self {
            Self::Conversational => ("data", "parquet"),
            Self::Standard => ("standard", "parquet"),
            Self::Nemo => ("nemo", "jsonl"),
        };
        let run = shard.run.map(|r| format!("{r}/")).unwrap_or_default();
        format!("{folder}/{run}train-{:05}-of-{:05}.{ext}", shard.k, shard.n)
    }
}

/// Which file of a dataset: shard `k` of `n`, in a run's own folder when `run` is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard<'a> {
    pub k: usize,
    pub n: usize,
    pub run: Option<&'a str>,
}

impl Shard<'_> {
    pub fn plain(k: usize, n: usize) -> Self {
        Self { k, n, run: None }
    }
}

/// The path of shard `k` of `n`, as the Hugging Face hub names split files.
pub fn shard_path(k: usize, n: usize) -> String {
    format!("data/train-{k:05}-of-{n:05}.parquet")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_names_follow_the_hub() {
        assert_eq!(shard_path(0, 4), "data/train-00000-of-00004.parquet");
        assert_eq!(shard_path(12, 100), "data/train-00012-of-00100.parquet");
        let run = Shard {
            k: 1,
            n: 2,
            run: Some("r1"),
        };
        assert_eq!(
            ExportFormat::Nemo.path_of(run),
            "nemo/r1/train-00001-of-00002.jsonl"
        );
    }
}
