//! Requests of concurrent clients scored together: each request's items join a queue, and one
//! thread takes whatever is waiting (up to `max_batch` items, after at most `wait` for more)
//! and runs it through the reward model as one batch. A model computes each row of a batch as
//! it would alone, so batching never changes a reward.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use steerflow_models::{ModelError, RewardModel, RewardScores};
use steerflow_operators::records::Message;
use tokio::sync::{mpsc, oneshot};

/// What a request asks to score.
#[derive(Debug)]
pub enum Items {
    /// Conversations and the assistant response to each (vLLM's `messages`).
    Conversations(Vec<(Vec<Message>, String)>),
    /// Texts already in the model's chat format (OpenRLHF's `query`, vLLM's `input`).
    Texts(Vec<String>),
}

impl Items {
    pub fn len(&self) -> usize {
        match self {
            Items::Conversations(c) => c.len(),
            Items::Texts(t) => t.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

pub type Scores = Vec<Result<RewardScores, ModelError>>;

struct Job {
    items: Items,
    reply: oneshot::Sender<Scores>,
}

/// Counts the metrics endpoint shows.
#[derive(Default)]
pub struct BatchStats {
    pub batches: AtomicU64,
    pub items: AtomicU64,
    pub failed_items: AtomicU64,
}

/// The queue in front of the reward model.
#[derive(Clone)]
pub struct Batcher {
    queue: mpsc::UnboundedSender<Job>,
    pub stats: Arc<BatchStats>,
}

impl Batcher {
    /// Starts the scoring thread; it ends when every `Batcher` clone is dropped.
    pub fn start(model: Arc<dyn RewardModel>, max_batch: usize, wait: Duration) -> Self {
        let (queue, mut jobs) = mpsc::unbounded_channel::<Job>();
        let stats = Arc::new(BatchStats::default());
        let counts = stats.clone();
        std::thread::Builder::new()
            .name("steerflow-serve-batcher".into())
            .spawn(move || {
                let _compute = steerflow_kernels::threads::join(
                    steerflow_kernels::threads::configured_threads(1),
                );
                while let Some(first) = jobs.blocking_recv() {
                    let mut batch = vec![first];
                    let mut size = batch[0].items.len();
                    let deadline = std::time::Instant::now() + wait;
                    while size < max_batch {
                        match jobs.try_recv() {
                            Ok(job) => {
                                size += job.items.len();
                                batch.push(job);
                            }
                            Err(mpsc::error::TryRecvError::Empty)
                                if std::time::Instant::now() < deadline =>
                            {
                                std::thread::sleep(Duration::from_micros(200));
                            }
                            Err(_) => break,
                        }
                    }
                    run_batch(model.as_ref(), batch, &counts);
                }
            })
            .expect("the batcher thread starts");
        Self { queue, stats }
    }

    /// Scores `items` with whatever else is waiting; fewer scores than items (none) when the
    /// scoring thread is gone.
    pub async fn score(&self, items: Items) -> Scores {
        let (reply, answer) = oneshot::channel();
        if self.queue.send(Job { items, reply }).is_err() {
            return Vec::new();
        }
        answer.await.unwrap_or_default()
    }
}

/// Scores the jobs' conversations together and their texts together, and answers each job.
fn run_batch(model: &dyn RewardModel, batch: Vec<Job>, stats: &BatchStats) {
    let mut conversations: Vec<(&[Message], &str)> = Vec::new();
    let mut texts: Vec<&str> = Vec::new();
    for job in &batch {
        match &job.items {
            Items::Conversations(c) => {
                conversations.extend(c.iter().map(|(m, r)| (m.as_slice(), r.as_str())))
            }
            Items::Texts(t) => texts.extend(t.iter().map(String::as_str)),
        }
    }
    let mut conversation_scores = model.score_batch(&conversations).into_iter();
    let mut text_scores = model.score_texts(&texts).into_iter();
    stats.batches.fetch_add(1, Ordering::Relaxed);
    stats.items.fetch_add(
        (conversations.len() + texts.len()) as u64,
        Ordering::Relaxed,
    );
    let failed = |s: &Scores| s.iter().filter(|r| r.is_err()).count() as u64;
    let answers: Vec<(oneshot::Sender<Scores>, Scores)> = batch
        .into_iter()
        .map(|job| {
            let scores: Scores = match &job.items {
                Items::Conversations(c) => conversation_scores.by_ref().take(c.len()).collect(),
                Items::Texts(t) => text_scores.by_ref().take(t.len()).collect(),
            };
            (job.reply, scores)
        })
        .collect();
    for (reply, scores) in answers {
        stats
            .failed_items
            .fetch_add(failed(&scores), Ordering::Relaxed);
        // A client that went away no longer waits for its answer.
        let _ = reply.send(scores);
    }
}
