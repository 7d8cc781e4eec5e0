//! A check, at every broker session start, that the broker will not undo
//! the daemon's limits or the delivery guarantees behind its back: its
//! delivery acknowledgement timeout must outlast the longest time the
//! daemon can hold a delivery, and the work queue's delivery limit must
//! allow at least `amqp.redelivery_limit` returns, so that the daemon
//! dead-letters a message returned too often, with its headers, before the
//! broker drops it or dead-letters it without them. See [`findings`] for
//! the rules and why.
//!
//! The facts come from the management API when `amqp.management_url` is
//! set ([`management`]); without it only the consumer timeout is checked,
//! against the default of the latest brokers, and the log says so. The
//! check runs beside the consumer, never delays or stops it, and speaks
//! only through log lines: a warning per finding, or one line with the
//! effective values when all is well, or one warning that it could not
//! check.

mod findings;
mod management;

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::findings::{Assessment, DeliveryLimit, Finding, Limits, Observed, longest_hold};
use self::management::Management;
use super::ConsumerSettings;
use super::toolkit::CONFIRM_TIMEOUT;
use crate::config::Secret;

/// What the check needs beyond the consumer's own settings.
#[derive(Debug, Clone)]
pub struct BrokerCheckSettings {
    /// The management API, with or without credentials; `None` when not
    /// configured.
    pub management_url: Option<Secret>,
    /// The longest one order can take outside the broker: the payment
    /// timeout plus the database's longest wait.
    pub order_budget: Duration,
}

/// Starts the check for the session that just declared its topology. It
/// ends on its own within a minute, or when `stop` is cancelled.
pub fn spawn(settings: &ConsumerSettings, tracker: &TaskTracker, stop: &CancellationToken) {
    let settings = settings.clone();
    let stop = stop.clone();
    tracker.spawn(async move {
        tokio::select! {
            () = stop.cancelled() => {}
            () = check(&settings) => {}
        }
    });
}

async fn check(settings: &ConsumerSettings) {
    let queue = settings.names.queue.as_str();
    let per_delivery = settings
        .broker_check
        .order_budget
        .saturating_add(CONFIRM_TIMEOUT);
    let limits = Limits {
        longest_hold: longest_hold(per_delivery, settings.prefetch, settings.concurrency),
        redelivery_limit: settings.redelivery_limit,
    };
    let observed = match &settings.broker_check.management_url {
        None => Observed::default(),
        Some(url) => {
            let observed = match Management::new(url, &settings.url) {
                Ok(management) => management.observe(queue).await,
                Err(error) => Err(error),
            };
            match observed {
                Ok(observed) => observed,
                Err(error) => {
                    tracing::warn!(
                        %error,
                        queue,
                        "could not check the broker's consumer_timeout and delivery limit"
                    );
                    return;
                }
            }
        }
    };
    report(
        queue,
        &observed,
        &limits,
        &findings::assess(&observed, &limits),
    );
}

fn report(queue: &str, observed: &Observed, limits: &Limits, assessment: &Assessment) {
    for finding in &assessment.findings {
        warn(queue, finding);
    }
    if !assessment.findings.is_empty() {
        return;
    }
    let timeout = &assessment.consumer_timeout;
    let consumer_timeout_ms = timeout.timeout.map(millis);
    let consumer_timeout_source = timeout.source.as_str();
    let longest_hold_ms = millis(limits.longest_hold);
    let (delivery_limit, delivery_limit_source) = match assessment.delivery_limit {
        DeliveryLimit::Limited { returns, source } => (Some(returns), Some(source.as_str())),
        DeliveryLimit::Unlimited | DeliveryLimit::Unknown => (None, None),
    };
    if observed.queue.is_none() {
        tracing::info!(
            queue,
            consumer_timeout_ms,
            consumer_timeout_source,
            longest_hold_ms,
            "broker settings partly checked: the consumer timeout fits; \
             set amqp.management_url to check the version and the queue's delivery limit"
        );
        return;
    }
    tracing::info!(
        queue,
        rabbitmq_version = observed.version.map(|v| v.to_string()),
        consumer_timeout_ms,
        consumer_timeout_source,
        longest_hold_ms,
        delivery_limit,
        delivery_limit_source,
        dead_letter_exchange = assessment.dead_letter_exchange,
        redelivery_limit = limits.redelivery_limit,
        "broker settings fit the daemon's limits"
    );
}

fn warn(queue: &str, finding: &Finding) {
    match *finding {
        Finding::ConsumerTimeoutTooShort {
            timeout,
            source,
            longest_hold,
        } => tracing::warn!(
            queue,
            consumer_timeout_ms = millis(timeout),
            consumer_timeout_source = source.as_str(),
            longest_hold_ms = millis(longest_hold),
            "the broker's consumer_timeout is shorter than the longest time a delivery can be held: \
             the broker would take back the channel's deliveries mid-order and redeliver them; \
             raise consumer_timeout, or lower amqp.prefetch or payment.timeout_ms"
        ),
        Finding::DeliveryLimitBelowRedeliveryLimit {
            returns,
            source,
            redelivery_limit,
            dead_letter_exchange: false,
        } => tracing::warn!(
            queue,
            delivery_limit = returns,
            delivery_limit_source = source.as_str(),
            redelivery_limit,
            dead_letter_exchange = false,
            "the broker's delivery limit is below amqp.redelivery_limit and the queue has no \
             dead-letter exchange: a message returned that often (a crash loop, repeatedly lost \
             connections, shutdowns past their grace) is dropped by the broker and lost before \
             the daemon dead-letters it as redelivery_limit; raise delivery-limit to at least \
             amqp.redelivery_limit, or lower amqp.redelivery_limit"
        ),
        Finding::DeliveryLimitBelowRedeliveryLimit {
            returns,
            source,
            redelivery_limit,
            dead_letter_exchange: true,
        } => tracing::warn!(
            queue,
            delivery_limit = returns,
            delivery_limit_source = source.as_str(),
            redelivery_limit,
            dead_letter_exchange = true,
            "the broker's delivery limit is below amqp.redelivery_limit: a message returned \
             that often is dead-lettered by the broker to the queue's dead-letter exchange, \
             without x-error-kind, before the daemon dead-letters it to Q.dead as \
             redelivery_limit; raise delivery-limit to at least amqp.redelivery_limit, or lower \
             amqp.redelivery_limit"
        ),
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
