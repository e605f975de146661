//! Fault injection between the real SDK and moto (through `testkit::fault_proxy`):
//! throttling, server errors, dropped connections, stalls and capacity errors,
//! and what the cloud layer makes of them.

use std::time::Duration;

use browserfleet::cloud::{
    Aws, AwsSettings, ClientToken, Compute, ComputeError, Ec2Compute, EnsuredQueue, LaunchRequest,
    QueueDefinition, QueueError, Queues, RetryMode, Service, Sqs,
};
use testkit::fault_proxy::{Fault, proxy};
use testkit::launch_world::{blueprint, world};

async fn aws(max_attempts: u32) -> Aws {
    proxy();
    testkit::load(AwsSettings {
        max_attempts,
        ..testkit::fast_settings()
    })
    .await
}

/// A queue of its own, and the string that marks requests about it (its
/// name, which every request on it carries in its queue URL).
async fn queue(aws: &Aws, name: &str) -> (Sqs, EnsuredQueue, String) {
    let fleet = testkit::unique_fleet(name);
    let sqs = Sqs::new(aws);
    let ensured = sqs
        .ensure_queue(&QueueDefinition::events_for(&fleet))
        .await
        .expect("ensure through the proxy");
    let marker = ensured
        .url
        .as_str()
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    (sqs, ensured, marker)
}

fn throttle() -> Fault {
    Fault::sqs_error(400, "ThrottlingException", "Rate exceeded")
}

#[tokio::test]
async fn throttled_twice_then_answered_succeeds_within_the_retry_budget() {
    let aws = aws(3).await;
    let (sqs, queue, marker) = queue(&aws, "throttle-then-ok").await;
    let rule = proxy().inject("GetQueueAttributes", &marker, vec![throttle(), throttle()]);
    aws.recorder().reset();

    let depth = sqs.depth(&queue.url).await.expect("third attempt succeeds");
    assert_eq!(depth.visible, 0);
    assert_eq!(rule.seen(), 3, "two throttled attempts and one answered");
    assert_eq!(aws.recorder().total(), 1, "one logical call");
    assert_eq!(aws.recorder().count(Service::Sqs, "GetQueueAttributes"), 1);
}

#[tokio::test]
async fn adaptive_retry_mode_also_rides_out_throttling() {
    proxy();
    let aws = testkit::load(AwsSettings {
        retry_mode: RetryMode::Adaptive,
        max_attempts: 4,
        ..testkit::fast_settings()
    })
    .await;
    let (sqs, queue, marker) = queue(&aws, "adaptive").await;
    let rule = proxy().inject(
        "GetQueueAttributes",
        &marker,
        vec![throttle(), throttle(), throttle()],
    );
    sqs.depth(&queue.url)
        .await
        .expect("fourth attempt succeeds");
    assert_eq!(rule.seen(), 4);
}

#[tokio::test]
async fn throttling_beyond_the_retry_budget_is_a_typed_retryable_error() {
    let aws = aws(3).await;
    let (sqs, queue, marker) = queue(&aws, "throttle-forever").await;
    let rule = proxy().inject("GetQueueAttributes", &marker, vec![throttle(); 10]);

    let err = sqs
        .depth(&queue.url)
        .await
        .expect_err("throttled every time");
    assert!(matches!(err, QueueError::Throttled(_)), "{err:?}");
    assert!(err.is_retryable());
    assert_eq!(err.aws_code(), Some("ThrottlingException"));
    assert_eq!(rule.seen(), 3, "max_attempts attempts, no more");
    let throttled = aws
        .recorder()
        .snapshot()
        .iter()
        .filter(|(k, _)| {
            k.operation == "GetQueueAttributes"
                && k.outcome
                    == browserfleet::cloud::Outcome::Failed(
                        browserfleet::cloud::FaultKind::Throttled,
                    )
        })
        .map(|(_, s)| s.count)
        .sum::<u64>();
    assert_eq!(throttled, 1, "recorded as one throttled call");
}

#[tokio::test]
async fn ec2_throttling_beyond_the_budget_is_a_typed_retryable_compute_error() {
    let aws = aws(2).await;
    let fleet = testkit::unique_fleet("ec2-throttle");
    let compute = Ec2Compute::new(&aws);
    let rule = proxy().inject(
        "DescribeInstances",
        fleet.uid(),
        vec![Fault::ec2_error(503, "RequestLimitExceeded", "Request limit exceeded."); 5],
    );
    let err = compute
        .list_instances(&fleet)
        .await
        .expect_err("throttled every time");
    assert!(matches!(err, ComputeError::Throttled(_)), "{err:?}");
    assert!(err.is_retryable());
    assert_eq!(err.aws_code(), Some("RequestLimitExceeded"));
    assert_eq!(rule.seen(), 2);
}

#[tokio::test]
async fn a_server_error_is_retried() {
    let aws = aws(3).await;
    let (sqs, queue, marker) = queue(&aws, "server-error").await;
    let rule = proxy().inject(
        "GetQueueAttributes",
        &marker,
        vec![Fault::sqs_error(
            500,
            "InternalError",
            "We encountered an internal error",
        )],
    );
    sqs.depth(&queue.url).await.expect("retried after the 500");
    assert_eq!(rule.seen(), 2);
}

#[tokio::test]
async fn a_dropped_connection_is_retried() {
    let aws = aws(3).await;
    let (sqs, queue, marker) = queue(&aws, "dropped").await;
    let rule = proxy().inject("GetQueueAttributes", &marker, vec![Fault::Drop]);
    sqs.depth(&queue.url)
        .await
        .expect("retried after the dropped connection");
    assert_eq!(rule.seen(), 2);
}

#[tokio::test]
async fn a_permanent_error_is_not_retried() {
    let aws = aws(3).await;
    let (sqs, queue, marker) = queue(&aws, "permanent").await;
    let rule = proxy().inject(
        "GetQueueAttributes",
        &marker,
        vec![Fault::sqs_error(400, "InvalidAttributeName", "Unknown Attribute"); 3],
    );
    let err = sqs.depth(&queue.url).await.expect_err("refused");
    assert!(matches!(err, QueueError::InvalidRequest(_)), "{err:?}");
    assert!(!err.is_retryable());
    assert_eq!(err.aws_code(), Some("InvalidAttributeName"));
    assert_eq!(rule.seen(), 1, "a permanent error is sent once");
}

#[tokio::test]
async fn a_stalled_attempt_times_out_and_is_retried() {
    proxy();
    let aws = testkit::load(AwsSettings {
        max_attempts: 3,
        // Long enough that an unfaulted attempt on a loaded machine still
        // answers within it (1 s made a third attempt in CI once).
        attempt_timeout: Duration::from_secs(4),
        ..testkit::fast_settings()
    })
    .await;
    let (sqs, queue, marker) = queue(&aws, "stall-once").await;
    let rule = proxy().inject(
        "GetQueueAttributes",
        &marker,
        vec![Fault::Stall(Duration::from_secs(10))],
    );
    sqs.depth(&queue.url)
        .await
        .expect("second attempt answers in time");
    assert_eq!(rule.seen(), 2);
}

#[tokio::test]
async fn a_call_that_always_stalls_is_a_typed_timeout() {
    proxy();
    let aws = testkit::load(AwsSettings {
        max_attempts: 2,
        attempt_timeout: Duration::from_secs(1),
        operation_timeout: Duration::from_secs(5),
        ..testkit::fast_settings()
    })
    .await;
    let (sqs, queue, marker) = queue(&aws, "stall-forever").await;
    proxy().inject(
        "GetQueueAttributes",
        &marker,
        vec![Fault::Stall(Duration::from_secs(3)); 5],
    );
    let err = sqs
        .depth(&queue.url)
        .await
        .expect_err("every attempt stalls");
    assert!(matches!(err, QueueError::Timeout(_)), "{err:?}");
    assert!(err.is_retryable());
}

#[tokio::test]
async fn capacity_errors_fall_back_to_the_next_type_then_the_next_subnet() {
    let aws = aws(2).await;
    let world = world(&aws, "fallback").await;
    let fleet = testkit::unique_fleet("fallback");
    let compute = Ec2Compute::new(&aws);
    let blueprint = blueprint(&world);
    let rule = proxy().inject(
        "RunInstances",
        fleet.uid(),
        vec![
            Fault::ec2_error(
                400,
                "Unsupported",
                "The requested configuration is currently not supported.",
            ),
            // EC2 sends InsufficientInstanceCapacity as a server error, so
            // the SDK retries it within its budget before the launch falls back.
            Fault::ec2_error(
                500,
                "InsufficientInstanceCapacity",
                "We currently do not have sufficient capacity.",
            ),
            Fault::ec2_error(
                500,
                "InsufficientInstanceCapacity",
                "We currently do not have sufficient capacity.",
            ),
        ],
    );
    // One instance, first subnet first: the order is types in subnet 0, then
    // subnet 1.
    let request = LaunchRequest {
        count: 1,
        sequence: 3,
        first_subnet: 0,
    };
    let outcome = compute
        .launch(&fleet, &blueprint, request)
        .await
        .expect("third placement works");
    assert_eq!(
        rule.seen(),
        4,
        "Unsupported once, ICE twice (retried), then success"
    );

    let misses: Vec<(String, String, Option<String>)> = outcome
        .misses
        .iter()
        .map(|m| (m.instance_type.clone(), m.subnet_id.clone(), m.code.clone()))
        .collect();
    assert_eq!(
        misses,
        vec![
            (
                "m6i.xlarge".to_owned(),
                world.subnets[0].clone(),
                Some("Unsupported".to_owned())
            ),
            (
                "m5.xlarge".to_owned(),
                world.subnets[0].clone(),
                Some("InsufficientInstanceCapacity".to_owned())
            ),
        ]
    );
    assert_eq!(outcome.instances.len(), 1);
    let launched = &outcome.instances[0];
    assert_eq!(launched.instance_type.as_deref(), Some("m6i.xlarge"));
    assert_eq!(
        launched.subnet_id.as_deref(),
        Some(world.subnets[1].as_str())
    );

    let ec2 = aws_sdk_ec2::Client::new(aws.sdk_config());
    let described = ec2
        .describe_instances()
        .instance_ids(launched.id.as_str())
        .send()
        .await
        .expect("describe");
    let token = described.reservations()[0].instances()[0]
        .client_token()
        .map(str::to_owned);
    assert_eq!(
        token.as_deref(),
        Some(ClientToken::for_attempt(&fleet, 3, 0, 2).as_str()),
        "each placement attempt has its own token"
    );
}

#[tokio::test]
async fn no_capacity_anywhere_is_a_retryable_error_listing_every_placement() {
    let aws = aws(1).await;
    let world = world(&aws, "no-capacity").await;
    let fleet = testkit::unique_fleet("no-capacity");
    let compute = Ec2Compute::new(&aws);
    let rule = proxy().inject(
        "RunInstances",
        fleet.uid(),
        vec![Fault::ec2_error(500, "InsufficientInstanceCapacity", "none"); 4],
    );
    let request = LaunchRequest {
        count: 1,
        sequence: 1,
        first_subnet: 0,
    };
    let err = compute
        .launch(&fleet, &blueprint(&world), request)
        .await
        .expect_err("no capacity");
    let ComputeError::NoCapacity { misses } = &err else {
        panic!("expected NoCapacity, got {err:?}");
    };
    assert_eq!(misses.len(), 4, "2 types x 2 subnets");
    assert!(err.is_retryable());
    assert_eq!(rule.seen(), 4);
    assert!(
        compute
            .list_instances(&fleet)
            .await
            .expect("list")
            .is_empty()
    );
}

#[tokio::test]
async fn spot_without_capacity_anywhere_falls_back_to_on_demand() {
    let aws = aws(1).await;
    let world = world(&aws, "spot-fallback").await;
    let fleet = testkit::unique_fleet("spot-fallback");
    let compute = Ec2Compute::new(&aws);
    let mut spot = blueprint(&world);
    spot.capacity_type = browserfleet::api::fleet::CapacityType::SpotThenOnDemand;
    // Every spot placement (2 types x 2 subnets) has no capacity.
    let rule = proxy().inject(
        "RunInstances",
        fleet.uid(),
        vec![Fault::ec2_error(500, "InsufficientInstanceCapacity", "no spot"); 4],
    );
    let request = LaunchRequest {
        count: 1,
        sequence: 1,
        first_subnet: 0,
    };
    let outcome = compute
        .launch(&fleet, &spot, request)
        .await
        .expect("on demand has capacity");
    assert_eq!(rule.seen(), 5, "four spot placements, then on demand");
    assert_eq!(outcome.misses.len(), 4);
    assert!(outcome.misses.iter().all(|m| m.spot));
    assert_eq!(outcome.instances.len(), 1);
    let tags = &outcome.instances[0].tags;
    assert_eq!(
        tags.get("browserfleet.io/capacity-type")
            .map(String::as_str),
        Some("on-demand")
    );

    // Spot alone: no fallback, and a spot instance when there is capacity.
    spot.capacity_type = browserfleet::api::fleet::CapacityType::Spot;
    let other = testkit::unique_fleet("spot-only");
    proxy().inject(
        "RunInstances",
        other.uid(),
        vec![Fault::ec2_error(500, "InsufficientInstanceCapacity", "no spot"); 4],
    );
    let err = compute
        .launch(&other, &spot, request)
        .await
        .expect_err("spot only");
    assert!(
        matches!(err, ComputeError::NoCapacity { ref misses } if misses.len() == 4),
        "{err:?}"
    );
    let launched = compute
        .launch(
            &other,
            &spot,
            LaunchRequest {
                sequence: 2,
                ..request
            },
        )
        .await
        .expect("spot capacity now");
    let instance = &launched.instances[0];
    assert_eq!(
        instance
            .tags
            .get("browserfleet.io/capacity-type")
            .map(String::as_str),
        Some("spot")
    );
    let ec2 = aws_sdk_ec2::Client::new(aws.sdk_config());
    let described = ec2
        .describe_instances()
        .instance_ids(instance.id.as_str())
        .send()
        .await
        .expect("describe");
    let lifecycle = described.reservations()[0].instances()[0]
        .instance_lifecycle()
        .cloned();
    assert_eq!(
        lifecycle,
        Some(aws_sdk_ec2::types::InstanceLifecycleType::Spot)
    );
}

/// Issue #28, item 5: a launch over two subnets whose second group fails
/// with an error that is not about capacity returns the first group's
/// instance (status then records it by id); it used to return only the
/// error, leaving that instance known to nothing but EC2's listing.
#[tokio::test]
async fn a_later_groups_error_keeps_the_instances_of_the_earlier_groups() {
    let aws = aws(2).await;
    let world = world(&aws, "later-error").await;
    let fleet = testkit::unique_fleet("later-error");
    let compute = Ec2Compute::new(&aws);
    let blueprint = blueprint(&world);
    let rule = proxy().inject(
        "RunInstances",
        fleet.uid(),
        vec![
            // The first group's call goes through to moto.
            Fault::Stall(Duration::ZERO),
            Fault::ec2_error(
                400,
                "InvalidParameterValue",
                "The second group's placement is refused.",
            ),
        ],
    );
    let request = LaunchRequest {
        count: 2,
        sequence: 4,
        first_subnet: 0,
    };
    let outcome = compute
        .launch(&fleet, &blueprint, request)
        .await
        .expect("the first group's instance is returned");
    assert_eq!(rule.seen(), 2, "one call per group");
    assert_eq!(outcome.instances.len(), 1);
    assert_eq!(
        outcome.instances[0].subnet_id.as_deref(),
        Some(world.subnets[0].as_str())
    );
}
