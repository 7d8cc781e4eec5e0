//! The commands that move dead letters: `export`/`import` give back the
//! very same messages, `replay --rate` keeps its pace, and `replay`,
//! `export` and `purge` killed mid-way lose nothing.

use std::collections::HashSet;
use std::process::Child;
use std::time::Instant;

use lapin::types::FieldTable;

use super::*;

/// Headers of every type RabbitMQ keeps as it is.
fn many_headers() -> FieldTable {
    let mut inner = FieldTable::default();
    inner.insert("queue".into(), AMQPValue::LongString("q.retry.1".into()));
    inner.insert("time".into(), AMQPValue::Timestamp(1_700_000_000));
    let mut headers = FieldTable::default();
    let values = [
        ("x-error-kind", AMQPValue::LongString("invalid".into())),
        ("x-attempts", AMQPValue::LongLongInt(4)),
        ("flag", AMQPValue::Boolean(true)),
        ("small", AMQPValue::LongInt(-7)),
        ("ratio", AMQPValue::Double(0.1)),
        (
            "binary",
            AMQPValue::LongString(vec![0xff, 0x00, 0xfe].into()),
        ),
        ("when", AMQPValue::Timestamp(1_700_000_123)),
        ("nested", AMQPValue::FieldTable(inner.clone())),
        (
            "x-death",
            AMQPValue::FieldArray(vec![AMQPValue::FieldTable(inner)].into()),
        ),
        ("raw", AMQPValue::ByteArray(vec![1, 2, 255].into())),
    ];
    for (name, value) in values {
        headers.insert(name.into(), value);
    }
    headers
}

/// The properties as published: without the `x-delivery-count` the quorum
/// queue adds to every delivery (and the header table it creates for it).
fn as_published(received: &BasicProperties) -> BasicProperties {
    let Some(headers) = received.headers() else {
        return received.clone();
    };
    let mut kept = std::collections::BTreeMap::new();
    for (name, value) in headers.inner() {
        if name.as_str() != "x-delivery-count" {
            kept.insert(name.clone(), value.clone());
        }
    }
    if kept.is_empty() {
        let mut shown = serde_json::to_value(received).unwrap();
        shown["headers"] = serde_json::Value::Null;
        return serde_json::from_value(shown).unwrap();
    }
    received.clone().with_headers(kept.into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_then_import_gives_back_the_same_bytes_headers_and_properties() {
    let env = TestEnv::new().await;
    let broker = Broker::connect().await;
    broker.declare(&env).await;
    let full = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_content_encoding("identity".into())
        .with_headers(many_headers())
        .with_delivery_mode(2)
        .with_priority(3)
        .with_correlation_id("corr".into())
        .with_reply_to("replies".into())
        .with_expiration("86400000".into())
        .with_message_id("m-1".into())
        .with_timestamp(1_700_000_000)
        .with_type("order".into())
        .with_user_id("guest".into())
        .with_app_id("shop".into())
        .with_cluster_id("c".into());
    let sent: Vec<(Vec<u8>, BasicProperties)> = vec![
        (order_json(Uuid::new_v4(), "tok_visa"), full),
        (vec![0x00, 0xff, 0x80, b'\n'], BasicProperties::default()),
        (
            "é".as_bytes().to_vec(),
            BasicProperties::default().with_message_id("m-3".into()),
        ),
    ];
    for (body, properties) in &sent {
        broker.dead_letter(&env, body, properties.clone()).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dead.jsonl");
    let file = file.to_str().unwrap();

    let exported = ok(&dlq(&env, &["export", "--file", file]));
    assert!(exported.contains("exported 3 "), "{exported}");
    assert_eq!(std::fs::read_to_string(file).unwrap().lines().count(), 3);
    assert_eq!(
        broker.depth(&env.dead_letter_queue()).await,
        0,
        "moved to the file"
    );

    let imported = ok(&dlq(&env, &["import", "--file", file]));
    assert!(imported.contains("imported 3 "), "{imported}");
    let back = broker.drain(&env.dead_letter_queue()).await;
    assert_eq!(back.len(), 3);
    for ((body, properties), received) in sent.iter().zip(&back) {
        assert_eq!(&received.body, body);
        assert_eq!(&as_published(&received.properties), properties);
    }

    // --skip resumes after the lines already published.
    let resumed = ok(&dlq(&env, &["import", "--file", file, "--skip", "2"]));
    assert!(resumed.contains("imported 1 "), "{resumed}");
    let back = broker.drain(&env.dead_letter_queue()).await;
    assert_eq!(back.len(), 1);
    assert_eq!(as_published(&back[0].properties), sent[2].1);
    broker.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_with_a_rate_takes_at_least_the_paced_time() {
    let env = TestEnv::new().await;
    let (broker, _) = with_dead_letters(&env, 11, "retries_exhausted").await;
    let started = Instant::now();
    let replayed = ok(&dlq(&env, &["replay", "--rate", "10/s"]));
    // Eleven messages at ten a second: the last is due a second after the first.
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert!(replayed.contains("replayed 11 "), "{replayed}");
    assert_eq!(broker.depth(&env.queue).await, 11);
    broker.close().await;
}

/// Starts `dlq …` in the background.
fn spawn(env: &TestEnv, args: &[&str]) -> Child {
    command(env, NO_PROVIDER)
        .arg("dlq")
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// SIGKILL, as an OOM killer or a lost node would.
fn kill(mut child: Child) {
    child.kill().unwrap();
    child.wait().unwrap();
}

fn message_ids(messages: &[common::broker::Received]) -> Vec<String> {
    messages
        .iter()
        .map(|m| m.properties.message_id().as_ref().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_killed_mid_way_leaves_every_message_in_one_queue_or_the_other() {
    let env = TestEnv::new().await;
    let (broker, ids) = with_dead_letters(&env, 60, "retries_exhausted").await;
    let child = spawn(&env, &["replay", "--rate", "20/s"]);
    env.eventually(WAIT, "some replayed", || async {
        broker.depth(&env.queue).await >= 5
    })
    .await;
    kill(child);
    let dead = env.dead_letter_queue();
    env.eventually(WAIT, "unacknowledged dead letters back", || async {
        broker.depth(&dead).await + broker.depth(&env.queue).await >= 60
    })
    .await;
    let left = message_ids(&broker.drain(&dead).await);
    assert!(!left.is_empty(), "the replay was interrupted");
    let found: HashSet<String> = left
        .into_iter()
        .chain(message_ids(&broker.drain(&env.queue).await))
        .collect();
    assert!(ids.iter().all(|id| found.contains(id)), "none lost");
    broker.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_killed_mid_way_leaves_every_message_in_the_file_or_the_queue() {
    let env = TestEnv::new().await;
    let (broker, ids) = with_dead_letters(&env, 60, "invalid").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dead.jsonl");
    let lines = || {
        std::fs::read_to_string(&file)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let child = spawn(
        &env,
        &["export", "--file", file.to_str().unwrap(), "--rate", "20/s"],
    );
    env.eventually(WAIT, "some exported", || async { lines().len() >= 5 })
        .await;
    kill(child);
    let dead = env.dead_letter_queue();
    env.eventually(WAIT, "unacknowledged dead letters back", || async {
        broker.depth(&dead).await as usize + lines().len() >= 60
    })
    .await;
    let left = message_ids(&broker.drain(&dead).await);
    assert!(!left.is_empty(), "the export was interrupted");
    let exported = lines().into_iter().map(|line| {
        let line: serde_json::Value = serde_json::from_str(&line).unwrap();
        line["properties"]["message_id"]
            .as_str()
            .unwrap()
            .to_owned()
    });
    let found: HashSet<String> = left.into_iter().chain(exported).collect();
    assert!(ids.iter().all(|id| found.contains(id)), "none lost");
    broker.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_killed_mid_way_deletes_only_what_it_selected() {
    let env = TestEnv::new().await;
    let (broker, kept) = with_dead_letters(&env, 5, "invalid").await;
    add_dead_letters(&env, &broker, 40, "malformed", 0).await;
    let dead = env.dead_letter_queue();
    let child = spawn(
        &env,
        &["purge", "--yes", "--kind", "malformed", "--rate", "20/s"],
    );
    env.eventually(WAIT, "the purge reading", || async {
        broker.depth(&dead).await < 45
    })
    .await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    kill(child);
    env.eventually(WAIT, "unacknowledged dead letters back", || async {
        let depth = broker.depth(&dead).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        depth == broker.depth(&dead).await && depth > 5
    })
    .await;
    let left = broker.drain(&dead).await;
    let malformed = left
        .iter()
        .filter(|m| m.header("x-error-kind").as_deref() == Some("malformed"))
        .count();
    assert!(
        malformed > 0 && malformed < 40,
        "interrupted mid-way: {malformed}"
    );
    let left = message_ids(&left);
    assert!(
        kept.iter().all(|id| left.contains(id)),
        "unselected ones kept"
    );
    broker.close().await;
}
