use super::*;
use std::time::Duration;
use steerflow_operators::dedup::{MinHashParams, TextNorm};
use xxhash_rust::xxh3::xxh3_128;

fn fingerprints(texts: &[&str], hasher: &MinHasher) -> Vec<Fingerprint> {
    texts
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let normal = TextNorm::default().apply(t);
            Fingerprint {
                node: i as u64,
                exact: xxh3_128(normal.as_bytes()),
                signature: hasher.signature(&normal),
            }
        })
        .collect()
}

fn sentence(seed: usize, words: usize) -> String {
    (0..words)
        .map(|i| format!("w{}", (seed * 7919 + i * 104_729) % 5003))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Texts with known structure: 0, 3 and 5 exact (5 differs in case and punctuation only); 1
/// and 4 near (one word of 60 changed); 2 and 6 unrelated; 7 near 4 (a chain 1-4-7), 8 empty.
fn corpus() -> Vec<String> {
    let base = sentence(1, 60);
    let near = sentence(2, 60);
    let mut near_edit: Vec<String> = near.split(' ').map(String::from).collect();
    near_edit[30] = "changed".into();
    let mut chain: Vec<String> = near_edit.clone();
    chain[45] = "again".into();
    vec![
        base.clone(),
        near.clone(),
        sentence(3, 60),
        base.clone(),
        near_edit.join(" "),
        format!("{}!", base.to_uppercase()),
        sentence(4, 60),
        chain.join(" "),
        String::new(),
    ]
}

fn near() -> NearParams {
    NearParams {
        hasher: MinHasher::new(MinHashParams::default()),
        threshold: Some(0.7),
    }
}

fn kept(clusters: &Clusters) -> Vec<u64> {
    clusters.labels.iter().map(|l| l.kept).collect()
}

#[test]
fn exact_and_near_duplicates_form_clusters_kept_by_their_smallest_node() {
    let texts = corpus();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let near = near();
    let records = fingerprints(&refs, &near.hasher);
    let all = records.clone();
    let clusters = cluster(&ClusterSpec::single(1), &near, move |w, n| {
        round_robin(&all, w, n)
    })
    .unwrap();
    assert_eq!(kept(&clusters), vec![0, 1, 2, 0, 1, 0, 6, 1, 8]);
    assert_eq!(clusters.counts.exact_duplicates, 2);
    assert!(clusters.counts.similar_pairs >= 2, "{:?}", clusters.counts);

    let exact_only = NearParams {
        threshold: None,
        ..near
    };
    let all = records.clone();
    let clusters = cluster(&ClusterSpec::single(2), &exact_only, move |w, n| {
        round_robin(&all, w, n)
    })
    .unwrap();
    assert_eq!(kept(&clusters), vec![0, 1, 2, 0, 4, 0, 6, 7, 8]);
    assert_eq!(clusters.counts.candidate_pairs, 0);
}

#[test]
fn the_same_clusters_for_any_number_of_workers() {
    let mut texts = corpus();
    for i in 0..60 {
        let base = sentence(100 + i % 20, 40);
        texts.push(if i < 20 {
            base
        } else {
            format!("{base} tail{}", i / 20)
        });
    }
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let near = near();
    let records = fingerprints(&refs, &near.hasher);
    let one = {
        let all = records.clone();
        cluster(&ClusterSpec::single(1), &near, move |w, n| {
            round_robin(&all, w, n)
        })
        .unwrap()
    };
    assert_eq!(one.labels.len(), texts.len());
    assert!(one.labels.iter().filter(|l| l.kept != l.node).count() > 40);
    for workers in [2, 4] {
        let all = records.clone();
        let many = cluster(&ClusterSpec::single(workers), &near, move |w, n| {
            round_robin(&all, w, n)
        })
        .unwrap();
        assert_eq!(many.labels, one.labels, "{workers} workers");
        assert_eq!(many.counts, one.counts, "{workers} workers");
    }

    // Two processes connected over TCP on loopback, two workers each: each process feeds and
    // reports its own workers' share; together they are the one-worker result.
    let ports: Vec<String> = (0..2)
        .map(|_| {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("127.0.0.1:{}", l.local_addr().unwrap().port())
        })
        .collect();
    let handles: Vec<_> = (0..2)
        .map(|process| {
            let spec = ClusterSpec {
                processes: 2,
                process,
                addresses: ports.clone(),
                workers: 2,
                connect_timeout: Duration::from_secs(30),
                on_connect_timeout: None,
            };
            let (near, all) = (near.clone(), records.clone());
            std::thread::spawn(move || cluster(&spec, &near, move |w, n| round_robin(&all, w, n)))
        })
        .collect();
    let mut labels = Vec::new();
    let mut counts = GraphCounts::default();
    for h in handles {
        let part = h.join().unwrap().unwrap();
        labels.extend(part.labels);
        counts.exact_duplicates += part.counts.exact_duplicates;
        counts.candidate_pairs += part.counts.candidate_pairs;
        counts.similar_pairs += part.counts.similar_pairs;
    }
    labels.sort();
    assert_eq!(labels, one.labels, "two processes");
    assert_eq!(counts, one.counts, "two processes");
}
