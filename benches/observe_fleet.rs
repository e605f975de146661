//! Scenario: AWS calls per fleet observation.
//!
//! One observation is what the operator's reconcile reads from AWS every time:
//! the fleet's instances (one tag-filtered `DescribeInstances`, plus pages) and
//! the request queue's depth (one `GetQueueAttributes`). This launches fleets
//! of 10, 100 and 1,000 instances in a local moto, observes each a few times,
//! and prints the calls counted by the cloud layer's recorder. The count must
//! not grow with the fleet beyond the pages of the listing.
//!
//! Run with `make bench-observe` (installs moto into .venv/ when missing), or
//! `cargo run --example observe_fleet` once moto is installed.

use testkit::moto;

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use browserfleet::api::fleet::{QueueSpec, VolumeType};
use browserfleet::cloud::{
    Aws, AwsSettings, Compute, Ec2Compute, FleetId, InstanceBlueprint, LaunchRequest,
    OutgoingMessage, QueueDefinition, Queues, RootVolume, Service, Sqs,
};

const SIZES: [u32; 3] = [10, 100, 1000];
const OBSERVATIONS: u32 = 5;
/// Instances per `RunInstances` call while building the fleet.
const LAUNCH_CHUNK: u32 = 250;

struct Row {
    instances: u32,
    describe_calls: f64,
    queue_calls: f64,
    total_calls: f64,
    mean_latency: Duration,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let moto = moto::moto();
    moto::use_endpoint(&moto.endpoint);
    let aws = Aws::load(AwsSettings::default())
        .await
        .context("loading AWS config")?;
    let blueprint = blueprint(&aws).await?;

    let mut rows = Vec::new();
    for size in SIZES {
        let fleet = FleetId::new(
            "bench",
            format!("fleet-{size}"),
            format!("bench-uid-{size}"),
        )?;
        let launched = launch(&aws, &fleet, &blueprint, size).await?;
        let sqs = Sqs::new(&aws);
        let queue = sqs
            .ensure_queue(&QueueDefinition::requests_for(
                &fleet,
                &QueueSpec::default(),
            ))
            .await?;
        let messages: Vec<OutgoingMessage> = (0..size / 10)
            .map(|i| OutgoingMessage {
                body: format!(r#"{{"version":1,"action":"create","requestId":"{i}"}}"#),
                delay: Duration::ZERO,
                attributes: Default::default(),
            })
            .collect();
        sqs.send_batch(&queue.url, &messages).await?;

        // The operator's page size: EC2's maximum, so a fleet of up to 1,000
        // instances is one page.
        let compute = Ec2Compute::new(&aws);
        aws.recorder().reset();
        let started = Instant::now();
        for _ in 0..OBSERVATIONS {
            let instances = compute.list_instances(&fleet).await?;
            let depth = sqs.depth(&queue.url).await?;
            if instances.len() as u32 != launched || depth.visible != u64::from(size / 10) {
                bail!(
                    "fleet {fleet} observed {} instances and {depth:?}",
                    instances.len()
                );
            }
        }
        let per = |n: u64| n as f64 / f64::from(OBSERVATIONS);
        let recorder = aws.recorder();
        rows.push(Row {
            instances: size,
            describe_calls: per(recorder.count(Service::Ec2, "DescribeInstances")),
            queue_calls: per(recorder.count(Service::Sqs, "GetQueueAttributes")),
            total_calls: per(recorder.total()),
            mean_latency: started.elapsed() / OBSERVATIONS,
        });
    }
    print_table(&rows);
    Ok(())
}

async fn blueprint(aws: &Aws) -> anyhow::Result<InstanceBlueprint> {
    let ec2 = aws_sdk_ec2::Client::new(aws.sdk_config());
    let (image_id, subnet_ids) = testkit::launch_world::moto_image_and_subnets(&ec2).await?;
    Ok(InstanceBlueprint {
        image_id,
        instance_types: vec!["m6i.xlarge".to_owned()],
        subnet_ids,
        security_group_ids: Vec::new(),
        instance_profile: moto::INSTANCE_PROFILE.to_owned(),
        key_name: None,
        root_volume: RootVolume {
            size_gib: 50,
            volume_type: VolumeType::Gp3,
            encrypted: true,
            kms_key_id: None,
        },
        user_data: None,
        drift_user_data: None,
        associate_public_ip: false,
        capacity_type: browserfleet::api::fleet::CapacityType::OnDemand,
        tags: Default::default(),
        cluster: None,
    })
}

async fn launch(
    aws: &Aws,
    fleet: &FleetId,
    blueprint: &InstanceBlueprint,
    size: u32,
) -> anyhow::Result<u32> {
    let compute = Ec2Compute::new(aws);
    let mut launched = 0;
    let mut sequence = 0;
    while launched < size {
        let count = LAUNCH_CHUNK.min(size - launched);
        let request = LaunchRequest {
            count,
            sequence,
            first_subnet: sequence as usize,
        };
        launched += compute
            .launch(fleet, blueprint, request)
            .await?
            .instances
            .len() as u32;
        sequence += 1;
    }
    Ok(launched)
}

fn print_table(rows: &[Row]) {
    println!(
        "AWS calls per fleet observation (list instances + queue depth), moto, {OBSERVATIONS} observations each"
    );
    println!();
    println!(
        "| instances | DescribeInstances | GetQueueAttributes | total calls | mean time per observation |"
    );
    println!("|---:|---:|---:|---:|---:|");
    for row in rows {
        println!(
            "| {} | {:.1} | {:.1} | {:.1} | {:.1} ms |",
            row.instances,
            row.describe_calls,
            row.queue_calls,
            row.total_calls,
            row.mean_latency.as_secs_f64() * 1000.0
        );
    }
}
