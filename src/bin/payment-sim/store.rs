//! The idempotency keys the simulator has seen, and what each one got.
//!
//! A key is remembered from its first well-formed POST (failed and rejected attempts
//! included, so their `requests` count survives). Recording a decline or a charge
//! inserts-if-absent under the shard lock, so concurrent first requests for one key
//! make exactly one charge and the others replay it.
//!
//! Memory is bounded by `--max-keys`: once that many keys are held a new key is
//! answered 503 instead of growing the store. A key costs about 300 bytes with its
//! `traceparent`, so the default of 10 000 000 keys is about 3 GB at worst; a 1-minute
//! benchmark at 20 000/s holds ~400 MB.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use uuid::Uuid;

use crate::api::{ChargeRequest, Reply};

/// What a key got the first time it was charged or declined.
#[derive(Clone, Copy)]
pub enum Kind {
    Charged(Uuid),
    Declined,
}

struct Recorded {
    kind: Kind,
    // Kept to tell a true replay from a reuse of the key for another payment (409).
    amount_minor: i64,
    currency: Box<str>,
}

struct Record {
    /// `None` while the key has only seen attempts that recorded nothing (503, 422).
    outcome: Option<Recorded>,
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
    /// returns the recorded answer if the key has one.
    pub fn touch(&self, key: &str, traceparent: Option<&str>, charge: &ChargeRequest<'_>) -> Touch {
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
            None => Touch::Fresh,
        }
    }

    /// Records a decline or a new charge unless a concurrent request for the same key
    /// recorded first, in which case that outcome is replayed: one charge per key.
    pub fn settle(&self, key: &str, kind: Kind, charge: &ChargeRequest<'_>) -> Reply {
        let mut shard = self.shard(key);
        let record = match shard.entry(key.to_owned()) {
            Entry::Occupied(entry) => entry.into_mut(),
            // `touch` inserted the key and nothing removes keys, so this is not reached;
            // handled anyway rather than assumed.
            Entry::Vacant(entry) => {
                if !self.reserve() {
                    return Reply::StoreFull;
                }
                entry.insert(Record {
                    outcome: None,
                    requests: 1,
                    traceparent: None,
                })
            }
        };
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

/// What `GET /v1/charges/{key}` shows of a recorded key.
pub struct Found {
    pub kind: Kind,
    pub amount_minor: i64,
    pub currency: Box<str>,
    pub requests: u64,
    pub traceparent: Option<Box<str>>,
}

/// What the first look at a POST found.
pub enum Touch {
    /// The key has an outcome: the answer to replay.
    Recorded(Reply),
    /// Nothing recorded yet: the request goes on.
    Fresh,
    /// A new key, and `--max-keys` are held.
    Full,
}

/// The answer to a replay of a recorded key: its outcome again, or 409 if the amount
/// or currency differs.
fn replay(recorded: &Recorded, charge: &ChargeRequest<'_>) -> Reply {
    if recorded.amount_minor != charge.amount_minor || *recorded.currency != *charge.currency {
        return Reply::Conflict;
    }
    match recorded.kind {
        Kind::Charged(id) => Reply::Replayed(id),
        Kind::Declined => Reply::DeclineReplayed,
    }
}
