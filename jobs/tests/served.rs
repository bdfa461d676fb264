//! Served models against real servers on loopback: llama.cpp's `llama-server` (built by
//! `scripts/test`) as the policy and the judge of an iterative-DPO run, behind the
//! fault-injecting proxy, killed and resumed; and `steerflow serve` answering OpenRLHF's and
//! vLLM's reward protocols with the scores `steerflow score` writes.

#![allow(clippy::unwrap_used)]

mod support;

use serde_json::Value;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use support::llama::{default_gguf, http, llama_server, llama_server_with};
use support::runs::{committed_prompt_ids_at, run_job};
use support::served_jobs::{demo_prompt_ids, served_job};
use support::servers::{faulty_proxy, Server};
use support::{read_parquet, succeed, workspace};

fn summary(output: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(output.join("summary.json")).unwrap()).unwrap()
}

#[test]
fn the_demo_through_a_served_policy_and_judge_writes_valid_pairs_through_faults_and_a_kill() {
    let server = llama_server(4);
    let dir = tempfile::tempdir().unwrap();

    // Straight to the server.
    let output = dir.path().join("direct");
    let job = served_job(dir.path(), server.port, &output, 8);
    let run = run_job(&job, &[]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let rows = read_parquet(&output.join("data"));
    assert!(!rows.is_empty(), "no pairs");
    for row in &rows {
        let chosen = row["chosen"].as_array().unwrap();
        let rejected = row["rejected"].as_array().unwrap();
        assert_eq!(chosen.last().unwrap()["role"], "assistant");
        assert_ne!(
            chosen.last().unwrap()["content"],
            rejected.last().unwrap()["content"]
        );
        assert!(row["chosen_score"].as_f64().unwrap() > row["rejected_score"].as_f64().unwrap());
    }
    let s = summary(&output);
    assert!(
        s["policy"]
            .as_str()
            .unwrap()
            .starts_with("served:smollm2@http://127.0.0.1:"),
        "{s}"
    );
    assert!(
        s["scorer"]
            .as_str()
            .unwrap()
            .starts_with("judge:served:smollm2@"),
        "{s}"
    );
    // 6 prompts × 2 samples, and 5 questions per distinct response.
    let served = &s["served"];
    assert!(served["requests"].as_u64().unwrap() >= 12, "{s}");
    assert_eq!(served["failures"], 0, "{s}");
    let mut settled = committed_prompt_ids_at(&output);
    settled.sort();
    assert_eq!(settled, demo_prompt_ids());

    // Through 429s, 503s, resets and slow replies: every prompt exactly once, with retries.
    let proxy = faulty_proxy(
        server.port,
        &[
            "--throttle-every",
            "9",
            "--fail-every",
            "7",
            "--reset-every",
            "11",
            "--slow-every",
            "13",
            "--slow-seconds",
            "2",
        ],
    );
    let faulty = dir.path().join("faulty");
    let job = served_job(dir.path(), proxy.port, &faulty, 8);
    let run = run_job(&job, &[]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let s = summary(&faulty);
    assert!(s["served"]["retries"].as_u64().unwrap() > 0, "{s}");
    assert_eq!(s["served"]["failures"], 0, "{s}");
    let mut settled = committed_prompt_ids_at(&faulty);
    settled.sort();
    assert_eq!(settled, demo_prompt_ids());

    // Killed mid-run (aborted, like SIGKILL, once its second shard is committed), then rerun:
    // each prompt committed once.
    let killed = dir.path().join("killed");
    let job = served_job(dir.path(), server.port, &killed, 8);
    let crashed = run_job(&job, &[("STEERFLOW_CRASH_AT", "shard-marker:2")]);
    assert_ne!(crashed.code, Some(0), "{}", crashed.stderr);
    assert!(!killed.join("summary.json").exists());
    let run = run_job(&job, &[]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let mut settled = committed_prompt_ids_at(&killed);
    settled.sort();
    assert_eq!(settled, demo_prompt_ids());
}

#[test]
fn a_server_that_stays_down_ends_the_run_as_transient_with_nothing_committed() {
    let dir = tempfile::tempdir().unwrap();
    let server = llama_server(1);
    // Everything after the model list is answered 503.
    let proxy = faulty_proxy(server.port, &["--down-after", "2"]);
    let output = dir.path().join("out");
    let job = served_job(dir.path(), proxy.port, &output, 2);
    let run = run_job(&job, &[]);
    assert_eq!(run.code, Some(4), "{}", run.stderr);
    assert!(run.stderr.contains("transient"), "{}", run.stderr);
    assert!(!output.join("summary.json").exists());
    assert!(committed_prompt_ids_at(&output).is_empty());
}

/// A server that refuses every request (here llama-server with `--api-key` and a wrong key:
/// 401 on every completion) ends the run at once, not as transient, with nothing committed,
/// instead of rejecting prompt after prompt.
#[test]
fn a_server_that_refuses_the_key_ends_the_run_at_once_with_nothing_committed() {
    let dir = tempfile::tempdir().unwrap();
    let server = llama_server_with(&default_gguf(), 1, &["--api-key", "the-right-key"]);
    let output = dir.path().join("out");
    let job = served_job(dir.path(), server.port, &output, 2);
    let text = std::fs::read_to_string(&job).unwrap().replace(
        "timeout_seconds = 60\n",
        "timeout_seconds = 60\napi_key_env = \"STEERFLOW_TEST_SERVED_KEY\"\n",
    );
    std::fs::write(&job, text).unwrap();
    let run = run_job(&job, &[("STEERFLOW_TEST_SERVED_KEY", "a-wrong-key")]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(
        run.stderr.contains("401") && run.stderr.contains("refuses every request"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("a-wrong-key"), "{}", run.stderr);
    assert!(!output.join("summary.json").exists());
    assert!(committed_prompt_ids_at(&output).is_empty());
}

/// The served judge rates as the in-process judge on the same GGUF: within 0.3 on the 0..4 scale
/// for every rating and 0.15 on average (measured: 0.20 and 0.07 with the file's Q4_1 weights on
/// the int8 kernel, as llama.cpp runs them; 0.18 and 0.10 when they were requantized to Q8_0;
/// 0.19 and 0.05 with the weights dequantised to f32). The arithmetic of the products is
/// llama.cpp's (jobs/tests/llama_cpp_parity.rs: within 2e-6 on Q4_1 files with an f32 KV cache),
/// but this server keeps its default f16 KV cache and flash attention. SmolLM2-135M's rating
/// distribution is flat (its likeliest digit has about 0.23), so logit differences of a few
/// hundredths move a rating by tenths; llama-server's own ratings move by up to 0.09 between
/// runs when its slots batch together.
#[test]
fn the_served_judge_agrees_with_the_in_process_judge() {
    use steerflow::config::sections::{RewardKind, RewardSection};
    use steerflow::config::served::{ServedSection, ServerSetting};
    use steerflow_operators::records::Message;
    let server = llama_server(2);
    let counters = Arc::new(steerflow_models::served::ServedCounters::default());
    let local = RewardSection {
        kind: RewardKind::Judge,
        model: "default".into(),
        ..Default::default()
    };
    let served = RewardSection {
        served: Some(ServedSection {
            url: format!("http://127.0.0.1:{}/v1", server.port),
            server: ServerSetting::LlamaCpp,
            // One question at a time: the server's numbers then do not depend on batching.
            max_in_flight: 1,
            ..Default::default()
        }),
        ..local.clone()
    };
    let device = steerflow::config::sections::Device::Cpu;
    let in_process = steerflow::models::load_reward_model(&local, None, device, &counters).unwrap();
    let over_http = steerflow::models::load_reward_model(&served, None, device, &counters).unwrap();
    let conversation = vec![Message::new("user", "What is the capital of France?")];
    let responses = [
        "The capital of France is Paris.",
        "I think it might be Lyon, but I am not sure.",
        "Paris. It has been the capital for centuries and is its largest city.",
    ];
    let items: Vec<(&[Message], &str)> = responses
        .iter()
        .map(|r| (conversation.as_slice(), *r))
        .collect();
    let a = in_process.score_batch(&items);
    let b = over_http.score_batch(&items);
    let mut differences = Vec::new();
    for (x, y) in a.iter().zip(&b) {
        let (x, y) = (x.as_ref().unwrap(), y.as_ref().unwrap());
        assert_eq!(y.attributes.len(), 5);
        for (p, q) in x.attributes.iter().zip(&y.attributes) {
            eprintln!("in process {p:.4}  served {q:.4}");
            differences.push((p - q).abs());
        }
    }
    let worst = differences.iter().copied().fold(0.0, f64::max);
    let mean = differences.iter().sum::<f64>() / differences.len() as f64;
    eprintln!("served judge vs in-process: largest difference {worst:.4}, mean {mean:.4}");
    assert!(
        worst < 0.3 && mean < 0.15,
        "served judge differs by {worst} (mean {mean})"
    );
}

/// `steerflow score`'s scores of `conversations` (written to `input` first), per attribute.
fn steerflow_score(
    fixture: &Path,
    conversations: &[Value],
    input: &Path,
    dir: &Path,
) -> Vec<Vec<f64>> {
    let lines: String = conversations
        .iter()
        .enumerate()
        .map(|(k, c)| {
            serde_json::json!({"id": format!("c{k}"), "messages": c["messages"]}).to_string() + "\n"
        })
        .collect();
    std::fs::write(input, lines).unwrap();
    let scored = dir.join("scores.parquet");
    succeed(
        Command::new(env!("CARGO_BIN_EXE_steerflow"))
            .args(["score", "--reward-model"])
            .arg(fixture)
            .args([
                "--kind",
                "sequence-classification",
                "--attributes",
                "helpsteer2",
                "--input",
            ])
            .arg(input)
            .arg("--output")
            .arg(&scored),
    );
    let rows = read_parquet(&scored);
    rows.iter()
        .map(|r| {
            ATTRIBUTES
                .iter()
                .map(|a| r["scores"][a].as_f64().unwrap())
                .collect()
        })
        .collect()
}

/// The attributes a `filter-rank` job writes for `input`, scoring in process or through the
/// `steerflow serve` on `port`.
fn filter_rank_scores(
    fixture: &Path,
    input: &Path,
    dir: &Path,
    port: Option<u16>,
) -> Vec<Vec<f64>> {
    let output = dir.join(if port.is_some() { "through" } else { "local" });
    let served_section = if let Some(port) = port {
        format!("[reward.served]\nurl = \"http://127.0.0.1:{port}/classify\"\nprotocol = \"classify\"\nmodel = \"seqcls5\"\n")
    } else {
        String::new()
    };
    let job = format!(
        "[job]\nkind = \"filter-rank\"\n[input]\npath = \"{input}\"\n[reward]\nkind = \"sequence-classification\"\nmodel = \"{fixture}\"\nattributes = \"helpsteer2\"\n{served_section}[output]\npath = \"{out}\"\n",
        input = input.display(),
        fixture = fixture.display(),
        out = output.display()
    );
    let path = dir.join("filter.toml");
    std::fs::write(&path, job).unwrap();
    let run = run_job(&path, &[]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let summary = std::fs::read_to_string(output.join("summary.json")).unwrap();
    assert_eq!(
        summary.contains("served-reward:seqcls5@"),
        port.is_some(),
        "{summary}"
    );
    // One request per response through the server, none in process.
    let served: Value = serde_json::from_str(&summary).unwrap();
    let requests = if port.is_some() { 4 } else { 0 };
    assert_eq!(served["served"]["requests"], requests, "{summary}");
    let mut rows = read_parquet(&output.join("data"));
    rows.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    rows.iter()
        .map(|r| {
            ATTRIBUTES
                .iter()
                .map(|a| {
                    r["attributes"][*a]
                        .as_f64()
                        .unwrap_or_else(|| panic!("{r}"))
                })
                .collect()
        })
        .collect()
}

/// `steerflow serve` on a port of its choosing; the port it printed.
fn steerflow_serve(fixture: &Path) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_steerflow"))
        .args(["serve", "--reward-model"])
        .arg(fixture)
        .args([
            "--kind",
            "sequence-classification",
            "--attributes",
            "helpsteer2",
        ])
        .args(["--listen", "127.0.0.1:0", "--model-name", "seqcls5"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let port = line
        .trim()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|_| panic!("{line}"));
    Server::new(child, port)
}

const ATTRIBUTES: [&str; 5] = [
    "helpfulness",
    "correctness",
    "coherence",
    "complexity",
    "verbosity",
];

#[test]
fn steerflow_serve_answers_both_protocols_with_the_scores_of_steerflow_score() {
    let fixture = workspace().join("tests/fixtures/hf/llama-seqcls5-f32");
    let golden: Value =
        serde_json::from_slice(&std::fs::read(fixture.join("conversations.json")).unwrap())
            .unwrap();
    let conversations: Vec<Value> = golden["conversations"].as_array().unwrap().clone();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let want = steerflow_score(&fixture, &conversations, &input, dir.path());
    // The texts OpenRLHF would send: each conversation in the model's chat format.
    let (codec, _) = steerflow_models::hf::text_codec_of_checkpoint(&fixture).unwrap();
    let texts: Vec<String> = conversations
        .iter()
        .map(|c| {
            let messages: Vec<steerflow_operators::records::Message> =
                serde_json::from_value(c["messages"].clone()).unwrap();
            codec.render(&messages, false).unwrap()
        })
        .collect();

    let mut server = steerflow_serve(&fixture);
    let port = server.port;
    assert_eq!(http("GET", port, "/health", "").0, 200);
    // Eight concurrent clients, each asking both protocols about every conversation.
    std::thread::scope(|scope| {
        for _ in 0..8 {
            scope.spawn(|| {
                for (k, c) in conversations.iter().enumerate() {
                    let body = serde_json::json!({"model": "seqcls5", "messages": c["messages"], "use_activation": false});
                    let (status, reply) = http("POST", port, "/classify", &body.to_string());
                    assert_eq!(status, 200, "{reply}");
                    let reply: Value = serde_json::from_str(&reply).unwrap();
                    let probs = reply["data"][0]["probs"].as_array().unwrap();
                    for (j, p) in probs.iter().enumerate() {
                        let got = p.as_f64().unwrap();
                        assert!((got - want[k][j]).abs() <= 1e-6, "classify c{k} {}: {got} vs {}", ATTRIBUTES[j], want[k][j]);
                    }
                }
                let body = serde_json::json!({"query": texts, "prompts": [], "labels": []});
                let (status, reply) = http("POST", port, "/get_reward", &body.to_string());
                assert_eq!(status, 200, "{reply}");
                let reply: Value = serde_json::from_str(&reply).unwrap();
                for (k, r) in reply["rewards"].as_array().unwrap().iter().enumerate() {
                    assert!((r.as_f64().unwrap() - want[k][0]).abs() <= 1e-6);
                    let verbosity = reply["extra_logs"]["verbosity"][k].as_f64().unwrap();
                    assert!((verbosity - want[k][4]).abs() <= 1e-6);
                }
            });
        }
    });
    // A bad request names what is wrong; the metrics count what was served.
    let (status, reply) = http(
        "POST",
        port,
        "/classify",
        r#"{"messages": [{"role": "user", "content": "q"}]}"#,
    );
    assert_eq!(status, 400);
    assert!(reply.contains("assistant"), "{reply}");
    let (_, metrics) = http("GET", port, "/metrics", "");
    assert!(
        metrics.contains("steerflow_serve_items_total 64"),
        "{metrics}"
    );

    // A job scoring through the server writes the scores of in-process scoring.
    let local = filter_rank_scores(&fixture, &input, dir.path(), None);
    let through = filter_rank_scores(&fixture, &input, dir.path(), Some(port));
    assert_eq!(local.len(), conversations.len());
    for (a, b) in local.iter().zip(&through) {
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= 1e-6, "{x} vs {y}");
        }
    }

    // SIGTERM: a graceful shutdown.
    Command::new("kill")
        .args(["-TERM", &server.pid().to_string()])
        .status()
        .unwrap();
    assert_eq!(server.wait_exit(Duration::from_secs(20)), Some(0));
}

/// A scoring job whose reward server is unreachable through every retry ends with the
/// transient exit code, and commits nothing.
#[test]
fn a_scoring_job_whose_reward_server_stays_down_ends_as_transient() {
    let dir = tempfile::tempdir().unwrap();
    let input = workspace().join("configs/data/helpsteer2-demo.jsonl");
    let output = dir.path().join("out");
    let job = format!(
        "[job]\nkind = \"filter-rank\"\n[input]\npath = \"{input}\"\n[reward]\nkind = \"sequence-classification\"\nmodel = \"unused\"\nattributes = \"helpsteer2\"\n[reward.served]\nurl = \"http://127.0.0.1:{port}/classify\"\nmax_retries = 1\n[output]\npath = \"{out}\"\n",
        input = input.display(),
        port = support::free_port(),
        out = output.display()
    );
    let path = dir.path().join("job.toml");
    std::fs::write(&path, job).unwrap();
    let run = run_job(&path, &[]);
    assert_eq!(run.code, Some(4), "{}", run.stderr);
    assert!(run.stderr.contains("cannot connect"), "{}", run.stderr);
    assert!(!output.join("summary.json").exists());
}

/// The served policy on both routes: a sample is a function of its seed (the same seeds give
/// the same texts, one request at a time), and the chat route gets the server's own template.
#[test]
fn served_samples_follow_their_seeds_on_both_routes() {
    use steerflow_models::engine::{EngineLimits, GenerationRequest};
    use steerflow_models::generation::GenerationParams;
    use steerflow_models::policy::Policy;
    use steerflow_models::served::policy::ServedPolicy;
    use steerflow_models::served::{local_text, CompletionApi, Endpoint, ServerKind};
    use steerflow_operators::records::Message;
    let server = llama_server(2);
    let location = steerflow_models::registry::locate_model("default").unwrap();
    let messages = vec![Message::new("user", "Name a colour.")];
    let params = GenerationParams {
        sampling: steerflow_kernels::sampling::SamplingParams {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
        },
        max_new_tokens: 12,
        stop: Vec::new(),
    };
    for api in [CompletionApi::Completions, CompletionApi::Chat] {
        let mut endpoint = Endpoint::new(
            &format!("http://127.0.0.1:{}/v1", server.port),
            ServerKind::LlamaCpp,
        );
        endpoint.api = api;
        endpoint.max_in_flight = 1;
        let (text, context) = local_text(&location).unwrap();
        let counters = Arc::new(steerflow_models::served::ServedCounters::default());
        let policy = Policy::served(
            ServedPolicy::connect(endpoint, text, context, counters.clone()).unwrap(),
        );
        let tokens = policy.prompt_tokens(&messages).unwrap();
        let sample = |seeds: Vec<u64>| {
            let mut out = None;
            let request = GenerationRequest {
                prompt_tokens: tokens.clone(),
                seeds,
            };
            policy.generate_many(
                vec![request],
                &[messages.as_slice()],
                &params,
                &EngineLimits::default(),
                (|_, r| out = Some(r), |_| {}),
                || false,
            );
            let (generations, work) = out.unwrap().unwrap();
            assert!(work.tokens_decoded > 0 && work.prompt_tokens_prefilled > 0);
            generations.into_iter().map(|g| g.text).collect::<Vec<_>>()
        };
        let first = sample(vec![1, 2, 3, 4]);
        assert_eq!(
            first,
            sample(vec![1, 2, 3, 4]),
            "{api:?}: the same seeds, other texts"
        );
        let distinct: std::collections::BTreeSet<&String> = first.iter().collect();
        assert!(
            distinct.len() > 1,
            "{api:?}: four seeds, one text: {first:?}"
        );
        // Four samples, one request each.
        assert_eq!(counters.snapshot().requests, 1 + 8);
    }
}
