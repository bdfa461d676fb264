//! The generation engine: continuous batching of many prompts' samples.
//!
//! A request is a prompt and one seed per sample. Its prompt is prefilled once and every sample
//! forks the prefilled session, sharing the prompt's KV cache. Each step runs one ragged batch
//! through the model ([`LanguageModel::extend_batch`]): prompts joining the batch bring their
//! whole prompt, running samples one token each, every sequence at its own position. A sample
//! that ends (EOS, a stop string, its length budget) leaves at once; waiting requests join while
//! the token budget allows.
//!
//! Sampling is deterministic: each sample draws from its own seeded sampler, and the model
//! computes every row of a batch exactly as it would alone, so a sample's tokens do not depend
//! on what else runs beside it (`tests/engine.rs` checks this against one-at-a-time runs).

use crate::generation::{earliest_stop, Generation, GenerationCounters, GenerationParams};
use crate::{LanguageModel, LmSession, ModelError};
use candle_core::Tensor;
use rayon::prelude::*;
use std::collections::VecDeque;
use std::time::Instant;
use steerflow_kernels::sampling::TokenSampler;
use steerflow_operators::records::FinishReason;

/// How much the engine runs at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineLimits {
    /// Most sequences (running samples plus joining prompts) in one batch.
    pub max_sequences: usize,
    /// Most tokens the running requests may hold in KV caches. A request reserves
    /// samples × (prompt + new-token budget) when it joins and frees it when its last sample
    /// ends; a request larger than the budget runs alone.
    pub max_tokens: usize,
}

impl Default for EngineLimits {
    fn default() -> Self {
        Self {
            max_sequences: 64,
            max_tokens: 65_536,
        }
    }
}

/// One prompt to sample: its tokens and a seed per sample.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationRequest {
    pub prompt_tokens: Vec<u32>,
    pub seeds: Vec<u64>,
}

/// What one [`generate_batched`] call ran.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct EngineStats {
    /// Batches run through the model.
    pub steps: u64,
    /// Rows (sequences) of all steps together; `rows / steps` is the mean batch.
    pub rows: u64,
    /// The most sequences in one step.
    pub peak_sequences: usize,
    /// The most KV-cache tokens reserved at once.
    pub peak_reserved_tokens: usize,
    /// Seconds in the model's batched forward passes.
    pub model_seconds: f64,
    /// Seconds drawing tokens and checking stop conditions.
    pub sampling_seconds: f64,
}

/// A request's generations in seed order, or why it failed.
pub type GenerationResult = Result<(Vec<Generation>, GenerationCounters), ModelError>;

/// A request that has joined the batch.
struct Running {
    index: usize,
    reserved: usize,
    budget: usize,
    seeds: Vec<u64>,
    generations: Vec<Option<Generation>>,
    counters: GenerationCounters,
    failed: Option<ModelError>,
}

/// One sample being drawn.
struct Sequence {
    slot: usize,
    sample: usize,
    session: Box<dyn LmSession>,
    sampler: TokenSampler,
    ids: Vec<u32>,
    logits: Tensor,
}

/// What runs in one step: a joining prompt or a sample's next token. (Rows move between the
/// step and the waiting list every token; boxing the larger variant would allocate each time.)
#[allow(clippy::large_enum_variant)]
enum Row {
    Prefill {
        slot: usize,
        session: Box<dyn LmSession>,
        prompt: Vec<u32>,
    },
    Decode(Sequence),
}

impl Row {
    fn slot(&self) -> usize {
        match self {
            Row::Prefill { slot, .. } => *slot,
            Row::Decode(seq) => seq.slot,
        }
    }

    fn tokens(&self) -> usize {
        match self {
            Row::Prefill { prompt, .. } => prompt.len(),
            Row::Decode(_) => 1,
        }
    }
}

/// Generates every request's samples, calling `on_done(request index, result)` as each request
/// finishes (in completion order) and `on_tokens(n)` after each step with the tokens it drew
/// (progress). Stops early, leaving the rest unreported, once `cancelled` returns true.
pub fn generate_batched(
    model: &dyn LanguageModel,
    requests: Vec<GenerationRequest>,
    params: &GenerationParams,
    limits: &EngineLimits,
    (mut on_done, mut on_tokens): (impl FnMut(usize, GenerationResult), impl FnMut(u64)),
    cancelled: impl Fn() -> bool,
) -> EngineStats {
    let mut stats = EngineStats::default();
    let text = model.text();
    let context = model.context_length();
    let mut waiting: VecDeque<(usize, GenerationRequest)> =
        requests.into_iter().enumerate().collect();
    let mut running: Vec<Option<Running>> = Vec::new();
    let mut sequences: Vec<Sequence> = Vec::new();
    let mut reserved = 0usize;
    while !cancelled() {
        // Admit waiting requests while the budgets allow (always one when nothing runs).
        let mut rows: Vec<Row> = Vec::new();
        let mut joining_samples = 0;
        while let Some((_, request)) = waiting.front() {
            let prompt_len = request.prompt_tokens.len();
            if prompt_len == 0 || prompt_len >= context {
                let (index, request) = waiting.pop_front().expect("front exists");
                on_done(
                    index,
                    Err(ModelError::ContextOverflow {
                        tokens: request.prompt_tokens.len(),
                        limit: context,
                        what: "prompt".into(),
                    }),
                );
                continue;
            }
            let budget = params.max_new_tokens.min(context - prompt_len);
            let cost = request.seeds.len() * (prompt_len + budget);
            let samples = request.seeds.len();
            let idle = sequences.is_empty() && rows.is_empty();
            // A request joins while there is a free row; its samples then wait for rows as
            // running ones end, so the batch stays full.
            let fits = reserved + cost <= limits.max_tokens
                && sequences.len() + joining_samples < limits.max_sequences;
            if !fits && !idle {
                break;
            }
            let (index, request) = waiting.pop_front().expect("front exists");
            if request.seeds.is_empty() {
                on_done(index, Ok((Vec::new(), GenerationCounters::default())));
                continue;
            }
            reserved += cost;
            joining_samples += samples;
            let slot = free_slot(&mut running);
            running[slot] = Some(Running {
                index,
                reserved: cost,
                budget,
                generations: vec![None; request.seeds.len()],
                seeds: request.seeds,
                counters: GenerationCounters {
                    prompt_tokens_prefilled: prompt_len as u64,
                    ..GenerationCounters::default()
                },
                failed: None,
            });
            rows.push(Row::Prefill {
                slot,
                session: model.start(),
                prompt: request.prompt_tokens,
            });
        }
        // The oldest samples get the rows left after the joining prompts; each draws its next
        // token, and the ones that end leave. The others wait, their logits in hand.
        let sampling = Instant::now();
        let room = limits.max_sequences.saturating_sub(rows.len());
        let mut stepping = std::mem::take(&mut sequences);
        let waiting_samples = stepping.split_off(room.min(stepping.len()));
        // On a GPU the batch's tokens are drawn on the device in one launch.
        let mut drawn = match device_draws(&mut stepping) {
            Ok(d) => d.into_iter(),
            Err(e) => {
                for seq in &stepping {
                    if let Some(run) = running[seq.slot].as_mut() {
                        run.failed.get_or_insert_with(|| {
                            ModelError::Tensor(candle_core::Error::Msg(e.to_string()))
                        });
                    }
                }
                Vec::new().into_iter()
            }
        };
        // Each sequence draws from its own sampler: the draws run on the compute pool's threads
        // (the same draw on any thread), and their results are applied in order.
        let drawing: Vec<(Sequence, Option<u32>, usize)> = stepping
            .into_iter()
            .filter_map(|seq| {
                let draw = drawn.next().flatten();
                let run = running[seq.slot].as_ref().expect("running request");
                run.failed.is_none().then_some((seq, draw, run.budget))
            })
            .collect();
        let drawn: Vec<_> = drawing
            .into_par_iter()
            .map(|(mut seq, draw, budget)| {
                let before = seq.ids.len();
                let next = next_token(&mut seq, text, params, budget, draw);
                let drew = (seq.ids.len() - before) as u64;
                (seq, next, drew)
            })
            .collect();
        let mut drew = 0u64;
        for (seq, next, n) in drawn {
            let run = running[seq.slot].as_mut().expect("running request");
            if run.failed.is_some() {
                continue; // an earlier sample of its request failed in this step
            }
            drew += n;
            match next {
                Ok(None) => rows.push(Row::Decode(seq)),
                Ok(Some(generation)) => {
                    run.counters.tokens_decoded += u64::from(generation.new_tokens);
                    run.generations[seq.sample] = Some(generation);
                }
                Err(e) => run.failed = Some(e),
            }
        }
        stats.sampling_seconds += sampling.elapsed().as_secs_f64();
        if drew > 0 {
            on_tokens(drew);
        }
        finish_requests(&mut running, &mut reserved, &mut on_done);
        if rows.is_empty() {
            sequences = waiting_samples;
            if sequences.is_empty() && waiting.is_empty() {
                break;
            }
            continue;
        }
        stats.steps += 1;
        stats.rows += rows.len() as u64;
        stats.peak_sequences = stats.peak_sequences.max(rows.len());
        stats.peak_reserved_tokens = stats.peak_reserved_tokens.max(reserved);
        let started = Instant::now();
        let outcome = run_step(model, &mut rows);
        let mut forked = Vec::new();
        let seconds = started.elapsed().as_secs_f64();
        stats.model_seconds += seconds;
        match outcome {
            Err(e) => {
                // A failed step fails every request that had a row in it.
                let message = e.to_string();
                for row in &rows {
                    if let Some(run) = running[row.slot()].as_mut() {
                        run.failed.get_or_insert_with(|| {
                            ModelError::Tensor(candle_core::Error::Msg(message.clone()))
                        });
                    }
                }
            }
            Ok(logits) => {
                let tokens: usize = rows.iter().map(Row::tokens).sum();
                for (i, row) in rows.into_iter().enumerate() {
                    // The step's time, shared out by tokens run.
                    let share = seconds * row.tokens() as f64 / tokens as f64;
                    let row_logits = match logits.get(i) {
                        Ok(l) => l,
                        Err(e) => {
                            if let Some(run) = running[row.slot()].as_mut() {
                                run.failed.get_or_insert(ModelError::Tensor(e));
                            }
                            continue;
                        }
                    };
                    match row {
                        Row::Prefill { slot, session, .. } => {
                            let run = running[slot].as_mut().expect("running request");
                            run.counters.prefill_seconds += share;
                            for (sample, &seed) in run.seeds.iter().enumerate() {
                                match TokenSampler::new(seed, &params.sampling) {
                                    Ok(sampler) => forked.push(Sequence {
                                        slot,
                                        sample,
                                        session: session.fork(),
                                        sampler,
                                        ids: Vec::new(),
                                        logits: row_logits.clone(),
                                    }),
                                    Err(e) => {
                                        run.failed = Some(e.into());
                                        break;
                                    }
                                }
                            }
                        }
                        Row::Decode(mut seq) => {
                            if let Some(run) = running[seq.slot].as_mut() {
                                run.counters.decode_seconds += share;
                            }
                            seq.logits = row_logits;
                            sequences.push(seq);
                        }
                    }
                }
            }
        }
        sequences.extend(waiting_samples);
        sequences.append(&mut forked);
        sequences.retain(|s| running[s.slot].as_ref().is_some_and(|r| r.failed.is_none()));
        finish_requests(&mut running, &mut reserved, &mut on_done);
    }
    stats
}

/// The first empty slot of `running`, growing it when all are taken.
fn free_slot(running: &mut Vec<Option<Running>>) -> usize {
    match running.iter().position(Option::is_none) {
        Some(slot) => slot,
        None => {
            running.push(None);
            running.len() - 1
        }
    }
}

/// Tokens for `seqs` drawn on their device in one launch when their logits are on a GPU (one per
/// sequence, each consuming one uniform of its own generator), or nothing on the CPU, where each
/// sequence's `TokenSampler` draws exactly what candle's sampler would.
fn device_draws(seqs: &mut [Sequence]) -> Result<Vec<Option<u32>>, ModelError> {
    let on_gpu = seqs.first().is_some_and(|s| !s.logits.device().is_cpu());
    if !on_gpu {
        return Ok(Vec::new());
    }
    let rows: Vec<Tensor> = seqs.iter().map(|s| s.logits.clone()).collect();
    let logits = Tensor::stack(&rows, 0)?;
    let params: Vec<Option<steerflow_kernels::device_sampling::RowParams>> =
        seqs.iter_mut().map(|s| s.sampler.device_row()).collect();
    if params.iter().all(Option::is_none) {
        let ids = logits.argmax(candle_core::D::Minus1)?.to_vec1::<u32>()?;
        return Ok(ids.into_iter().map(Some).collect());
    }
    // Greedy and sampled rows do not mix in one run (one sampling config per job).
    let rows = params
        .into_iter()
        .map(|p| {
            p.ok_or_else(|| {
                ModelError::Tensor(candle_core::Error::Msg(
                    "mixed greedy and sampled rows".into(),
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let ids = steerflow_kernels::device_sampling::SampleRows { rows }.sample(&logits)?;
    Ok(ids.into_iter().map(Some).collect())
}

/// Draws a sample's next token from its pending logits (or takes `drawn`, a token the device
/// drew): `None` while it goes on, its generation once it ends (at EOS, a stop string or its
/// budget of `budget` new tokens).
fn next_token(
    seq: &mut Sequence,
    text: &crate::text::TextCodec,
    params: &GenerationParams,
    budget: usize,
    drawn: Option<u32>,
) -> Result<Option<Generation>, ModelError> {
    let finish = |ids: &[u32], finish: FinishReason, cut: Option<usize>| {
        let mut text_out = text.decode(ids)?;
        if let Some(cut) = cut {
            text_out.truncate(cut);
        }
        Ok::<_, ModelError>(Some(Generation {
            text: text_out,
            new_tokens: ids.len() as u32,
            finish,
        }))
    };
    if seq.ids.len() >= budget {
        return finish(&seq.ids, FinishReason::Length, None);
    }
    let next = match drawn {
        Some(token) => token,
        None => seq.sampler.sample(&seq.logits)?,
    };
    if text.is_eos(next) {
        return finish(&seq.ids, FinishReason::Eos, None);
    }
    seq.ids.push(next);
    if !params.stop.is_empty() {
        let so_far = text.decode(&seq.ids)?;
        if let Some(cut) = earliest_stop(&so_far, &params.stop) {
            return finish(&seq.ids, FinishReason::Stop, Some(cut));
        }
    }
    if seq.ids.len() == budget {
        return finish(&seq.ids, FinishReason::Length, None);
    }
    Ok(None)
}

/// Reports the requests that failed or whose samples have all ended, freeing their slots and
/// token reservations.
fn finish_requests(
    running: &mut [Option<Running>],
    reserved: &mut usize,
    on_done: &mut impl FnMut(usize, GenerationResult),
) {
    for slot in running.iter_mut() {
        let done = slot
            .as_ref()
            .is_some_and(|r| r.failed.is_some() || r.generations.iter().all(Option::is_some));
        if !done {
            continue;
        }
        let run = slot.take().expect("checked above");
        *reserved -= run.reserved;
        match run.failed {
            Some(e) => on_done(run.index, Err(e)),
            None => on_done(
                run.index,
                Ok((
                    run.generations.into_iter().flatten().collect(),
                    run.counters,
                )),
            ),
        }
    }
}

/// Runs one batch: each joining prompt's tokens and each running sample's last token.
fn run_step(model: &dyn LanguageModel, rows: &mut [Row]) -> Result<Tensor, ModelError> {
    let chunks: Vec<Vec<u32>> = rows
        .iter()
        .map(|row| match row {
            Row::Prefill { prompt, .. } => prompt.clone(),
            Row::Decode(seq) => seq.ids.last().copied().into_iter().collect(),
        })
        .collect();
    let chunk_refs: Vec<&[u32]> = chunks.iter().map(Vec::as_slice).collect();
    let mut sessions: Vec<&mut dyn LmSession> = Vec::with_capacity(rows.len());
    for row in rows.iter_mut() {
        match row {
            Row::Prefill { session, .. } => sessions.push(session.as_mut()),
            Row::Decode(seq) => sessions.push(seq.session.as_mut()),
        }
    }
    model.extend_batch(&mut sessions, &chunk_refs)
}
