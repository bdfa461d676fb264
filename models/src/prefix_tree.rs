//! Runs many token sequences that share prefixes, each shared prefix once, level by level.
//!
//! The sequences are walked as a trie: a session is extended by the tokens all its remaining
//! sequences share, then forked at each branch point (forking shares the KV cache). Every
//! extension of one level runs as one ragged batch ([`LanguageModel::extend_batch`]), so the
//! judge's questions about the N responses to one prompt become three batches (the shared
//! instructions and prompt, the N responses, the 5 × N question endings) instead of 1 + N + 5N
//! extensions one after another. A model's batched rows equal its rows alone, so the logits are
//! those of extending each branch by itself.

use crate::{LanguageModel, LmSession, ModelError};
use candle_core::Tensor;

/// Positions at most held by the sessions of one batch once extended (each holds its whole KV
/// cache while the batch runs); a level with more runs as several batches.
const MAX_BATCH_POSITIONS: usize = 8192;

/// Members sharing `sequences[m][..depth]`, which `session` holds; `logits` are the next-token
/// logits after that prefix (None at the root).
struct Node {
    session: Box<dyn LmSession>,
    members: Vec<usize>,
    depth: usize,
    logits: Option<Tensor>,
}

/// An extension to run: `session` (a fork of its parent) by `sequences[members[0]][from..to]`.
struct Extension {
    session: Box<dyn LmSession>,
    members: Vec<usize>,
    from: usize,
    to: usize,
}

/// Next-token logits after the end of every sequence, and the number of tokens actually run.
pub fn run_shared_prefixes(
    model: &dyn LanguageModel,
    sequences: &[Vec<u32>],
) -> Result<(Vec<Tensor>, u64), ModelError> {
    if let Some(i) = sequences.iter().position(Vec::is_empty) {
        return Err(ModelError::Judge(format!("sequence {i} is empty")));
    }
    let mut out: Vec<Option<Tensor>> = vec![None; sequences.len()];
    let mut tokens_run = 0u64;
    let mut frontier = vec![Node {
        session: model.start(),
        members: (0..sequences.len()).collect(),
        depth: 0,
        logits: None,
    }];
    while !frontier.is_empty() {
        let mut level = Vec::new();
        for node in frontier {
            split(node, sequences, &mut out, &mut level);
        }
        frontier = Vec::with_capacity(level.len());
        let mut batch: Vec<Extension> = Vec::new();
        let mut positions = 0;
        for ext in level {
            if !batch.is_empty() && positions + ext.to > MAX_BATCH_POSITIONS {
                let full = std::mem::take(&mut batch);
                tokens_run += run_batch(model, sequences, full, (&mut frontier, &mut out))?;
                positions = 0;
            }
            positions += ext.to;
            batch.push(ext);
        }
        if !batch.is_empty() {
            tokens_run += run_batch(model, sequences, batch, (&mut frontier, &mut out))?;
        }
    }
    let logits = out
        .into_iter()
        .map(|l| l.ok_or_else(|| ModelError::Judge("a sequence got no logits".into())))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((logits, tokens_run))
}

/// Gives the members of `node` that end at its depth their logits, and turns the others into
/// extensions: the run of tokens they all share, or one per next token at a branch point.
fn split(
    node: Node,
    sequences: &[Vec<u32>],
    out: &mut [Option<Tensor>],
    level: &mut Vec<Extension>,
) {
    let (ended, rest): (Vec<usize>, Vec<usize>) = node
        .members
        .iter()
        .partition(|&&m| sequences[m].len() == node.depth);
    for m in ended {
        out[m] = node.logits.clone();
    }
    if rest.is_empty() {
        return;
    }
    // Group by the next token, in first-appearance order; each group then runs the tokens its
    // members share from here (at least that next token).
    let mut groups: Vec<(u32, Vec<usize>)> = Vec::new();
    for &m in &rest {
        let token = sequences[m][node.depth];
        match groups.iter_mut().find(|(t, _)| *t == token) {
            Some((_, g)) => g.push(m),
            None => groups.push((token, vec![m])),
        }
    }
    for (_, members) in groups {
        let first = &sequences[members[0]];
        let shortest = members
            .iter()
            .map(|&m| sequences[m].len())
            .min()
            .unwrap_or(node.depth);
        let mut to = node.depth + 1;
        while to < shortest && members.iter().all(|&m| sequences[m][to] == first[to]) {
            to += 1;
        }
        level.push(Extension {
            session: node.session.fork(),
            members,
            from: node.depth,
            to,
        });
    }
}

/// Runs `batch` as one ragged batch; an extension whose members all end there gives them its
/// logits (its session is dropped at once), any other becomes a node of the next level.
/// Returns the tokens run.
fn run_batch(
    model: &dyn LanguageModel,
    sequences: &[Vec<u32>],
    mut batch: Vec<Extension>,
    (next, out): (&mut Vec<Node>, &mut [Option<Tensor>]),
) -> Result<u64, ModelError> {
    let chunks: Vec<&[u32]> = batch
        .iter()
        .map(|e| &sequences[e.members[0]][e.from..e.to])
        .collect();
    let tokens = chunks.iter().map(|c| c.len() as u64).sum();
    let logits = {
        let mut sessions: Vec<&mut dyn LmSession> = Vec::with_capacity(batch.len());
        for e in batch.iter_mut() {
            sessions.push(e.session.as_mut());
        }
        model.extend_batch(&mut sessions, &chunks)?
    };
    for (i, ext) in batch.into_iter().enumerate() {
        let row = logits.get(i)?;
        if ext.members.iter().all(|&m| sequences[m].len() == ext.to) {
            for m in ext.members {
                out[m] = Some(row.clone());
            }
            continue;
        }
        next.push(Node {
            session: ext.session,
            members: ext.members,
            depth: ext.to,
            logits: Some(row),
        });
    }
    Ok(tokens)
}
