//! Rollout batches: which targets a deployment changes together, and when it stops.
//!
//! An environment's `rollout = { batch = 2, max_failures = 0 }` (or `batch = "25%"`) splits its
//! selected targets, in inventory order, into batches that run one after another. When the
//! failures so far exceed `max_failures` after a batch, the rollout stops and the remaining
//! targets are left untouched. Pure arithmetic, so it is tested without any target.

use std::ops::Range;

use crate::inventory::{Batch, Rollout};

/// The batches of `count` targets, as index ranges in order.
pub fn batches(count: usize, rollout: &Rollout) -> Vec<Range<usize>> {
    if count == 0 {
        return Vec::new();
    }
    let size = match rollout.batch {
        Batch::Count(n) => usize::try_from(n).unwrap_or(usize::MAX),
        // Rounded up: 25% of 3 targets is one target per batch, not zero.
        Batch::Percent(p) => (count * usize::from(p)).div_ceil(100),
    }
    .clamp(1, count);
    (0..count).step_by(size).map(|start| start..(start + size).min(count)).collect()
}

/// Whether `failures` so far stop the rollout.
pub fn exceeded(failures: usize, rollout: &Rollout) -> bool {
    failures > usize::try_from(rollout.max_failures).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(batch: Batch) -> Rollout {
        Rollout { batch, max_failures: 0 }
    }

    #[test]
    fn counts_and_percentages() {
        assert_eq!(batches(5, &r(Batch::Count(2))), vec![0..2, 2..4, 4..5]);
        assert_eq!(batches(3, &r(Batch::Count(10))), vec![0..3]);
        assert_eq!(batches(3, &r(Batch::Percent(25))), vec![0..1, 1..2, 2..3]);
        assert_eq!(batches(10, &r(Batch::Percent(50))), vec![0..5, 5..10]);
        assert_eq!(batches(4, &r(Batch::Percent(100))), vec![0..4]);
        assert_eq!(batches(2, &r(Batch::Count(0))), vec![0..1, 1..2], "a batch has at least one target");
        assert!(batches(0, &r(Batch::Count(1))).is_empty());
    }

    #[test]
    fn stops_past_max_failures() {
        let rollout = Rollout { batch: Batch::Count(1), max_failures: 1 };
        assert!(!exceeded(1, &rollout));
        assert!(exceeded(2, &rollout));
        assert!(exceeded(1, &Rollout::default()));
        assert!(!exceeded(0, &Rollout::default()));
    }
}
