//! A policy behind an OpenAI-compatible server.
//!
//! Each sample is its own request with its own seed (the sample's seed folded to 31 bits), so
//! sample i of a prompt is what the server draws for that seed whatever else runs, and a prompt's
//! N samples never depend on N (one request with `n = N` draws them from one generator). On
//! `/completions` the prompt goes as the token ids of the job's own chat template, exactly what
//! an in-process run prefills (no second BOS, no server-side template); `/chat/completions`
//! sends the messages and lets the server apply its template.

use super::client::Client;
use super::wire::{self, CompletionRequest, Prompt};
use super::{server_seed, CompletionApi, Endpoint, ServedCounters};
use crate::engine::{GenerationRequest, GenerationResult};
use crate::generation::{Generation, GenerationCounters, GenerationParams};
use crate::text::TextCodec;
use crate::{ModelError, ServedFailure};
use std::cell::RefCell;
use std::sync::Arc;
use std::time::Instant;
use steerflow_operators::records::{FinishReason, Message};

/// A policy model served over HTTP, with its local tokenizer and chat template.
pub struct ServedPolicy {
    client: Client,
    model: String,
    text: TextCodec,
    context_length: usize,
    id: String,
}

/// One sample of one prompt in flight.
struct SampleJob<'a> {
    request: usize,
    sample: usize,
    prompt: Prompt<'a>,
    seed: u64,
}

/// A prompt's samples as they come back.
struct Pending {
    generations: Vec<Option<Generation>>,
    counters: GenerationCounters,
    started: Option<Instant>,
    failed: bool,
}

impl ServedPolicy {
    /// Connects to `endpoint` (waiting through its retries while the server loads) and reads the
    /// name of the model it serves; `text` and `context_length` are the served model's, from its
    /// local files.
    pub fn connect(
        endpoint: Endpoint,
        text: TextCodec,
        context_length: usize,
        counters: Arc<ServedCounters>,
    ) -> Result<Self, ModelError> {
        let client = Client::new(endpoint, counters)?;
        let model = served_model_name(&client)?;
        let id = format!("served:{model}@{}", client.endpoint().redacted());
        Ok(Self {
            client,
            model,
            text,
            context_length,
            id,
        })
    }

    /// `served:<model the server reports>@<redacted endpoint>`: a run against another model or
    /// server is another lineage.
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn text(&self) -> &TextCodec {
        &self.text
    }

    pub fn context_length(&self) -> usize {
        self.context_length
    }

    pub fn api(&self) -> CompletionApi {
        self.client.endpoint().api
    }

    /// Samples every request's seeds, at most `max_in_flight` requests at a time; `on_done(i,
    /// result)` as request i's last sample returns, `on_tokens(n)` with each sample's tokens.
    /// `messages[i]` is request i's conversation (sent on the chat route).
    pub fn generate_many(
        &self,
        requests: &[GenerationRequest],
        messages: &[&[Message]],
        params: &GenerationParams,
        (mut on_done, mut on_tokens): (impl FnMut(usize, GenerationResult), impl FnMut(u64)),
        cancelled: impl Fn() -> bool,
    ) {
        let api = self.api();
        if api == CompletionApi::Chat && messages.len() != requests.len() {
            for i in 0..requests.len() {
                on_done(
                    i,
                    Err(ModelError::Template(
                        "the chat route sends each prompt's messages, and none were given".into(),
                    )),
                );
            }
            return;
        }
        let jobs: Vec<SampleJob<'_>> = requests
            .iter()
            .enumerate()
            .flat_map(|(request, r)| {
                let prompt_of = move || match api {
                    CompletionApi::Completions => Prompt::Tokens(&r.prompt_tokens),
                    CompletionApi::Chat => Prompt::Messages(messages[request]),
                };
                r.seeds
                    .iter()
                    .enumerate()
                    .map(move |(sample, &seed)| SampleJob {
                        request,
                        sample,
                        prompt: prompt_of(),
                        seed,
                    })
            })
            .collect();
        let positions: Vec<(usize, usize)> = jobs.iter().map(|j| (j.request, j.sample)).collect();
        let pending = RefCell::new(
            requests
                .iter()
                .map(|r| Pending {
                    generations: vec![None; r.seeds.len()],
                    counters: GenerationCounters::default(),
                    started: None,
                    failed: false,
                })
                .collect::<Vec<_>>(),
        );
        let stopped = std::cell::Cell::new(false);
        let started = Instant::now();
        // Each prompt's share of the wall time: from the previous prompt's completion to its
        // own, so that the shares add up to the time spent (as the engine's do).
        let last_done = std::cell::Cell::new(started);
        self.client.run_bounded(
            jobs,
            |job| self.sample(job, params),
            |k, result: Result<(Generation, u64), ModelError>| {
                let (request, sample) = positions[k];
                let mut all = pending.borrow_mut();
                let p = &mut all[request];
                if p.failed {
                    return;
                }
                p.started.get_or_insert(started);
                match result {
                    Err(e) => {
                        p.failed = true;
                        stopped.set(stopped.get() || e.stops_the_run());
                        on_done(request, Err(e));
                    }
                    Ok((generation, prompt_tokens)) => {
                        on_tokens(u64::from(generation.new_tokens));
                        p.counters.prompt_tokens_prefilled += prompt_tokens;
                        p.counters.tokens_decoded += u64::from(generation.new_tokens);
                        p.generations[sample] = Some(generation);
                        if p.generations.iter().all(Option::is_some) {
                            let now = Instant::now();
                            p.counters.decode_seconds =
                                (now - last_done.replace(now)).as_secs_f64();
                            let generations = p.generations.iter_mut().flat_map(Option::take);
                            on_done(request, Ok((generations.collect(), p.counters)));
                        }
                    }
                }
            },
            || stopped.get() || cancelled(),
        );
    }

    async fn sample(
        &self,
        job: SampleJob<'_>,
        params: &GenerationParams,
    ) -> Result<(Generation, u64), ModelError> {
        let body = wire::completion_body(
            self.client.endpoint().server,
            &CompletionRequest {
                model: &self.model,
                prompt: job.prompt,
                sampling: &params.sampling,
                max_tokens: params.max_new_tokens,
                seed: server_seed(job.seed),
                stop: &params.stop,
                logprobs: None,
            },
        );
        let api = self.api();
        let reply = self.client.post(wire::route(api), &body).await?;
        let choice = wire::parse_choice(&reply, api).map_err(|m| ModelError::Served {
            endpoint: self.client.endpoint().redacted(),
            message: format!("{}: {m}", wire::route(api)),
            failure: ServedFailure::Record,
        })?;
        let finish = match choice.finish_reason.as_str() {
            "length" => FinishReason::Length,
            // Servers report an end-of-sequence token and a stop string alike as `stop`.
            _ if params.stop.is_empty() => FinishReason::Eos,
            _ => FinishReason::Stop,
        };
        Ok((
            Generation {
                text: choice.text,
                new_tokens: choice.completion_tokens as u32,
                finish,
            },
            choice.prompt_tokens,
        ))
    }
}

/// The model to send, as the server names it in `/models`: the configured one, checked to be
/// listed, else the first listed. Asking also waits (through the retries) for a loading server.
pub(crate) fn served_model_name(client: &Client) -> Result<String, ModelError> {
    let reply = client.get("/models")?;
    let listed = wire::listed_models(&reply);
    let error = |message: String| ModelError::Served {
        endpoint: client.endpoint().redacted(),
        message,
        failure: ServedFailure::Endpoint,
    };
    match &client.endpoint().model {
        Some(name) if listed.contains(name) => Ok(name.clone()),
        Some(name) => Err(error(format!(
            "the server does not serve `{name}`; `/models` lists {listed:?}"
        ))),
        None => listed
            .into_iter()
            .next()
            .ok_or_else(|| error(format!("`/models` lists no model: {reply}"))),
    }
}
