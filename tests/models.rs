//! The default model as steerflow runs it (quantized Q4_1): sampling determinism, shared
//! prefill, the judge, and closeness to the transformers reference.

mod support;

use steerflow_kernels::sampling::SamplingParams;
use steerflow_models::generation::GenerationParams;
use steerflow_models::judge::{helpsteer2_attributes, Judge};
use steerflow_models::policy::Policy;
use steerflow_operators::records::Message;
use steerflow_operators::seeding::sample_seed;

fn params(max_new_tokens: usize) -> GenerationParams {
    GenerationParams {
        sampling: SamplingParams {
            temperature: 0.7,
            top_p: 0.9,
            top_k: 0,
        },
        max_new_tokens,
        stop: vec![],
    }
}

#[test]
fn samples_depend_on_their_seed_only_and_the_prompt_is_prefilled_once() {
    let policy = Policy::new(support::default_model());
    let prompt = policy
        .prompt_tokens(&[Message::new("user", "Tell me a fact about owls.")])
        .unwrap();
    let seeds: Vec<u64> = (0..4).map(|i| sample_seed(3, "owls", i)).collect();
    let (all, counters) = policy.generate(&prompt, &seeds, &params(16)).unwrap();
    // N samples of one prompt prefill its tokens once.
    assert_eq!(counters.prompt_tokens_prefilled, prompt.len() as u64);
    assert_eq!(
        counters.tokens_decoded,
        all.iter().map(|g| g.new_tokens as u64).sum::<u64>()
    );
    // Sample 2 alone, and the samples in reverse order, give the same texts.
    let (alone, _) = policy.generate(&prompt, &seeds[2..3], &params(16)).unwrap();
    assert_eq!(alone[0], all[2]);
    let reversed: Vec<u64> = seeds.iter().rev().copied().collect();
    let (rev, _) = policy.generate(&prompt, &reversed, &params(16)).unwrap();
    assert_eq!(rev.into_iter().rev().collect::<Vec<_>>(), all);
    // Different seeds give different samples (four identical 16-token samples at T=0.7 would be a bug).
    assert!(all.iter().any(|g| g.text != all[0].text), "{all:?}");
}

#[test]
fn judge_ratings_are_in_range_and_prefix_sharing_changes_nothing() {
    let judge = Judge::new(support::default_model(), helpsteer2_attributes()).unwrap();
    let conversation = [Message::new("user", "What is 2 + 2?")];
    let good = judge.score(&conversation, "2 + 2 = 4.").unwrap();
    let bad = judge.score(&conversation, "banana banana banana").unwrap();
    for s in [&good, &bad] {
        assert_eq!(s.attributes.len(), 5);
        assert!(
            s.attributes.iter().all(|a| (0.0..=4.0).contains(a)),
            "{s:?}"
        );
        assert!(s.digit_mass.iter().all(|m| *m > 0.0 && *m <= 1.0));
    }
    // The shared prefix is run once: fewer tokens than five full questions.
    let full: usize = helpsteer2_attributes()
        .iter()
        .map(|a| {
            judge
                .question_tokens(&conversation, "2 + 2 = 4.", a)
                .unwrap()
                .len()
        })
        .sum();
    assert!(
        (good.tokens_run as usize) < full / 2,
        "{} vs {full}",
        good.tokens_run
    );
    // That the shared prefill computes the same ratings as fresh prefills is checked in f32 in
    // tests/reference_smollm2.rs; the quantized kernels round differently by chunk shape.
}

#[test]
fn quantized_logits_stay_close_to_the_reference() {
    // At run time the Q4_1 weights run as they are stored (the int8 kernel's 4-bit path) and
    // activations are quantized to 8 bits per 32-value block (as llama.cpp does), so logits carry
    // quantization noise against transformers' f32 dequantization: a shift common to all tokens
    // (harmless to softmax) plus per-token noise. Compared after removing the common shift (each
    // side centred on its mean over the reference's top 20): measured worst 0.20 to 0.31 on
    // logits around 25 (0.27 to 0.50 when the weights were requantized to Q8_0); the bound is 1.0.
    // The reference's top token must stay in our top 5. The exact f32 path is checked to 1e-3 in
    // tests/reference_smollm2.rs.
    let f: serde_json::Value = serde_json::from_slice(
        &std::fs::read(support::workspace_root().join("tests/fixtures/smollm2_reference.json"))
            .unwrap(),
    )
    .unwrap();
    let m = support::default_model();
    for case in f["logits"].as_array().unwrap() {
        let input: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        let logits: Vec<f32> = m.start().extend(&input).unwrap().to_vec1().unwrap();
        let top: Vec<(usize, f32)> = case["last_logits_top"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p[0].as_u64().unwrap() as usize,
                    p[1].as_f64().unwrap() as f32,
                )
            })
            .collect();
        let ours_mean = top.iter().map(|(id, _)| logits[*id]).sum::<f32>() / top.len() as f32;
        let ref_mean = top.iter().map(|(_, l)| *l).sum::<f32>() / top.len() as f32;
        let worst = top
            .iter()
            .map(|(id, l)| ((logits[*id] - ours_mean) - (l - ref_mean)).abs())
            .fold(0f32, f32::max);
        eprintln!("max centred logit error vs transformers (Q4_1, int8 activations): {worst}");
        assert!(worst < 1.0, "max centred logit error {worst}");
        let rank = logits.iter().filter(|&&l| l > logits[top[0].0]).count();
        assert!(rank < 5, "the reference's top token ranks {rank} here");
    }
}

/// The prefix tree run the way it was before batching: depth first, one extension at a time
/// (`sequences[m][..depth]` is what `session` holds). The logits after every sequence.
fn one_branch_at_a_time(
    session: &dyn steerflow_models::LmSession,
    sequences: &[Vec<u32>],
    members: &[usize],
    depth: usize,
    logits: Option<&candle_core::Tensor>,
    out: &mut [Option<candle_core::Tensor>],
) {
    let (ended, rest): (Vec<usize>, Vec<usize>) =
        members.iter().partition(|&&m| sequences[m].len() == depth);
    for m in ended {
        out[m] = logits.cloned();
    }
    let mut groups: Vec<(u32, Vec<usize>)> = Vec::new();
    for &m in &rest {
        match groups.iter_mut().find(|(t, _)| *t == sequences[m][depth]) {
            Some((_, g)) => g.push(m),
            None => groups.push((sequences[m][depth], vec![m])),
        }
    }
    for (_, group) in groups {
        let first = &sequences[group[0]];
        let shortest = group.iter().map(|&m| sequences[m].len()).min().unwrap();
        let mut to = depth + 1;
        while to < shortest && group.iter().all(|&m| sequences[m][to] == first[to]) {
            to += 1;
        }
        let mut child = session.fork();
        let child_logits = child.extend(&first[depth..to]).unwrap();
        one_branch_at_a_time(
            child.as_ref(),
            sequences,
            &group,
            to,
            Some(&child_logits),
            out,
        );
    }
}

#[test]
fn the_judge_batched_by_tree_level_rates_as_one_branch_at_a_time() {
    // The judge runs each level of its prefix tree (the shared instructions and prompt, the
    // responses, the question endings) as one ragged batch; the same tree one extension at a time
    // gives the same ratings (batched rows equal rows alone), to 1e-5.
    let model = support::default_model();
    let judge = Judge::new(model.clone(), helpsteer2_attributes()).unwrap();
    let conversation = [Message::new("user", "Name a primary colour.")];
    let responses = ["Red.", "Blue is one of them.", "Red.", "Green, I think."];
    let group = judge.score_group(&conversation, &responses);
    let sequences: Vec<Vec<u32>> = responses
        .iter()
        .flat_map(|r| {
            helpsteer2_attributes()
                .into_iter()
                .map(|a| judge.question_tokens(&conversation, r, &a).unwrap())
                .collect::<Vec<_>>()
        })
        .collect();
    let mut out = vec![None; sequences.len()];
    let all: Vec<usize> = (0..sequences.len()).collect();
    one_branch_at_a_time(model.start().as_ref(), &sequences, &all, 0, None, &mut out);
    let digits: Vec<u32> = ["0", "1", "2", "3", "4"]
        .iter()
        .map(|d| model.text().encode(d).unwrap()[0])
        .collect();
    for (r, scored) in group.iter().enumerate() {
        let scored = scored.as_ref().unwrap();
        for k in 0..5 {
            let logits: Vec<f32> = out[r * 5 + k].as_ref().unwrap().to_vec1().unwrap();
            let alone = steerflow_kernels::judge_digits::digit_rating(&logits, &digits)
                .unwrap()
                .expected;
            let batched = scored.attributes[k];
            assert!(
                (alone - batched).abs() <= 1e-5,
                "response {r} attribute {k}: {alone} vs {batched}"
            );
        }
    }
    // Identical responses share their whole branch.
    assert_eq!(
        group[0].as_ref().unwrap().attributes,
        group[2].as_ref().unwrap().attributes
    );
}
