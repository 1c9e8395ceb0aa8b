//! Request coalescing: concurrent requests for one key share one trip to
//! the origin.
//!
//! The first request for a key becomes its leader and fetches; the others
//! follow, waiting for the leader's stored entry. Keys never wait on each
//! other. When the leader ends without an entry to share (not cacheable, an
//! error, or cancelled), followers fetch for themselves.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;

use crate::store::entry::StoredResponse;
use edgecache_base::key::CacheKey;

/// What a leader hands its followers: the entry it stored, or `None`.
type Outcome = Option<Option<Arc<StoredResponse>>>;

#[derive(Default)]
pub(crate) struct Inflight {
    flights: Mutex<HashMap<CacheKey, watch::Receiver<Outcome>>>,
}

pub(crate) enum Turn {
    /// Fetch, then [`Leader::share`] what was stored.
    Lead(Leader),
    /// Another request is fetching: wait with [`follow`].
    Follow(watch::Receiver<Outcome>),
}

impl Inflight {
    pub(crate) fn join(self: &Arc<Self>, key: &CacheKey) -> Turn {
        let mut flights = self.flights.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(flight) = flights.get(key) {
            return Turn::Follow(flight.clone());
        }
        let (sender, receiver) = watch::channel(None);
        flights.insert(key.clone(), receiver);
        Turn::Lead(Leader {
            key: key.clone(),
            sender,
            inflight: Arc::clone(self),
        })
    }
}

/// Waits for the leader; `None` when it had nothing to share.
pub(crate) async fn follow(mut flight: watch::Receiver<Outcome>) -> Option<Arc<StoredResponse>> {
    match flight.wait_for(Option::is_some).await {
        Ok(outcome) => outcome.clone().flatten(),
        Err(_) => None,
    }
}

/// The one request fetching a key. Dropping it without sharing releases the
/// followers to fetch for themselves.
pub(crate) struct Leader {
    key: CacheKey,
    sender: watch::Sender<Outcome>,
    inflight: Arc<Inflight>,
}

impl Leader {
    pub(crate) fn share(self, entry: Arc<StoredResponse>) {
        self.land();
        self.sender.send_replace(Some(Some(entry)));
    }

    /// Later requests find the store (or lead anew) rather than this flight.
    fn land(&self) {
        self.inflight
            .flights
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.key);
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        self.land();
        self.sender.send_if_modified(|outcome| {
            let unshared = outcome.is_none();
            if unshared {
                *outcome = Some(None);
            }
            unshared
        });
    }
}
