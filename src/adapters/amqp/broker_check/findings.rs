//! What the broker's settings mean for this daemon, as pure functions from
//! what was observed and the daemon's own limits to typed findings.
//!
//! Two broker settings can undo the daemon's guarantees without an error:
//! - the delivery acknowledgement timeout (`consumer_timeout`, node-wide;
//!   since 3.12 also per queue): a delivery held longer makes the broker
//!   take back the channel's deliveries mid-order and redeliver them;
//! - a quorum queue's delivery limit (`x-delivery-limit` or a
//!   `delivery-limit` policy; 20 by default since 4.0): a message returned
//!   to the queue more often is dropped, or dead-lettered by the broker if
//!   the queue has a dead-letter exchange. Either way it never reaches
//!   `Q.dead` with this daemon's `x-error-kind`, and `Q` as declared has no
//!   dead-letter exchange, so it is lost.
//!
//! Returns grow the delivery count: a crash, a lost channel, a shutdown past
//! its grace, or the daemon's own requeue when a retry cannot be parked.
//! The daemon's retries publish a fresh copy, whose count starts at zero,
//! so `retry.max_attempts` has no bearing on it. The daemon dead-letters a
//! message itself, as `redelivery_limit`, when it is delivered with an
//! `x-delivery-count` of `amqp.redelivery_limit`; the broker delivers a
//! message with a count up to its own limit. A broker limit at or above
//! `amqp.redelivery_limit` therefore never acts before the daemon has
//! dead-lettered the message with its headers (a limit above it leaves
//! room for that dead-lettering itself to be interrupted), whether or not
//! the queue has a dead-letter exchange; a limit below it does.

use std::fmt;
use std::time::Duration;

use serde_json::{Map, Value};

/// A RabbitMQ version, `major.minor.patch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl Version {
    pub const fn new(major: u32, minor: u32, patch: u32) -> Self {
        Self {
            major,
            minor,
            patch,
        }
    }

    /// Reads the leading `major.minor.patch` of a version string such as
    /// `3.10.8`, `4.0.0-rc.1` or `3.13.7+2.g1a2b3c`; missing parts are 0.
    pub fn parse(text: &str) -> Option<Self> {
        let numeric = text
            .trim()
            .split(|c: char| !c.is_ascii_digit() && c != '.')
            .next()?;
        let mut parts = numeric.split('.').map(str::parse::<u32>);
        let major = parts.next()?.ok()?;
        let mut next = || parts.next().and_then(Result::ok).unwrap_or(0);
        let minor = next();
        let patch = next();
        Some(Self::new(major, minor, patch))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// The first version with a default `consumer_timeout` (15 minutes).
const FIRST_CONSUMER_TIMEOUT: Version = Version::new(3, 8, 15);
/// The version that raised the default to 30 minutes.
const LONGER_CONSUMER_TIMEOUT: Version = Version::new(3, 8, 17);
/// The first version that reads a consumer timeout per queue.
const PER_QUEUE_CONSUMER_TIMEOUT: Version = Version::new(3, 12, 0);
/// The first version with a default delivery limit on quorum queues.
const DEFAULT_DELIVERY_LIMIT_SINCE: Version = Version::new(4, 0, 0);
const DEFAULT_DELIVERY_LIMIT: u64 = 20;

/// A queue's settings as the management API reports them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueueSettings {
    /// The `x-…` arguments it was declared with.
    pub arguments: Map<String, Value>,
    /// The definition of the policy and operator policy that apply to it,
    /// merged by the broker (`effective_policy_definition`).
    pub policy: Map<String, Value>,
}

impl QueueSettings {
    fn argument(&self, name: &str) -> Option<i64> {
        self.arguments.get(name).and_then(Value::as_i64)
    }

    fn policy(&self, name: &str) -> Option<i64> {
        self.policy.get(name).and_then(Value::as_i64)
    }

    /// Whether the broker dead-letters the queue's messages somewhere (the
    /// empty name, the default exchange, counts).
    pub fn has_dead_letter_exchange(&self) -> bool {
        self.arguments
            .get("x-dead-letter-exchange")
            .is_some_and(Value::is_string)
            || self
                .policy
                .get("dead-letter-exchange")
                .is_some_and(Value::is_string)
    }
}

/// What is known of the broker.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observed {
    /// `None` when unknown: without the management API the daemon cannot
    /// learn it (lapin keeps no server properties of `connection.start`).
    pub version: Option<Version>,
    /// The work queue's settings; `None` without the management API.
    pub queue: Option<QueueSettings>,
}

/// The daemon's own limits, from its settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The longest one delivery may stay unacknowledged.
    pub longest_hold: Duration,
    /// `amqp.redelivery_limit`: the `x-delivery-count` at which the daemon
    /// dead-letters a message unprocessed.
    pub redelivery_limit: u32,
}

/// The longest a delivery can stay unacknowledged. Deliveries beyond the
/// worker pool wait in the prefetch buffer: one may wait while every worker
/// takes its longest, `ceil(prefetch / concurrency) − 1` times over, and
/// then take its own longest, `per_delivery` (the order, then the confirm
/// of a retry or dead-letter copy).
pub fn longest_hold(per_delivery: Duration, prefetch: u16, concurrency: usize) -> Duration {
    let rounds = usize::from(prefetch).div_ceil(concurrency.max(1)).max(1);
    per_delivery.saturating_mul(u32::try_from(rounds).unwrap_or(u32::MAX))
}

/// Where the effective consumer timeout comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutSource {
    /// The queue's `x-consumer-timeout` argument (3.12 and later).
    QueueArgument,
    /// A `consumer-timeout` policy (3.12 and later).
    QueuePolicy,
    /// The node-wide `consumer_timeout` is visible neither over AMQP nor
    /// over the management API: the default of the broker's version (the
    /// latest default when the version is unknown) is assumed.
    AssumedNodeDefault,
}

impl TimeoutSource {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::QueueArgument => "queue argument x-consumer-timeout",
            Self::QueuePolicy => "policy consumer-timeout",
            Self::AssumedNodeDefault => {
                "assumed default: the node-wide consumer_timeout is not visible"
            }
        }
    }
}

/// The delivery acknowledgement timeout that applies to the work queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsumerTimeout {
    /// `None`: no timeout.
    pub timeout: Option<Duration>,
    pub source: TimeoutSource,
}

/// A non-negative millisecond value.
fn millis(value: i64) -> Option<Duration> {
    u64::try_from(value).ok().map(Duration::from_millis)
}

/// Per queue: the lower of argument and policy (the broker's rule), else
/// the node's default.
pub fn consumer_timeout(observed: &Observed) -> ConsumerTimeout {
    let per_queue = observed
        .version
        .is_some_and(|version| version >= PER_QUEUE_CONSUMER_TIMEOUT);
    if let (true, Some(queue)) = (per_queue, &observed.queue) {
        let argument = queue.argument("x-consumer-timeout").and_then(millis);
        let policy = queue.policy("consumer-timeout").and_then(millis);
        let chosen = match (argument, policy) {
            (Some(argument), Some(policy)) if policy < argument => {
                Some((policy, TimeoutSource::QueuePolicy))
            }
            (Some(argument), _) => Some((argument, TimeoutSource::QueueArgument)),
            (None, Some(policy)) => Some((policy, TimeoutSource::QueuePolicy)),
            (None, None) => None,
        };
        if let Some((timeout, source)) = chosen {
            return ConsumerTimeout {
                timeout: Some(timeout),
                source,
            };
        }
    }
    let timeout = match observed.version {
        Some(version) if version < FIRST_CONSUMER_TIMEOUT => None,
        Some(version) if version < LONGER_CONSUMER_TIMEOUT => Some(Duration::from_secs(15 * 60)),
        _ => Some(Duration::from_secs(30 * 60)),
    };
    ConsumerTimeout {
        timeout,
        source: TimeoutSource::AssumedNodeDefault,
    }
}

/// Where the effective delivery limit comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitSource {
    QueueArgument,
    Policy,
    /// Neither sets one: the default of RabbitMQ 4.0 and later.
    BrokerDefault,
}

impl LimitSource {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::QueueArgument => "queue argument x-delivery-limit",
            Self::Policy => "policy delivery-limit",
            Self::BrokerDefault => "default of RabbitMQ 4.0 and later",
        }
    }
}

/// The work queue's delivery limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryLimit {
    /// Not known: the management API is not configured.
    Unknown,
    /// A message may be returned any number of times.
    Unlimited,
    /// A message returned to the queue more than `returns` times is
    /// dropped, or dead-lettered by the broker.
    Limited { returns: u64, source: LimitSource },
}

/// The lower of argument and policy (the broker's rule), else the default
/// of the version.
pub fn delivery_limit(observed: &Observed) -> DeliveryLimit {
    let Some(queue) = &observed.queue else {
        return DeliveryLimit::Unknown;
    };
    let since_4 = observed
        .version
        .is_some_and(|version| version >= DEFAULT_DELIVERY_LIMIT_SINCE);
    let argument = queue.argument("x-delivery-limit");
    let policy = queue.policy("delivery-limit");
    let chosen = match (argument, policy) {
        (Some(argument), Some(policy)) if policy < argument => Some((policy, LimitSource::Policy)),
        (Some(argument), _) => Some((argument, LimitSource::QueueArgument)),
        (None, Some(policy)) => Some((policy, LimitSource::Policy)),
        (None, None) => None,
    };
    match chosen {
        None if since_4 => DeliveryLimit::Limited {
            returns: DEFAULT_DELIVERY_LIMIT,
            source: LimitSource::BrokerDefault,
        },
        None => DeliveryLimit::Unlimited,
        Some((value, source)) => match u64::try_from(value) {
            Ok(returns) => DeliveryLimit::Limited { returns, source },
            // 4.0 reads a negative limit as none; 3.x as 0, dropping a
            // message at its first return.
            Err(_) if since_4 => DeliveryLimit::Unlimited,
            Err(_) => DeliveryLimit::Limited { returns: 0, source },
        },
    }
}

/// Something in the broker's settings that defeats the daemon's limits or
/// the delivery guarantees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finding {
    /// The broker would take deliveries back while their orders are still
    /// being processed, and redeliver them.
    ConsumerTimeoutTooShort {
        timeout: Duration,
        source: TimeoutSource,
        longest_hold: Duration,
    },
    /// The broker gives up on a message before the daemon would: it allows
    /// fewer returns than `amqp.redelivery_limit`, so a message returned
    /// that often is dropped (or dead-lettered by the broker, without the
    /// daemon's headers) instead of reaching `Q.dead` as
    /// `redelivery_limit`.
    DeliveryLimitBelowRedeliveryLimit {
        returns: u64,
        source: LimitSource,
        redelivery_limit: u32,
        dead_letter_exchange: bool,
    },
}

/// Everything the check concluded: the effective values and the findings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assessment {
    pub consumer_timeout: ConsumerTimeout,
    pub delivery_limit: DeliveryLimit,
    /// `None` when unknown.
    pub dead_letter_exchange: Option<bool>,
    pub findings: Vec<Finding>,
}

pub fn assess(observed: &Observed, limits: &Limits) -> Assessment {
    let consumer_timeout = consumer_timeout(observed);
    let delivery_limit = delivery_limit(observed);
    let dead_letter_exchange = observed
        .queue
        .as_ref()
        .map(QueueSettings::has_dead_letter_exchange);
    let mut findings = Vec::new();
    if let Some(timeout) = consumer_timeout.timeout
        && timeout < limits.longest_hold
    {
        findings.push(Finding::ConsumerTimeoutTooShort {
            timeout,
            source: consumer_timeout.source,
            longest_hold: limits.longest_hold,
        });
    }
    if let DeliveryLimit::Limited { returns, source } = delivery_limit
        && returns < u64::from(limits.redelivery_limit)
    {
        findings.push(Finding::DeliveryLimitBelowRedeliveryLimit {
            returns,
            source,
            redelivery_limit: limits.redelivery_limit,
            dead_letter_exchange: dead_letter_exchange.unwrap_or(false),
        });
    }
    Assessment {
        consumer_timeout,
        delivery_limit,
        dead_letter_exchange,
        findings,
    }
}

#[cfg(test)]
#[path = "findings_tests/mod.rs"]
mod tests;
