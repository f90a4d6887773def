//! What the transfers of a [`SyncMany`](crate::SyncMany) batch share: a budget of memory and
//! requests, a rate cap, one connection per cluster, and each one's share for its
//! verification.

use std::sync::Arc;

use crate::copy::budget::Budget;
use crate::copy::engine::Window;
use crate::copy::rate::RateLimit;
use crate::rbd::cluster::Connections;
use crate::verify;

/// What the transfers of a batch share.
pub(crate) struct BatchLink {
    pub budget: Budget,
    pub rate: Option<RateLimit>,
    pub connections: Arc<Connections>,
    /// A running transfer's share of the budget: what its verification may draw at most.
    pub share: Window,
}

impl BatchLink {
    /// The link of a batch running `parallel` transfers at once within `memory_budget` bytes
    /// and `max_requests` requests in flight, reading at most `rate_limit` bytes a second.
    pub(crate) fn new(
        parallel: usize,
        memory_budget: usize,
        max_requests: usize,
        rate_limit: Option<u64>,
    ) -> BatchLink {
        let parallel = parallel.max(1);
        BatchLink {
            budget: Budget::new(memory_budget, max_requests),
            rate: rate_limit.map(RateLimit::new),
            connections: Arc::new(Connections::default()),
            share: Window {
                budget: memory_budget / parallel,
                max_requests: max_requests / parallel,
            },
        }
    }

    /// The window of the verification of a transfer whose own window is `own`, in chunks of
    /// `chunk` bytes: its share of the batch's budget, at most `own`, and room for one chunk
    /// at least. It is drawn from the budget before the verification starts.
    pub(crate) fn verify_window(&self, own: Window, chunk: u64) -> Window {
        Window {
            budget: own
                .budget
                .min(self.share.budget)
                .max(verify::chunk_charge(chunk as usize)),
            max_requests: own.max_requests.min(self.share.max_requests).max(2),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_verification_in_a_batch_draws_its_share_of_the_budget_at_most_its_own_window() {
        let link = BatchLink::new(4, 64 << 20, 256, None);
        let window = |budget: usize, max_requests| Window {
            budget,
            max_requests,
        };
        let chunk = 2 << 20;
        // A quarter of the budget and of the requests.
        assert_eq!(
            link.verify_window(window(64 << 20, 128), chunk),
            window(16 << 20, 64)
        );
        // Its own window when smaller, but room for one chunk of both images at least.
        assert_eq!(
            link.verify_window(window(12 << 20, 32), chunk),
            window(12 << 20, 32)
        );
        assert_eq!(
            link.verify_window(window(2 << 20, 1), chunk),
            window(verify::chunk_charge(2 << 20), 2)
        );
    }
}
