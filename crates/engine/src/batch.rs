//! Packing sequences into batches by a token budget.

/// Groups sequence indices into batches of at most `max_tokens` tokens (a sequence longer than
/// the budget runs alone). Sequences are taken longest first, so batches hold similar lengths
/// and the attention work of a batch is balanced.
pub fn pack_by_tokens(lengths: &[usize], max_tokens: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
    let mut batches: Vec<Vec<usize>> = Vec::new();
    let mut used = 0;
    for i in order {
        match batches.last_mut() {
            Some(batch) if used + lengths[i] <= max_tokens => {
                batch.push(i);
                used += lengths[i];
            }
            _ => {
                batches.push(vec![i]);
                used = lengths[i];
            }
        }
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_longest_first_within_budget() {
        let batches = pack_by_tokens(&[5, 100, 30, 40, 200], 100);
        assert_eq!(batches, vec![vec![4], vec![1], vec![3, 2, 0]]);
        assert!(pack_by_tokens(&[], 10).is_empty());
    }
}
