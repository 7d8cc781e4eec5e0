//! Unit tests of the HTTP payment adapter: the charges URL, the longest
//! wait, and how answers map to the domain's outcomes.

use super::*;

#[test]
fn an_order_waits_for_the_charges_ahead_of_it_when_turns_are_limited() {
    let timeout = Duration::from_secs(5);
    let wait = |timeout, concurrency, max_in_flight| {
        // A very high floor leaves the token line out of the sums (but
        // for a few nanoseconds, below the millisecond compared).
        let limits = PaymentLimits {
            timeout,
            max_in_flight,
            min_rate: 1e12,
        };
        let wait: Duration = longest_wait(limits, concurrency);
        Duration::from_millis(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX))
    };
    assert_eq!(wait(timeout, 2048, None), timeout);
    assert_eq!(wait(timeout, 2048, Some(2048)), timeout);
    assert_eq!(wait(timeout, 16, Some(64)), timeout);
    assert_eq!(wait(timeout, 2048, Some(64)), timeout * 32);
    assert_eq!(wait(timeout, 65, Some(64)), timeout * 2);
    assert_eq!(wait(timeout, 8, Some(0)), timeout * 8);
    assert_eq!(
        longest_wait(
            PaymentLimits {
                timeout: Duration::MAX,
                max_in_flight: Some(1),
                min_rate: 1.0
            },
            2
        ),
        Duration::MAX
    );
    // While rate-limited, an order may wait for every order ahead of it
    // in the line at the slowest rate: 2048 orders at 2/s.
    let limited = PaymentLimits {
        timeout,
        max_in_flight: None,
        min_rate: 2.0,
    };
    assert_eq!(
        longest_wait(limited, 2048),
        timeout + Duration::from_secs(1024)
    );
}

#[test]
fn charges_go_to_v1_charges_under_the_base_urls_path() {
    let url = |base: &str| charges_url(&Url::parse(base).unwrap()).map(String::from);
    for (base, expected) in [
        ("http://127.0.0.1:8081", "http://127.0.0.1:8081/v1/charges"),
        ("http://127.0.0.1:8081/", "http://127.0.0.1:8081/v1/charges"),
        (
            "https://psp.example/api",
            "https://psp.example/api/v1/charges",
        ),
        (
            "https://psp.example/api/",
            "https://psp.example/api/v1/charges",
        ),
        (
            "https://psp.example/api?x=1",
            "https://psp.example/api/v1/charges",
        ),
    ] {
        assert_eq!(url(base).as_deref(), Some(expected), "{base}");
    }
    assert_eq!(url("mailto:payments@example.com"), None);
}
