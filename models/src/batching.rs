//! Batches of similar lengths under a padded-token budget, as mistral.rs's scheduler buckets
//! sequences by length: sorting by length keeps padding small.

/// Groups indices of `lengths` into batches, each sorted by length, whose padded size
/// (members × longest) stays within `max_tokens` (a single longer sequence gets a batch alone).
pub fn length_batches(lengths: &[usize], max_tokens: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| (lengths[i], i));
    let mut batches: Vec<Vec<usize>> = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    for i in order {
        // Sorted ascending, so the newcomer is the longest of the batch.
        if !current.is_empty() && (current.len() + 1) * lengths[i] > max_tokens {
            batches.push(std::mem::take(&mut current));
        }
        current.push(i);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_cover_everything_once_within_budget() {
        let lengths = [5, 100, 7, 6, 90, 3, 200];
        let batches = length_batches(&lengths, 200);
        let mut seen: Vec<usize> = batches.iter().flatten().copied().collect();
        seen.sort();
        assert_eq!(seen, (0..lengths.len()).collect::<Vec<_>>());
        for b in &batches {
            let longest = b.iter().map(|&i| lengths[i]).max().unwrap();
            assert!(b.len() == 1 || b.len() * longest <= 200, "{b:?}");
        }
        // Short ones travel together, long ones apart.
        assert_eq!(batches[0], vec![5, 0, 3, 2]);
        assert_eq!(length_batches(&[], 10), Vec::<Vec<usize>>::new());
    }
}
