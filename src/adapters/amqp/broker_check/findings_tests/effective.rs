//! What the broker's settings come to: versions, the consumer timeout, the
//! delivery limit and the dead-letter exchange, from the queue's arguments,
//! its policy and the node's defaults.

#![allow(clippy::unwrap_used, clippy::arithmetic_side_effects)]

use serde_json::json;

use super::*;

#[test]
fn versions_are_read_from_their_leading_numbers() {
    assert_eq!(Version::parse("3.10.8"), Some(Version::new(3, 10, 8)));
    assert_eq!(Version::parse(" 4.0.0-rc.1 "), Some(Version::new(4, 0, 0)));
    assert_eq!(
        Version::parse("3.13.7+2.g1a2b3c"),
        Some(Version::new(3, 13, 7))
    );
    assert_eq!(Version::parse("4.1"), Some(Version::new(4, 1, 0)));
    assert_eq!(Version::parse("4"), Some(Version::new(4, 0, 0)));
    assert_eq!(Version::parse(""), None);
    assert_eq!(Version::parse("unknown"), None);
    assert!(Version::new(3, 9, 0) < Version::new(3, 10, 0));
    assert!(Version::new(3, 13, 7) < V4_0);
    assert_eq!(Version::new(3, 10, 8).to_string(), "3.10.8");
}

#[test]
fn a_delivery_is_held_for_one_order_when_the_prefetch_fits_the_pool() {
    let order = Duration::from_secs(95);
    assert_eq!(longest_hold(order, 10, 10), order);
    assert_eq!(longest_hold(order, 1, 2048), order);
}

#[test]
fn deliveries_beyond_the_pool_wait_for_a_worker_first() {
    let order = Duration::from_secs(95);
    assert_eq!(longest_hold(order, 4096, 2048), order * 2);
    assert_eq!(longest_hold(order, 4097, 2048), order * 3);
    assert_eq!(longest_hold(order, 65_535, 1), order * 65_535);
    // A pool of zero cannot happen (validated), and does not divide by zero.
    assert_eq!(longest_hold(order, 3, 0), order * 3);
    assert_eq!(longest_hold(Duration::MAX, 4, 1), Duration::MAX);
}

#[test]
fn without_a_version_the_latest_node_default_is_assumed() {
    let timeout = consumer_timeout(&Observed::default());
    assert_eq!(timeout.timeout, Some(30 * MINUTE));
    assert_eq!(timeout.source, TimeoutSource::AssumedNodeDefault);
    assert!(timeout.source.as_str().starts_with("assumed"));
}

#[test]
fn the_node_default_follows_the_version() {
    let at = |version| {
        consumer_timeout(&Observed {
            version: Some(version),
            queue: None,
        })
        .timeout
    };
    assert_eq!(at(Version::new(3, 8, 14)), None);
    assert_eq!(at(Version::new(3, 8, 15)), Some(15 * MINUTE));
    assert_eq!(at(Version::new(3, 8, 16)), Some(15 * MINUTE));
    assert_eq!(at(Version::new(3, 8, 17)), Some(30 * MINUTE));
    assert_eq!(at(V3_10), Some(30 * MINUTE));
    assert_eq!(at(V4_0), Some(30 * MINUTE));
}

#[test]
fn a_per_queue_consumer_timeout_counts_from_3_12_on() {
    let before = consumer_timeout(&observed(
        Version::new(3, 11, 20),
        json!({"x-consumer-timeout": 1000}),
        json!({"consumer-timeout": 2000}),
    ));
    assert_eq!(before.timeout, Some(30 * MINUTE));
    assert_eq!(before.source, TimeoutSource::AssumedNodeDefault);

    let argument = consumer_timeout(&observed(
        V3_12,
        json!({"x-consumer-timeout": 1000}),
        json!({}),
    ));
    assert_eq!(argument.timeout, Some(Duration::from_secs(1)));
    assert_eq!(argument.source, TimeoutSource::QueueArgument);

    let policy = consumer_timeout(&observed(
        V3_12,
        json!({}),
        json!({"consumer-timeout": 2000}),
    ));
    assert_eq!(policy.timeout, Some(Duration::from_secs(2)));
    assert_eq!(policy.source, TimeoutSource::QueuePolicy);
}

#[test]
fn the_lower_of_argument_and_policy_wins() {
    let policy_lower = consumer_timeout(&observed(
        V4_0,
        json!({"x-consumer-timeout": 5000}),
        json!({"consumer-timeout": 4000}),
    ));
    assert_eq!(policy_lower.timeout, Some(Duration::from_secs(4)));
    assert_eq!(policy_lower.source, TimeoutSource::QueuePolicy);

    let argument_lower = consumer_timeout(&observed(
        V4_0,
        json!({"x-consumer-timeout": 3000}),
        json!({"consumer-timeout": 4000}),
    ));
    assert_eq!(argument_lower.source, TimeoutSource::QueueArgument);

    let tie = consumer_timeout(&observed(
        V4_0,
        json!({"x-consumer-timeout": 4000}),
        json!({"consumer-timeout": 4000}),
    ));
    assert_eq!(tie.timeout, Some(Duration::from_secs(4)));
    assert_eq!(tie.source, TimeoutSource::QueueArgument);
}

#[test]
fn a_consumer_timeout_that_is_not_a_non_negative_integer_is_ignored() {
    let ignored = consumer_timeout(&observed(
        V4_0,
        json!({"x-consumer-timeout": -1}),
        json!({"consumer-timeout": "soon"}),
    ));
    assert_eq!(ignored.timeout, Some(30 * MINUTE));
    assert_eq!(ignored.source, TimeoutSource::AssumedNodeDefault);
}

#[test]
fn without_the_management_api_the_delivery_limit_is_unknown() {
    assert_eq!(delivery_limit(&Observed::default()), DeliveryLimit::Unknown);
    assert_eq!(
        delivery_limit(&Observed {
            version: Some(V4_0),
            queue: None,
        }),
        DeliveryLimit::Unknown
    );
}

#[test]
fn before_4_0_a_queue_without_a_limit_has_none() {
    assert_eq!(
        delivery_limit(&observed(V3_10, json!({}), json!({}))),
        DeliveryLimit::Unlimited
    );
}

#[test]
fn from_4_0_on_a_queue_without_a_limit_has_the_default_of_20() {
    assert_eq!(
        delivery_limit(&observed(V4_0, json!({}), json!({}))),
        DeliveryLimit::Limited {
            returns: 20,
            source: LimitSource::BrokerDefault,
        }
    );
}

#[test]
fn the_delivery_limit_is_the_lower_of_argument_and_policy() {
    let limit = |arguments, policy| delivery_limit(&observed(V3_10, arguments, policy));
    assert_eq!(
        limit(json!({"x-delivery-limit": 7}), json!({})),
        DeliveryLimit::Limited {
            returns: 7,
            source: LimitSource::QueueArgument,
        }
    );
    assert_eq!(
        limit(json!({}), json!({"delivery-limit": 2})),
        DeliveryLimit::Limited {
            returns: 2,
            source: LimitSource::Policy,
        }
    );
    assert_eq!(
        limit(json!({"x-delivery-limit": 7}), json!({"delivery-limit": 2})),
        DeliveryLimit::Limited {
            returns: 2,
            source: LimitSource::Policy,
        }
    );
    assert_eq!(
        limit(json!({"x-delivery-limit": 2}), json!({"delivery-limit": 7})),
        DeliveryLimit::Limited {
            returns: 2,
            source: LimitSource::QueueArgument,
        }
    );
    assert_eq!(
        limit(json!({"x-delivery-limit": "2"}), json!({})),
        DeliveryLimit::Unlimited
    );
}

#[test]
fn a_negative_limit_drops_at_the_first_return_before_4_0_and_means_none_after() {
    assert_eq!(
        delivery_limit(&observed(V3_10, json!({"x-delivery-limit": -1}), json!({}))),
        DeliveryLimit::Limited {
            returns: 0,
            source: LimitSource::QueueArgument,
        }
    );
    assert_eq!(
        delivery_limit(&observed(V4_0, json!({"x-delivery-limit": -1}), json!({}))),
        DeliveryLimit::Unlimited
    );
}

#[test]
fn a_dead_letter_exchange_comes_from_the_argument_or_a_policy() {
    assert!(!queue(json!({}), json!({})).has_dead_letter_exchange());
    assert!(queue(json!({"x-dead-letter-exchange": "dlx"}), json!({})).has_dead_letter_exchange());
    assert!(queue(json!({"x-dead-letter-exchange": ""}), json!({})).has_dead_letter_exchange());
    assert!(queue(json!({}), json!({"dead-letter-exchange": "dlx"})).has_dead_letter_exchange());
    assert!(!queue(json!({"x-dead-letter-exchange": 1}), json!({})).has_dead_letter_exchange());
}
