//! Which broker settings are findings: a consumer timeout shorter than an
//! order's longest hold, a delivery limit that acts before the daemon's own
//! redelivery limit, and what is reported for a healthy broker.

#![allow(clippy::unwrap_used, clippy::arithmetic_side_effects)]

use serde_json::json;

use super::*;

#[test]
fn a_consumer_timeout_shorter_than_the_longest_hold_is_a_finding() {
    let hold = Duration::from_secs(120);
    let policy = |ms: i64| observed(V3_12, json!({}), json!({"consumer-timeout": ms}));
    assert_eq!(
        assess(&policy(119_999), &limits(hold, 10)).findings,
        vec![Finding::ConsumerTimeoutTooShort {
            timeout: Duration::from_millis(119_999),
            source: TimeoutSource::QueuePolicy,
            longest_hold: hold,
        }]
    );
    assert!(
        assess(&policy(120_000), &limits(hold, 10))
            .findings
            .is_empty()
    );
    assert!(
        assess(&policy(120_001), &limits(hold, 10))
            .findings
            .is_empty()
    );
}

#[test]
fn the_assumed_default_is_checked_too() {
    let hold = 31 * MINUTE;
    let assessment = assess(&Observed::default(), &limits(hold, 10));
    assert_eq!(
        assessment.findings,
        vec![Finding::ConsumerTimeoutTooShort {
            timeout: 30 * MINUTE,
            source: TimeoutSource::AssumedNodeDefault,
            longest_hold: hold,
        }]
    );
}

#[test]
fn no_consumer_timeout_is_never_too_short() {
    let old = Observed {
        version: Some(Version::new(3, 8, 9)),
        queue: None,
    };
    assert!(assess(&old, &limits(Duration::MAX, 10)).findings.is_empty());
}

#[test]
fn a_delivery_limit_below_the_redelivery_limit_without_a_dead_letter_exchange_is_a_finding() {
    // The case verified against RabbitMQ 3.10: a policy of 2 on Q as declared.
    let assessment = assess(
        &observed(
            V3_10,
            json!({"x-queue-type": "quorum"}),
            json!({"delivery-limit": 2}),
        ),
        &defaults(),
    );
    assert_eq!(
        assessment.findings,
        vec![Finding::DeliveryLimitBelowRedeliveryLimit {
            returns: 2,
            source: LimitSource::Policy,
            redelivery_limit: 10,
            dead_letter_exchange: false,
        }]
    );
    assert_eq!(assessment.dead_letter_exchange, Some(false));
}

#[test]
fn a_delivery_limit_one_below_the_redelivery_limit_with_a_dead_letter_exchange_is_a_finding() {
    let assessment = assess(
        &observed(
            V3_10,
            json!({}),
            json!({"delivery-limit": 9, "dead-letter-exchange": "orders.dlx"}),
        ),
        &defaults(),
    );
    assert_eq!(
        assessment.findings,
        vec![Finding::DeliveryLimitBelowRedeliveryLimit {
            returns: 9,
            source: LimitSource::Policy,
            redelivery_limit: 10,
            dead_letter_exchange: true,
        }]
    );
    assert_eq!(assessment.dead_letter_exchange, Some(true));
}

#[test]
fn a_delivery_limit_at_or_above_the_redelivery_limit_is_no_finding_with_or_without_a_dead_letter_exchange()
 {
    // The broker delivers a message whose count equals its limit, and the
    // daemon dead-letters it then, before the broker would drop it.
    for returns in [10, 11, 1000] {
        for arguments in [
            json!({"x-delivery-limit": returns}),
            json!({"x-delivery-limit": returns, "x-dead-letter-exchange": "orders.dlx"}),
        ] {
            let assessment = assess(&observed(V3_10, arguments, json!({})), &defaults());
            assert!(assessment.findings.is_empty(), "{assessment:?}");
            assert_eq!(
                assessment.delivery_limit,
                DeliveryLimit::Limited {
                    returns,
                    source: LimitSource::QueueArgument,
                }
            );
        }
    }
}

#[test]
fn the_4_0_default_of_20_fits_a_redelivery_limit_up_to_20() {
    let observed = observed(V4_0, json!({"x-queue-type": "quorum"}), json!({}));
    for redelivery_limit in [1, 10, 20] {
        assert!(
            assess(
                &observed,
                &limits(Duration::from_secs(190), redelivery_limit)
            )
            .findings
            .is_empty(),
            "{redelivery_limit}"
        );
    }
    assert_eq!(
        assess(&observed, &limits(Duration::from_secs(190), 21)).findings,
        vec![Finding::DeliveryLimitBelowRedeliveryLimit {
            returns: 20,
            source: LimitSource::BrokerDefault,
            redelivery_limit: 21,
            dead_letter_exchange: false,
        }]
    );
}

#[test]
fn a_negative_limit_before_4_0_drops_at_the_first_return_which_is_a_finding() {
    let limit = json!({"x-delivery-limit": -1});
    assert_eq!(
        assess(&observed(V3_10, limit.clone(), json!({})), &defaults()).findings,
        vec![Finding::DeliveryLimitBelowRedeliveryLimit {
            returns: 0,
            source: LimitSource::QueueArgument,
            redelivery_limit: 10,
            dead_letter_exchange: false,
        }]
    );
    assert!(
        assess(&observed(V4_0, limit, json!({})), &defaults())
            .findings
            .is_empty()
    );
}

#[test]
fn no_limit_or_an_unknown_one_is_no_finding() {
    let highest = limits(Duration::from_secs(190), 10_000);
    assert!(
        assess(&observed(V3_10, json!({}), json!({})), &highest)
            .findings
            .is_empty()
    );
    assert!(assess(&Observed::default(), &highest).findings.is_empty());
}

#[test]
fn both_findings_are_reported_together() {
    let assessment = assess(
        &observed(
            V3_12,
            json!({"x-consumer-timeout": 60_000}),
            json!({"delivery-limit": 0}),
        ),
        &defaults(),
    );
    assert_eq!(assessment.findings.len(), 2);
    assert!(matches!(
        assessment.findings.first(),
        Some(Finding::ConsumerTimeoutTooShort { .. })
    ));
    assert!(matches!(
        assessment.findings.get(1),
        Some(Finding::DeliveryLimitBelowRedeliveryLimit { returns: 0, .. })
    ));
}

#[test]
fn the_effective_values_of_a_healthy_broker_are_reported() {
    let assessment = assess(&observed(V3_10, json!({}), json!({})), &defaults());
    assert_eq!(
        assessment,
        Assessment {
            consumer_timeout: ConsumerTimeout {
                timeout: Some(30 * MINUTE),
                source: TimeoutSource::AssumedNodeDefault,
            },
            delivery_limit: DeliveryLimit::Unlimited,
            dead_letter_exchange: Some(false),
            findings: Vec::new(),
        }
    );
}
