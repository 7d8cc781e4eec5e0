//! The process: usage errors, an address that cannot be bound, SIGTERM.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::payment_sim::{Sim, run_to_exit};

#[test]
fn bad_arguments_exit_2_with_one_line() {
    for (args, option) in [
        (&["--decline-rate", "2"][..], "--decline-rate"),
        (&["--fail-rate", "-0.1"][..], "--fail-rate"),
        (&["--fail-rate", "NaN"][..], "--fail-rate"),
        (&["--listen", "not-an-address"][..], "--listen"),
        (&["--max-keys", "-1"][..], "--max-keys"),
        (&["--latency-ms", "-5"][..], "--latency-ms"),
        (&["--rate-limit", "0"][..], "--rate-limit"),
        (&["--api-key", ""][..], "--api-key"),
        (&["--api-key", "two words"][..], "--api-key"),
        (&["--admin-listen", "nowhere"][..], "--admin-listen"),
    ] {
        let (code, stderr) = run_to_exit(args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr:?}");
        assert!(stderr.contains(option), "{args:?}: {stderr}");
    }
}

#[test]
fn unbindable_address_exits_1_with_one_line() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, stderr) = run_to_exit(&["--listen", &addr]);
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr:?}");
    assert!(stderr.contains(&addr), "{stderr}");
}

#[cfg(unix)]
#[tokio::test]
async fn sigterm_shuts_down_gracefully() {
    let mut sim = Sim::start(&[]);
    // Leaves a keep-alive connection open, which must not hold up the shutdown.
    assert_eq!(sim.charge(Some("s"), "tok_visa").await.0, 201);
    let status = Command::new("kill")
        .args(["-TERM", &sim.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let started = Instant::now();
    loop {
        if let Some(exit) = sim.child.try_wait().unwrap() {
            assert_eq!(exit.code(), Some(0));
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no exit within 10 s of SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
