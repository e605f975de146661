//! `Sqs` against moto: every `Queues` method, checked against what moto then
//! holds.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::QueueAttributeName;
use browserfleet::api::fleet::QueueSpec;
use browserfleet::cloud::{
    Aws, FleetId, OutgoingMessage, QueueDefinition, QueueDepth, QueueError, QueueUrl, Queues,
    ReceiveOptions, Service, Sqs,
};

fn message(body: &str) -> OutgoingMessage {
    OutgoingMessage {
        body: body.to_owned(),
        delay: Duration::ZERO,
        attributes: Default::default(),
    }
}

fn no_wait(max: u32) -> ReceiveOptions {
    ReceiveOptions {
        max_messages: max,
        wait: Duration::ZERO,
        visibility: None,
    }
}

async fn attributes(aws: &Aws, url: &QueueUrl) -> HashMap<QueueAttributeName, String> {
    let sqs = aws_sdk_sqs::Client::new(aws.sdk_config());
    let out = sqs
        .get_queue_attributes()
        .queue_url(url.as_str())
        .attribute_names(QueueAttributeName::All)
        .send()
        .await
        .expect("moto answers GetQueueAttributes");
    out.attributes().cloned().unwrap_or_default()
}

async fn request_queue(
    aws: &Aws,
    fleet: &FleetId,
    spec: &QueueSpec,
) -> (Sqs, browserfleet::cloud::EnsuredQueue) {
    let sqs = Sqs::new(aws);
    let ensured = sqs
        .ensure_queue(&QueueDefinition::requests_for(fleet, spec))
        .await
        .expect("ensure_queue succeeds");
    (sqs, ensured)
}

#[tokio::test]
async fn ensure_creates_the_queue_with_its_dead_letter_queue_redrive_and_tags() {
    let aws = testkit::aws().await;
    let fleet = testkit::unique_fleet("ensure");
    let spec = QueueSpec {
        visibility_timeout_seconds: 45,
        max_receive_count: 3,
        message_retention_seconds: 3600,
        ..QueueSpec::default()
    };
    let (_, ensured) = request_queue(&aws, &fleet, &spec).await;

    let attrs = attributes(&aws, &ensured.url).await;
    assert_eq!(attrs[&QueueAttributeName::VisibilityTimeout], "45");
    assert_eq!(
        attrs[&QueueAttributeName::ReceiveMessageWaitTimeSeconds],
        "20"
    );
    assert_eq!(attrs[&QueueAttributeName::MessageRetentionPeriod], "3600");
    let redrive: serde_json::Value =
        serde_json::from_str(&attrs[&QueueAttributeName::RedrivePolicy])
            .expect("redrive policy is JSON");
    let dlq_arn = ensured
        .dead_letter_arn
        .clone()
        .expect("a dead-letter queue");
    assert_eq!(redrive["deadLetterTargetArn"], dlq_arn.as_str());
    assert_eq!(
        redrive["maxReceiveCount"].to_string().trim_matches('"'),
        "3"
    );
    assert_eq!(attrs[&QueueAttributeName::QueueArn], ensured.arn);

    let dlq_url = ensured
        .dead_letter_url
        .clone()
        .expect("a dead-letter queue URL");
    let dlq_attrs = attributes(&aws, &dlq_url).await;
    assert_eq!(
        dlq_attrs[&QueueAttributeName::MessageRetentionPeriod],
        "1209600"
    );

    let sqs = aws_sdk_sqs::Client::new(aws.sdk_config());
    for url in [&ensured.url, &dlq_url] {
        let tags = sqs
            .list_queue_tags()
            .queue_url(url.as_str())
            .send()
            .await
            .expect("tags");
        let tags = tags.tags().cloned().unwrap_or_default();
        assert_eq!(tags["browserfleet.io/fleet"], fleet.to_string());
        assert_eq!(tags["browserfleet.io/fleet-uid"], fleet.uid());
        assert_eq!(tags["browserfleet.io/managed-by"], "browserfleet");
    }
}

#[tokio::test]
async fn ensure_is_idempotent_and_converges_changed_attributes() {
    let aws = testkit::aws().await;
    let fleet = testkit::unique_fleet("idempotent");
    let spec = QueueSpec::default();
    let (sqs, first) = request_queue(&aws, &fleet, &spec).await;
    let second = sqs
        .ensure_queue(&QueueDefinition::requests_for(&fleet, &spec))
        .await
        .expect("second ensure succeeds");
    assert_eq!(first, second);
    assert_eq!(
        aws.recorder().count(Service::Sqs, "CreateQueue"),
        2,
        "queue and DLQ created once"
    );

    let changed = QueueSpec {
        visibility_timeout_seconds: 120,
        max_receive_count: 9,
        ..spec.clone()
    };
    let third = sqs
        .ensure_queue(&QueueDefinition::requests_for(&fleet, &changed))
        .await
        .expect("converging ensure succeeds");
    assert_eq!(third.url, first.url);
    assert_eq!(
        aws.recorder().count(Service::Sqs, "CreateQueue"),
        2,
        "nothing recreated"
    );
    let attrs = attributes(&aws, &third.url).await;
    assert_eq!(attrs[&QueueAttributeName::VisibilityTimeout], "120");
    let redrive: serde_json::Value =
        serde_json::from_str(&attrs[&QueueAttributeName::RedrivePolicy])
            .expect("redrive policy is JSON");
    assert_eq!(
        redrive["maxReceiveCount"].to_string().trim_matches('"'),
        "9"
    );

    let sqs_raw = aws_sdk_sqs::Client::new(aws.sdk_config());
    let listed = sqs_raw
        .list_queues()
        .queue_name_prefix(QueueDefinition::requests_for(&fleet, &spec).name)
        .send()
        .await
        .expect("list queues");
    assert_eq!(
        listed.queue_urls().len(),
        2,
        "one queue and one DLQ: {:?}",
        listed.queue_urls()
    );
}

#[tokio::test]
async fn depth_counts_visible_in_flight_and_delayed_in_one_call() {
    let aws = testkit::aws().await;
    let fleet = testkit::unique_fleet("depth");
    let (sqs, queue) = request_queue(&aws, &fleet, &QueueSpec::default()).await;
    for body in ["a", "b", "c"] {
        sqs.send(&queue.url, &message(body)).await.expect("send");
    }
    let delayed = OutgoingMessage {
        body: "later".to_owned(),
        delay: Duration::from_secs(300),
        attributes: Default::default(),
    };
    sqs.send(&queue.url, &delayed).await.expect("send delayed");
    let received = sqs.receive(&queue.url, no_wait(1)).await.expect("receive");
    assert_eq!(received.len(), 1);

    aws.recorder().reset();
    let depth = sqs.depth(&queue.url).await.expect("depth");
    assert_eq!(
        depth,
        QueueDepth {
            visible: 2,
            in_flight: 1,
            delayed: 1
        }
    );
    assert_eq!(
        aws.recorder().total(),
        1,
        "depth is one GetQueueAttributes call"
    );
    assert_eq!(aws.recorder().count(Service::Sqs, "GetQueueAttributes"), 1);
}

#[tokio::test]
async fn send_batch_splits_into_batches_of_ten() {
    let aws = testkit::aws().await;
    let fleet = testkit::unique_fleet("send-batch");
    let (sqs, queue) = request_queue(&aws, &fleet, &QueueSpec::default()).await;
    let messages: Vec<_> = (0..25).map(|i| message(&format!("request {i}"))).collect();
    aws.recorder().reset();
    let outcome = sqs
        .send_batch(&queue.url, &messages)
        .await
        .expect("send batch");
    assert_eq!(aws.recorder().count(Service::Sqs, "SendMessageBatch"), 3);
    assert!(outcome.failed.is_empty(), "{:?}", outcome.failed);
    let mut indexes: Vec<usize> = outcome.succeeded.iter().map(|(i, _)| *i).collect();
    indexes.sort_unstable();
    assert_eq!(indexes, (0..25).collect::<Vec<_>>());
    assert!(outcome.succeeded.iter().all(|(_, id)| id.is_some()));
    assert_eq!(sqs.depth(&queue.url).await.expect("depth").visible, 25);
}

#[tokio::test]
async fn receive_then_delete_batch_empties_the_queue_in_batches_of_ten() {
    let aws = testkit::aws().await;
    let fleet = testkit::unique_fleet("delete-batch");
    let (sqs, queue) = request_queue(&aws, &fleet, &QueueSpec::default()).await;
    let messages: Vec<_> = (0..15).map(|i| message(&format!("m{i}"))).collect();
    sqs.send_batch(&queue.url, &messages)
        .await
        .expect("send batch");

    let mut receipts = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while receipts.len() < 15 && Instant::now() < deadline {
        let got = sqs.receive(&queue.url, no_wait(10)).await.expect("receive");
        assert!(got.len() <= 10, "at most ten per receive");
        receipts.extend(got.into_iter().map(|m| m.receipt));
    }
    assert_eq!(receipts.len(), 15);
    assert_eq!(sqs.depth(&queue.url).await.expect("depth").in_flight, 15);

    aws.recorder().reset();
    let outcome = sqs
        .delete_batch(&queue.url, &receipts)
        .await
        .expect("delete batch");
    assert_eq!(aws.recorder().count(Service::Sqs, "DeleteMessageBatch"), 2);
    assert_eq!(outcome.succeeded.len(), 15);
    assert!(outcome.failed.is_empty());
    assert_eq!(
        sqs.depth(&queue.url).await.expect("depth"),
        QueueDepth::default()
    );
}

#[tokio::test]
async fn receive_reports_body_and_count_and_delete_removes_one_message() {
    let aws = testkit::aws().await;
    let fleet = testkit::unique_fleet("receive");
    let (sqs, queue) = request_queue(&aws, &fleet, &QueueSpec::default()).await;
    let id = sqs
        .send(&queue.url, &message(r#"{"version":1,"action":"create"}"#))
        .await
        .expect("send");
    let got = sqs.receive(&queue.url, no_wait(10)).await.expect("receive");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].message_id, id);
    assert_eq!(got[0].body, r#"{"version":1,"action":"create"}"#);
    assert_eq!(got[0].receive_count, 1);
    sqs.delete(&queue.url, &got[0].receipt)
        .await
        .expect("delete");
    assert_eq!(
        sqs.depth(&queue.url).await.expect("depth"),
        QueueDepth::default()
    );
}

#[tokio::test]
async fn change_visibility_to_zero_makes_a_message_visible_again() {
    let aws = testkit::aws().await;
    let fleet = testkit::unique_fleet("visibility");
    let (sqs, queue) = request_queue(&aws, &fleet, &QueueSpec::default()).await;
    sqs.send(&queue.url, &message("retry me"))
        .await
        .expect("send");
    let options = ReceiveOptions {
        visibility: Some(Duration::from_secs(600)),
        ..no_wait(1)
    };
    let got = sqs.receive(&queue.url, options).await.expect("receive");
    assert_eq!(got.len(), 1);
    assert!(
        sqs.receive(&queue.url, no_wait(1))
            .await
            .expect("receive")
            .is_empty()
    );

    sqs.change_visibility(&queue.url, &got[0].receipt, Duration::ZERO)
        .await
        .expect("change visibility");
    let again = sqs.receive(&queue.url, no_wait(1)).await.expect("receive");
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].body, "retry me");
    assert_eq!(again[0].receive_count, 2);
}

#[tokio::test]
async fn a_message_moves_to_the_dead_letter_queue_after_max_receive_count() {
    let aws = testkit::aws().await;
    let fleet = testkit::unique_fleet("dlq");
    let spec = QueueSpec {
        max_receive_count: 2,
        ..QueueSpec::default()
    };
    let (sqs, queue) = request_queue(&aws, &fleet, &spec).await;
    sqs.send(&queue.url, &message("poison"))
        .await
        .expect("send");
    let give_back = ReceiveOptions {
        visibility: Some(Duration::ZERO),
        ..no_wait(1)
    };
    for attempt in 1..=2 {
        let got = sqs.receive(&queue.url, give_back).await.expect("receive");
        assert_eq!(got.len(), 1, "receive {attempt} sees the message");
        assert_eq!(got[0].receive_count, attempt);
    }
    let third = sqs.receive(&queue.url, give_back).await.expect("receive");
    assert!(
        third.is_empty(),
        "after two receives the message left the queue"
    );

    let dlq = queue.dead_letter_url.clone().expect("a dead-letter queue");
    let dead = sqs
        .receive(&dlq, no_wait(10))
        .await
        .expect("receive from DLQ");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].body, "poison");
    assert_eq!(
        sqs.depth(&queue.url).await.expect("depth"),
        QueueDepth::default()
    );
}

#[tokio::test]
async fn receive_long_polls_an_empty_queue_for_the_wait() {
    let aws = testkit::aws().await;
    let fleet = testkit::unique_fleet("long-poll");
    let (sqs, queue) = request_queue(&aws, &fleet, &QueueSpec::default()).await;
    let options = ReceiveOptions {
        wait: Duration::from_secs(1),
        ..no_wait(10)
    };
    let started = Instant::now();
    let got = sqs.receive(&queue.url, options).await.expect("receive");
    assert!(got.is_empty());
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "waited {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn deleted_queue_is_gone_and_calls_on_it_are_not_found() {
    let aws = testkit::aws().await;
    let fleet = testkit::unique_fleet("delete-queue");
    let definition = QueueDefinition::events_for(&fleet);
    let sqs = Sqs::new(&aws);
    let ensured = sqs.ensure_queue(&definition).await.expect("ensure");
    assert!(ensured.dead_letter_url.is_none());
    sqs.delete_queue(&ensured.url).await.expect("delete queue");

    let err = sqs
        .depth(&ensured.url)
        .await
        .expect_err("the queue is gone");
    assert!(matches!(err, QueueError::NotFound(_)), "{err:?}");
    assert!(!err.is_retryable());
    assert!(
        err.aws_code()
            .is_some_and(|c| c.contains("NonExistentQueue") || c.contains("QueueDoesNotExist")),
        "{err:?}"
    );
}

#[tokio::test]
async fn the_region_given_in_settings_wins_over_the_environment() {
    let aws = testkit::aws_with(browserfleet::cloud::AwsSettings {
        region: Some("eu-west-1".to_owned()),
        ..testkit::fast_settings()
    })
    .await;
    assert_eq!(aws.region(), Some("eu-west-1"));
    let fleet = testkit::unique_fleet("region");
    let ensured = Sqs::new(&aws)
        .ensure_queue(&QueueDefinition::events_for(&fleet))
        .await
        .expect("ensure in eu-west-1");
    assert!(
        ensured.arn.starts_with("arn:aws:sqs:eu-west-1:"),
        "{}",
        ensured.arn
    );

    let from_env = testkit::aws().await;
    assert_eq!(
        from_env.region(),
        Some("us-east-1"),
        "AWS_REGION when none is given"
    );
}
