//! The broker check's pure functions, tested on observed values: what the
//! broker's settings come to (`effective`), and which of them undo a
//! guarantee of the daemon (`verdicts`). The helpers here build the
//! observations both use.

#![allow(clippy::unwrap_used, clippy::arithmetic_side_effects)]

use std::time::Duration;

use serde_json::Value;

use super::*;

mod effective;
mod verdicts;

const MINUTE: Duration = Duration::from_secs(60);
const V3_10: Version = Version::new(3, 10, 8);
const V3_12: Version = Version::new(3, 12, 0);
const V4_0: Version = Version::new(4, 0, 0);

fn map(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

fn queue(arguments: Value, policy: Value) -> QueueSettings {
    QueueSettings {
        arguments: map(arguments),
        policy: map(policy),
    }
}

fn observed(version: Version, arguments: Value, policy: Value) -> Observed {
    Observed {
        version: Some(version),
        queue: Some(queue(arguments, policy)),
    }
}

fn limits(longest_hold: Duration, redelivery_limit: u32) -> Limits {
    Limits {
        longest_hold,
        redelivery_limit,
    }
}

/// The daemon's defaults: a redelivery limit of 10, a hold far below any
/// default timeout.
fn defaults() -> Limits {
    limits(Duration::from_secs(190), 10)
}
