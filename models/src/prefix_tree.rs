//! Runs many token sequences that share prefixes, each shared prefix once.
//!
//! The sequences are walked as a trie: a session is extended by the tokens all remaining
//! sequences share, then forked at each branch point (forking shares the KV cache). The judge's
//! questions about the N responses to one prompt share the judge instructions and the prompt; the
//! five questions about one response share the response too.

use crate::{LmSession, ModelError};
use candle_core::Tensor;

/// Next-token logits after the end of every sequence, and the number of tokens actually run.
/// `session` is where the sequences start (usually an empty session).
pub fn run_shared_prefixes(
    session: &dyn LmSession,
    sequences: &[Vec<u32>],
) -> Result<(Vec<Tensor>, u64), ModelError> {
    if let Some(i) = sequences.iter().position(Vec::is_empty) {
        return Err(ModelError::Judge(format!("sequence {i} is empty")));
    }
    let mut out: Vec<Option<Tensor>> = vec![None; sequences.len()];
    let mut tokens_run = 0u64;
    let members: Vec<usize> = (0..sequences.len()).collect();
    descend(
        session,
        sequences,
        &members,
        0,
        None,
        &mut out,
        &mut tokens_run,
    )?;
    let logits = out
        .into_iter()
        .map(|l| l.ok_or_else(|| ModelError::Judge("a sequence got no logits".into())))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((logits, tokens_run))
}

/// All `members` share `sequences[m][..depth]`, which `session` holds; `logits` are the
/// next-token logits after that prefix (None at the root).
fn descend(
    session: &dyn LmSession,
    sequences: &[Vec<u32>],
    members: &[usize],
    depth: usize,
    logits: Option<&Tensor>,
    out: &mut [Option<Tensor>],
    tokens_run: &mut u64,
) -> Result<(), ModelError> {
    // Members that end here take the logits computed so far.
    let (ended, rest): (Vec<usize>, Vec<usize>) =
        members.iter().partition(|&&m| sequences[m].len() == depth);
    for m in ended {
        out[m] = logits.cloned();
    }
    if rest.is_empty() {
        return Ok(());
    }
    // The run of tokens every remaining member shares from `depth`.
    let first = &sequences[rest[0]];
    let shortest = rest
        .iter()
        .map(|&m| sequences[m].len())
        .min()
        .unwrap_or(depth);
    let mut shared = depth;
    while shared < shortest && rest.iter().all(|&m| sequences[m][shared] == first[shared]) {
        shared += 1;
    }
    if shared > depth {
        let mut child = session.fork();
        let child_logits = child.extend(&first[depth..shared])?;
        *tokens_run += (shared - depth) as u64;
        return descend(
            child.as_ref(),
            sequences,
            &rest,
            shared,
            Some(&child_logits),
            out,
            tokens_run,
        );
    }
    // Branch point: group by the next token, in first-appearance order.
    let mut groups: Vec<(u32, Vec<usize>)> = Vec::new();
    for &m in &rest {
        let token = sequences[m][depth];
        match groups.iter_mut().find(|(t, _)| *t == token) {
            Some((_, g)) => g.push(m),
            None => groups.push((token, vec![m])),
        }
    }
    // Each group shares at least its next token, so it makes progress from the same session.
    for (_, group) in groups {
        descend(session, sequences, &group, depth, logits, out, tokens_run)?;
    }
    Ok(())
}
