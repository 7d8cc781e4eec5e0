//! `dlq show`, the filters of `list`, `replay` and `purge`, and `purge`'s
//! confirmation.

use std::io::Write as _;
use std::process::{Command, Stdio};

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_prints_one_dead_letter_and_leaves_it_in_the_queue() {
    let env = TestEnv::new().await;
    let (broker, ids) = with_dead_letters(&env, 3, "payment_declined").await;

    let shown = ok(&dlq(&env, &["show", &ids[1]]));
    assert!(shown.contains(&format!("order_id:  {}", ids[1])), "{shown}");
    assert!(!shown.contains(&ids[0]), "only that order: {shown}");
    assert!(shown.contains("kind:      payment_declined"), "{shown}");
    assert!(shown.contains("reason:    the provider said no"), "{shown}");
    assert!(shown.contains("attempts:  4"), "{shown}");
    assert!(
        shown.contains("trace_id:  0af7651916cd43dd8448eb211c80319c"),
        "{shown}"
    );
    assert!(shown.contains("content_type: application/json"), "{shown}");
    assert!(
        shown.contains("  x-error-kind: payment_declined"),
        "{shown}"
    );
    assert!(shown.contains("\"payment_token\":\"tok_visa\""), "{shown}");
    assert_eq!(
        broker.depth(&env.dead_letter_queue()).await,
        3,
        "nothing removed"
    );

    let missing = dlq(&env, &["show", "no-such-order"]);
    assert_eq!(missing.status.code(), Some(1));
    assert_eq!(broker.depth(&env.dead_letter_queue()).await, 3);
    broker.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_filter_selects_its_dead_letters_for_list_replay_and_purge() {
    let env = TestEnv::new().await;
    let (broker, declined) = with_dead_letters(&env, 2, "payment_declined").await;
    // Three hours old, with another reason.
    let old = Uuid::new_v4().to_string();
    let properties = dead_letter_properties(&old, "invalid", "unknown currency ZZZ", 3 * 3600);
    broker
        .dead_letter(&env, b"{\"currency\":\"ZZZ\"}", properties)
        .await;
    let invalid = add_dead_letters(&env, &broker, 3, "invalid", 0).await;
    let dead = env.dead_letter_queue();

    let listed = ok(&dlq(&env, &["list"]));
    assert!(listed.contains("6 dead letter(s)"), "{listed}");
    let listed = ok(&dlq(&env, &["list", "--kind", "invalid"]));
    assert!(listed.contains("4 dead letter(s)"), "{listed}");
    assert!(!listed.contains("payment_declined"), "{listed}");
    // A substring, case-sensitive.
    let listed = ok(&dlq(&env, &["list", "--reason", "currency"]));
    assert!(listed.contains("1 dead letter(s)"), "{listed}");
    let listed = ok(&dlq(&env, &["list", "--reason", "Currency"]));
    assert!(listed.contains("0 dead letter(s)"), "{listed}");
    let listed = ok(&dlq(&env, &["list", "--older-than", "2h"]));
    assert!(listed.contains("1 dead letter(s)"), "{listed}");
    let listed = ok(&dlq(&env, &["list", "--older-than", "4h"]));
    assert!(listed.contains("0 dead letter(s)"), "{listed}");
    let listed = ok(&dlq(&env, &["list", "--order-id", &declined[0]]));
    assert!(listed.contains("1 dead letter(s)"), "{listed}");
    assert_eq!(broker.depth(&dead).await, 6, "listing removes nothing");

    // No daemon runs: a replayed order waits in the work queue.
    let replayed = ok(&dlq(&env, &["replay", "--order-id", &invalid[2]]));
    assert!(replayed.contains("replayed 1 "), "{replayed}");
    let moved = broker.drain(&env.queue).await;
    assert_eq!(moved.len(), 1);
    assert_eq!(
        moved[0].properties.message_id().as_ref().unwrap().as_str(),
        invalid[2]
    );
    let replayed = ok(&dlq(&env, &["replay", "--older-than", "1h"]));
    assert!(replayed.contains("replayed 1 "), "{replayed}");
    let moved = broker.drain(&env.queue).await;
    assert_eq!(
        moved[0].properties.message_id().as_ref().unwrap().as_str(),
        old
    );

    let purged = ok(&dlq(
        &env,
        &[
            "purge",
            "--yes",
            "--kind",
            "payment_declined",
            "--reason",
            "said",
        ],
    ));
    assert!(purged.contains("purged 2 "), "{purged}");
    let left: Vec<String> = broker
        .drain(&dead)
        .await
        .iter()
        .map(|m| m.properties.message_id().as_ref().unwrap().to_string())
        .collect();
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(left.iter().all(|id| invalid[..2].contains(id)), "{left:?}");
    broker.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_refuses_without_a_terminal_unless_told_yes() {
    let env = TestEnv::new().await;
    let (broker, _) = with_dead_letters(&env, 4, "malformed").await;
    let dead = env.dead_letter_queue();

    let refused = dlq(&env, &["purge"]);
    assert_eq!(refused.status.code(), Some(1));
    let complaint = String::from_utf8_lossy(&refused.stderr);
    assert!(complaint.contains("--yes"), "{complaint}");
    assert_eq!(broker.depth(&dead).await, 4, "nothing removed");

    let purged = ok(&dlq(&env, &["purge", "--yes"]));
    assert!(purged.contains("purged 4 "), "{purged}");
    assert_eq!(broker.depth(&dead).await, 0);
    broker.close().await;
}

/// `dlq purge` on a pseudo-terminal (util-linux `script`), answering `answer`.
fn purge_on_a_terminal(env: &TestEnv, answer: &str) -> (i32, String) {
    let inner = command(env, NO_PROVIDER);
    let mut script = Command::new("script");
    script.env_clear();
    for (name, value) in inner.get_envs() {
        if let Some(value) = value {
            script.env(name, value);
        }
    }
    let line = format!("{} dlq purge", inner.get_program().to_string_lossy());
    let mut child = script
        .args(["-qec", &line, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("util-linux `script` gives the command a terminal");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{answer}\n").as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    (output.status.code().unwrap_or(-1), stdout(&output))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_on_a_terminal_deletes_only_after_yes_is_typed() {
    let env = TestEnv::new().await;
    let (broker, _) = with_dead_letters(&env, 3, "malformed").await;
    let dead = env.dead_letter_queue();

    let (code, said) = purge_on_a_terminal(&env, "no");
    assert_ne!(code, 0, "{said}");
    assert!(said.contains("delete 3 every dead letter"), "{said}");
    assert!(said.contains("type yes"), "{said}");
    assert_eq!(broker.depth(&dead).await, 3, "nothing removed");

    let (code, said) = purge_on_a_terminal(&env, "yes");
    assert_eq!(code, 0, "{said}");
    assert!(said.contains("purged 3 "), "{said}");
    assert_eq!(broker.depth(&dead).await, 0);
    broker.close().await;
}
