//! The idempotency keys the simulator has seen, and what each one got.
//!
//! A key is remembered from its first well-formed POST (failed and rejected attempts
//! included, so their `requests` count survives). While a request for a key is being
//! processed it holds a [`Claim`] on the key, and any other request for it is answered
//! 409 at once (as the IETF Idempotency-Key draft and Stripe do): concurrent requests
//! for one key make exactly one charge, and the others are told to ask again. The claim
//! ends when its request is answered or abandoned (the client went away), so a later
//! request replays the outcome or, if nothing was recorded, tries again.
//!
//! Memory is bounded by `--max-keys`: once that many keys are held a new key is
//! answered 503 instead of growing the store. A key costs about 300 bytes with its
//! `traceparent`, so the default of 10 000 000 keys is about 3 GB at worst; a 1-minute
//! benchmark at 20 000/s holds ~400 MB.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use uuid::Uuid;

use crate::api::ChargeRequest;
use crate::reply::Reply;

/// What a key got the first time it was charged or declined.
#[derive(Clone, Copy)]
pub enum Kind {
    Charged(Uuid),
    Declined,
}

struct Recorded {
    kind: Kind,
    // Kept to tell a true replay from a reuse of the key for another payment (422).
    amount_minor: i64,
    currency: Box<str>,
}

struct Record {
    /// `None` while the key has only seen attempts that recorded nothing (503, 422).
    outcome: Option<Recorded>,
    /// A request for the key is being processed (it holds the [`Claim`]).
    in_flight: bool,
    requests: u64,
    traceparent: Option<Box<str>>,
}

type Shard = Mutex<HashMap<String, Record>>;

const SHARDS: usize = 64;
const SHARD_MASK: u64 = 63;

/// Idempotency keys, in independently locked shards so the two cores rarely contend.
pub struct Store {
    shards: [Shard; SHARDS],
    len: AtomicUsize,
    max_keys: usize,
}

impl Store {
    pub fn new(max_keys: usize) -> Self {
        Self {
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
            len: AtomicUsize::new(0),
            max_keys,
        }
    }

    fn shard(&self, key: &str) -> MutexGuard<'_, HashMap<String, Record>> {
        // FNV-1a: a few cycles per byte, good enough to spread keys over 64 shards
        // (the maps inside keep std's DoS-resistant hasher).
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in key.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        let index = usize::try_from((h ^ (h >> 32)) & SHARD_MASK).unwrap_or(0);
        let shard = self.shards.get(index).unwrap_or(&self.shards[0]);
        // A poisoned lock would mean a panic while holding it, which this code does not
        // do; the map is still consistent, so keep serving.
        shard.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A copy of what `key` got, if it was charged or declined. Copied out so that the
    /// caller serialises it after the lock is released.
    pub fn recorded(&self, key: &str) -> Option<Found> {
        let shard = self.shard(key);
        let record = shard.get(key)?;
        let recorded = record.outcome.as_ref()?;
        Some(Found {
            kind: recorded.kind,
            amount_minor: recorded.amount_minor,
            currency: recorded.currency.clone(),
            requests: record.requests,
            traceparent: record.traceparent.clone(),
        })
    }

    /// Takes one slot of `--max-keys`, if any is left. Called under the shard lock
    /// right before inserting, so the bound is exact.
    fn reserve(&self) -> bool {
        self.len
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                n.checked_add(1).filter(|&next| next <= self.max_keys)
            })
            .is_ok()
    }

    /// First look at a POST: counts it against the key and keeps its `traceparent`, and
    /// returns the recorded answer if the key has one, or else claims the key for this
    /// request unless another request holds it.
    pub fn touch<'a>(
        &'a self,
        key: &'a str,
        traceparent: Option<&str>,
        charge: &ChargeRequest<'_>,
    ) -> Touch<'a> {
        let mut shard = self.shard(key);
        let record = match shard.get_mut(key) {
            Some(record) => {
                record.requests = record.requests.saturating_add(1);
                record
            }
            None => {
                if !self.reserve() {
                    return Touch::Full;
                }
                shard.entry(key.to_owned()).or_insert(Record {
                    outcome: None,
                    in_flight: false,
                    requests: 1,
                    traceparent: None,
                })
            }
        };
        if let Some(tp) = traceparent
            && record.traceparent.as_deref() != Some(tp)
        {
            record.traceparent = Some(tp.into());
        }
        match &record.outcome {
            Some(recorded) => Touch::Recorded(replay(recorded, charge)),
            None if record.in_flight => Touch::InProgress,
            None => {
                record.in_flight = true;
                Touch::Fresh(Claim {
                    store: self,
                    key,
                    held: true,
                })
            }
        }
    }

    /// Ends a claim that recorded nothing.
    fn release(&self, key: &str) {
        if let Some(record) = self.shard(key).get_mut(key) {
            record.in_flight = false;
        }
    }
}

/// A request's hold on its key, from [`Store::touch`] until it is settled or dropped.
pub struct Claim<'a> {
    store: &'a Store,
    key: &'a str,
    /// Cleared by `settle`, which releases the key under the lock it takes anyway.
    held: bool,
}

impl Claim<'_> {
    /// Records a decline or a new charge and releases the key. If the key already has
    /// an outcome (it cannot while claimed, but that is checked, not assumed), that
    /// outcome is replayed instead: one charge per key.
    pub fn settle(mut self, kind: Kind, charge: &ChargeRequest<'_>) -> Reply {
        self.held = false;
        let store = self.store;
        let mut shard = store.shard(self.key);
        let record = match shard.get_mut(self.key) {
            Some(record) => record,
            // `touch` inserted the key and nothing removes keys, so this is not reached;
            // handled anyway rather than assumed.
            None => {
                if !store.reserve() {
                    return Reply::StoreFull;
                }
                shard.entry(self.key.to_owned()).or_insert(Record {
                    outcome: None,
                    in_flight: false,
                    requests: 1,
                    traceparent: None,
                })
            }
        };
        record.in_flight = false;
        if let Some(recorded) = &record.outcome {
            return replay(recorded, charge);
        }
        record.outcome = Some(Recorded {
            kind,
            amount_minor: charge.amount_minor,
            currency: charge.currency.as_ref().into(),
        });
        match kind {
            Kind::Charged(id) => Reply::Created(id),
            Kind::Declined => Reply::Declined,
        }
    }
}

impl Drop for Claim<'_> {
    /// A request answered without a record (422, 503), or abandoned mid-way because its
    /// client went away, frees the key for the next attempt.
    fn drop(&mut self) {
        if self.held {
            self.store.release(self.key);
        }
    }
}

/// What `GET /v1/charges/{key}` shows of a recorded key.
pub struct Found {
    pub kind: Kind,
    pub amount_minor: i64,
    pub currency: Box<str>,
    pub requests: u64,
    pub traceparent: Option<Box<str>>,
}

/// What the first look at a POST found.
pub enum Touch<'a> {
    /// The key has an outcome: the answer to replay.
    Recorded(Reply),
    /// Nothing recorded yet: the request goes on, holding the key.
    Fresh(Claim<'a>),
    /// Another request for the key is being processed.
    InProgress,
    /// A new key, and `--max-keys` are held.
    Full,
}

/// The answer to a replay of a recorded key: its outcome again, or 422 if the amount
/// or currency differs (CONTRACT §4: the key was used before for a different charge).
fn replay(recorded: &Recorded, charge: &ChargeRequest<'_>) -> Reply {
    if recorded.amount_minor != charge.amount_minor || *recorded.currency != *charge.currency {
        return Reply::KeyReused;
    }
    match recorded.kind {
        Kind::Charged(id) => Reply::Replayed(id),
        Kind::Declined => Reply::DeclineReplayed,
    }
}
