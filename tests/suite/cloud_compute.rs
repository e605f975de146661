//! `Ec2Compute` against moto: launching with the whole blueprint, listing by
//! tag with pagination, batched terminate, stop/start, and resolving an AMI
//! from an SSM parameter.

use testkit::launch_world::{blueprint, world};

use std::collections::{BTreeMap, BTreeSet};

use aws_sdk_ec2::types::{Filter, HttpTokensState, Instance, InstanceAttributeName};
use browserfleet::api::fleet::ImageSource;
use browserfleet::cloud::{
    Aws, ClientToken, Compute, ComputeError, Ec2Compute, Ec2State, FleetId, ImageId,
    InstanceBlueprint, InstanceId, LaunchRequest, ManagedFilter, ParameterKind, ParameterWrite,
    Parameters, Service, Ssm,
};

async fn describe(aws: &Aws, ids: &[InstanceId]) -> Vec<Instance> {
    let ec2 = aws_sdk_ec2::Client::new(aws.sdk_config());
    let out = ec2
        .describe_instances()
        .set_instance_ids(Some(ids.iter().map(|i| i.as_str().to_owned()).collect()))
        .send()
        .await
        .expect("describe instances");
    out.reservations()
        .iter()
        .flat_map(|r| r.instances().to_vec())
        .collect()
}

fn tags_of(instance: &Instance) -> BTreeMap<String, String> {
    instance
        .tags()
        .iter()
        .map(|t| {
            (
                t.key().unwrap_or_default().to_owned(),
                t.value().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

async fn launch(
    compute: &Ec2Compute,
    fleet: &FleetId,
    blueprint: &InstanceBlueprint,
    count: u32,
    sequence: u64,
) -> Vec<InstanceId> {
    let request = LaunchRequest {
        count,
        sequence,
        first_subnet: 0,
    };
    let outcome = compute
        .launch(fleet, blueprint, request)
        .await
        .expect("launch");
    assert!(outcome.misses.is_empty());
    outcome.instances.into_iter().map(|i| i.id).collect()
}

#[tokio::test]
async fn launch_applies_the_whole_blueprint() {
    let aws = testkit::aws().await;
    let world = world(&aws, "blueprint").await;
    let fleet = testkit::unique_fleet("blueprint");
    let compute = Ec2Compute::new(&aws);
    let blueprint = blueprint(&world);
    let request = LaunchRequest {
        count: 3,
        sequence: 7,
        first_subnet: 1,
    };
    let outcome = compute
        .launch(&fleet, &blueprint, request)
        .await
        .expect("launch");
    assert_eq!(outcome.instances.len(), 3);
    assert_eq!(
        aws.recorder().count(Service::Ec2, "RunInstances"),
        2,
        "one call per subnet"
    );

    let ids: Vec<InstanceId> = outcome.instances.iter().map(|i| i.id.clone()).collect();
    let instances = describe(&aws, &ids).await;
    assert_eq!(instances.len(), 3);
    let per_subnet: BTreeMap<&str, usize> = instances.iter().fold(BTreeMap::new(), |mut m, i| {
        *m.entry(i.subnet_id().unwrap_or_default()).or_default() += 1;
        m
    });
    // Round-robin from the second subnet: 2 there, 1 in the first.
    assert_eq!(per_subnet[world.subnets[1].as_str()], 2);
    assert_eq!(per_subnet[world.subnets[0].as_str()], 1);

    let ec2 = aws_sdk_ec2::Client::new(aws.sdk_config());
    let mut tokens = BTreeSet::new();
    for instance in &instances {
        assert_eq!(instance.image_id(), Some(world.image_id.as_str()));
        assert_eq!(
            instance.instance_type().map(|t| t.as_str()),
            Some("m6i.xlarge")
        );
        assert_eq!(instance.key_name(), Some(world.key_name.as_str()));
        let groups: Vec<_> = instance
            .security_groups()
            .iter()
            .filter_map(|g| g.group_id())
            .collect();
        assert_eq!(groups, vec![world.security_group.as_str()]);
        let metadata = instance.metadata_options().expect("metadata options");
        assert_eq!(
            metadata.http_tokens(),
            Some(&HttpTokensState::Required),
            "IMDSv2 required"
        );
        tokens.insert(instance.client_token().unwrap_or_default().to_owned());

        let tags = tags_of(instance);
        assert_eq!(tags["browserfleet.io/fleet"], fleet.to_string());
        assert_eq!(tags["browserfleet.io/fleet-uid"], fleet.uid());
        assert_eq!(tags["browserfleet.io/managed-by"], "browserfleet");
        assert_eq!(tags["browserfleet.io/launch-sequence"], "7");
        assert_eq!(tags["team"], "qa");

        let user_data = ec2
            .describe_instance_attribute()
            .instance_id(instance.instance_id().unwrap_or_default())
            .attribute(InstanceAttributeName::UserData)
            .send()
            .await
            .expect("user data");
        let encoded = user_data
            .user_data()
            .and_then(|v| v.value())
            .expect("user data set");
        let decoded = aws_smithy_types::base64::decode(encoded).expect("base64 user data");
        assert_eq!(
            String::from_utf8_lossy(&decoded),
            "<powershell>Write-Output hello</powershell>"
        );

        let root = instance
            .block_device_mappings()
            .iter()
            .find(|m| m.device_name() == instance.root_device_name())
            .and_then(|m| m.ebs())
            .and_then(|e| e.volume_id())
            .expect("root volume");
        let volumes = ec2
            .describe_volumes()
            .volume_ids(root)
            .send()
            .await
            .expect("volumes");
        let volume = &volumes.volumes()[0];
        assert_eq!(volume.size(), Some(64));
        assert_eq!(volume.volume_type().map(|t| t.as_str()), Some("gp3"));
        assert_eq!(volume.encrypted(), Some(true));
        assert_eq!(volume.kms_key_id(), Some("alias/browserfleet"));
        let volume_tags: BTreeMap<_, _> = volume
            .tags()
            .iter()
            .map(|t| (t.key().unwrap_or_default(), t.value().unwrap_or_default()))
            .collect();
        assert_eq!(volume_tags["browserfleet.io/fleet-uid"], fleet.uid());
        assert_eq!(volume_tags["team"], "qa");
    }
    // moto leaves IamInstanceProfile out of DescribeInstances and associates
    // the profile with the first instance of each reservation only; the
    // associations it records show what RunInstances asked for.
    let associations = ec2
        .describe_iam_instance_profile_associations()
        .filters(
            Filter::builder()
                .name("instance-id")
                .set_values(Some(ids.iter().map(|i| i.as_str().to_owned()).collect()))
                .build(),
        )
        .send()
        .await
        .expect("instance profile associations");
    let profiles: Vec<&str> = associations
        .iam_instance_profile_associations()
        .iter()
        .filter_map(|a| a.iam_instance_profile().and_then(|p| p.arn()))
        .collect();
    assert!(!profiles.is_empty());
    for arn in profiles {
        assert!(
            arn.ends_with(&format!(
                "instance-profile/{}",
                testkit::moto::INSTANCE_PROFILE
            )),
            "{arn}"
        );
    }
    let expected: BTreeSet<String> = [
        ClientToken::for_attempt(&fleet, 7, 0, 0),
        ClientToken::for_attempt(&fleet, 7, 1, 0),
    ]
    .iter()
    .map(|t| t.as_str().to_owned())
    .collect();
    assert_eq!(
        tokens, expected,
        "each RunInstances carries its derived client token"
    );
}

#[tokio::test]
async fn launch_with_a_public_ip_uses_a_network_interface_in_the_subnet() {
    let aws = testkit::aws().await;
    let world = world(&aws, "public-ip").await;
    let fleet = testkit::unique_fleet("public-ip");
    let compute = Ec2Compute::new(&aws);
    let blueprint = InstanceBlueprint {
        associate_public_ip: true,
        ..blueprint(&world)
    };
    let ids = launch(&compute, &fleet, &blueprint, 1, 1).await;
    let instance = &describe(&aws, &ids).await[0];
    assert_eq!(instance.subnet_id(), Some(world.subnets[0].as_str()));
    let interface = &instance.network_interfaces()[0];
    let groups: Vec<_> = interface
        .groups()
        .iter()
        .filter_map(|g| g.group_id())
        .collect();
    assert_eq!(groups, vec![world.security_group.as_str()]);
    assert!(
        instance.public_ip_address().is_some(),
        "a public address was associated"
    );
}

#[tokio::test]
async fn list_instances_pages_through_the_fleet_and_nothing_else() {
    let aws = testkit::aws().await;
    let world = world(&aws, "pages").await;
    let fleet = testkit::unique_fleet("pages");
    let other = testkit::unique_fleet("pages-other");
    let compute = Ec2Compute::new(&aws).with_page_size(5);
    let blueprint = blueprint(&world);
    let mut launched = BTreeSet::new();
    // moto pages by reservation, so launch one reservation per instance.
    for sequence in 0..12 {
        launched.extend(launch(&compute, &fleet, &blueprint, 1, sequence).await);
    }
    launch(&compute, &other, &blueprint, 2, 0).await;

    aws.recorder().reset();
    let listed = compute.list_instances(&fleet).await.expect("list");
    let listed_ids: BTreeSet<InstanceId> = listed.iter().map(|i| i.id.clone()).collect();
    assert_eq!(listed_ids, launched);
    // Each instance says which launch it came from, so a restarted operator
    // can finish an unfinished launch instead of doubling it.
    let sequences: BTreeSet<u64> = listed.iter().filter_map(|i| i.launch_sequence()).collect();
    assert_eq!(sequences, (0..12).collect());
    assert_eq!(
        aws.recorder().count(Service::Ec2, "DescribeInstances"),
        3,
        "12 at 5 per page"
    );
    assert_eq!(aws.recorder().total(), 3, "listing makes no other call");
    for instance in &listed {
        assert!(matches!(
            instance.state,
            Ec2State::Pending | Ec2State::Running
        ));
        assert_eq!(instance.tags["browserfleet.io/fleet-uid"], fleet.uid());
        assert!(instance.private_ip.is_some());
        assert!(instance.launch_time.is_some());
        assert_eq!(instance.instance_type.as_deref(), Some("m6i.xlarge"));
    }
}

#[tokio::test]
async fn list_managed_pages_through_every_fleet_and_leaves_out_strangers_and_the_terminated() {
    let aws = testkit::aws().await;
    let world = world(&aws, "managed").await;
    let first = testkit::unique_fleet("managed-a");
    let second = testkit::unique_fleet("managed-b");
    let compute = Ec2Compute::new(&aws).with_page_size(5);
    let blueprint = blueprint(&world);
    let mut ours = BTreeSet::new();
    // One reservation per instance: moto pages by reservation.
    for sequence in 0..4 {
        ours.extend(launch(&compute, &first, &blueprint, 1, sequence).await);
        ours.extend(launch(&compute, &second, &blueprint, 1, sequence).await);
    }
    let gone = launch(&compute, &first, &blueprint, 1, 9).await;
    compute.terminate(&gone).await.expect("terminate");
    // An instance launched without our tags, as another tool would.
    let ec2 = aws_sdk_ec2::Client::new(aws.sdk_config());
    let stranger = ec2
        .run_instances()
        .image_id(world.image_id.as_str())
        .instance_type(aws_sdk_ec2::types::InstanceType::M6iXlarge)
        .min_count(1)
        .max_count(1)
        .subnet_id(&world.subnets[0])
        .send()
        .await
        .expect("run an untagged instance");
    let stranger = InstanceId::new(
        stranger.instances()[0]
            .instance_id()
            .expect("an instance id"),
    );

    aws.recorder().reset();
    let listed = compute
        .list_managed(&ManagedFilter::EVERY)
        .await
        .expect("list managed");
    let listed_ids: BTreeSet<InstanceId> = listed.iter().map(|i| i.id.clone()).collect();
    assert!(listed_ids.is_superset(&ours), "both fleets are listed");
    assert!(!listed_ids.contains(&gone[0]), "terminated is left out");
    assert!(!listed_ids.contains(&stranger), "untagged is left out");
    for instance in &listed {
        assert_eq!(instance.tags["browserfleet.io/managed-by"], "browserfleet");
        assert_ne!(instance.state, Ec2State::Terminated);
    }
    let fleets: BTreeSet<&str> = listed
        .iter()
        .filter(|i| ours.contains(&i.id))
        .map(|i| i.tags["browserfleet.io/fleet"].as_str())
        .collect();
    assert_eq!(
        fleets,
        BTreeSet::from(["tests/managed-a", "tests/managed-b"])
    );
    // Other tests share this moto, so at least 8 / 5 pages, and nothing but
    // DescribeInstances.
    let pages = aws.recorder().count(Service::Ec2, "DescribeInstances");
    assert!(pages >= 2, "{pages} pages");
    assert_eq!(aws.recorder().total(), pages);
}

#[tokio::test]
async fn terminate_splits_into_batches_and_terminated_instances_leave_the_listing() {
    let aws = testkit::aws().await;
    let world = world(&aws, "terminate").await;
    let fleet = testkit::unique_fleet("terminate");
    let compute = Ec2Compute::new(&aws).with_batch_size(4);
    let ids = launch(&compute, &fleet, &blueprint(&world), 10, 1).await;
    assert_eq!(ids.len(), 10);

    aws.recorder().reset();
    compute.terminate(&ids).await.expect("terminate");
    assert_eq!(
        aws.recorder().count(Service::Ec2, "TerminateInstances"),
        3,
        "4 + 4 + 2"
    );
    for instance in describe(&aws, &ids).await {
        let state = instance
            .state()
            .and_then(|s| s.name())
            .map(|n| n.as_str().to_owned());
        assert!(
            matches!(state.as_deref(), Some("terminated") | Some("shutting-down")),
            "{state:?}"
        );
    }
    let listed = compute.list_instances(&fleet).await.expect("list");
    assert!(
        listed.iter().all(|i| i.state == Ec2State::ShuttingDown),
        "only instances still shutting down may remain: {listed:?}"
    );
}

#[tokio::test]
async fn stop_and_start_move_instances_between_states() {
    let aws = testkit::aws().await;
    let world = world(&aws, "stop-start").await;
    let fleet = testkit::unique_fleet("stop-start");
    let compute = Ec2Compute::new(&aws).with_batch_size(2);
    let ids = launch(&compute, &fleet, &blueprint(&world), 3, 1).await;

    compute.stop(&ids).await.expect("stop");
    assert_eq!(aws.recorder().count(Service::Ec2, "StopInstances"), 2);
    let listed = compute.list_instances(&fleet).await.expect("list");
    assert_eq!(listed.len(), 3, "stopped instances are still the fleet's");
    assert!(
        listed
            .iter()
            .all(|i| matches!(i.state, Ec2State::Stopping | Ec2State::Stopped)),
        "{listed:?}"
    );

    compute.start(&ids).await.expect("start");
    let listed = compute.list_instances(&fleet).await.expect("list");
    assert!(
        listed
            .iter()
            .all(|i| matches!(i.state, Ec2State::Pending | Ec2State::Running)),
        "{listed:?}"
    );
}

#[tokio::test]
async fn terminating_an_unknown_instance_is_a_typed_not_found_error() {
    let aws = testkit::aws().await;
    let compute = Ec2Compute::new(&aws);
    let err = compute
        .terminate(&[InstanceId::new("i-0123456789abcdef0")])
        .await
        .expect_err("no such instance");
    assert!(matches!(err, ComputeError::NotFound(_)), "{err:?}");
    assert_eq!(err.aws_code(), Some("InvalidInstanceID.NotFound"));
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn launching_an_image_that_does_not_exist_is_refused_before_run_instances() {
    let aws = testkit::aws().await;
    let world = world(&aws, "no-image").await;
    let fleet = testkit::unique_fleet("no-image");
    let compute = Ec2Compute::new(&aws);
    let blueprint = InstanceBlueprint {
        image_id: ImageId::new("ami-00000000000000000").expect("ami id"),
        ..blueprint(&world)
    };
    let request = LaunchRequest {
        count: 1,
        sequence: 1,
        first_subnet: 0,
    };
    let err = compute
        .launch(&fleet, &blueprint, request)
        .await
        .expect_err("no such image");
    assert!(!err.is_retryable(), "{err:?}");
    assert_eq!(aws.recorder().count(Service::Ec2, "RunInstances"), 0);
}

#[tokio::test]
async fn resolve_image_reads_an_ssm_parameter_or_passes_a_fixed_id() {
    let aws = testkit::aws().await;
    let compute = Ec2Compute::new(&aws);
    let ssm = Ssm::new(&aws);
    let fleet = testkit::unique_fleet("resolve");
    let name = format!("/browserfleet/test/{}/ami", fleet.uid());
    let write = ParameterWrite {
        name: name.clone(),
        value: "ami-0abc1234def567890".to_owned(),
        kind: ParameterKind::String,
        description: None,
        tags: BTreeMap::new(),
    };
    ssm.put_parameter(&write).await.expect("put parameter");

    let from_parameter = ImageSource {
        image_id: None,
        ssm_parameter: Some(name.clone()),
    };
    let resolved = compute
        .resolve_image(&from_parameter)
        .await
        .expect("resolve");
    assert_eq!(resolved.as_str(), "ami-0abc1234def567890");

    let fixed = ImageSource {
        image_id: Some("ami-0fedcba987654321f".to_owned()),
        ssm_parameter: None,
    };
    assert_eq!(
        compute.resolve_image(&fixed).await.expect("fixed").as_str(),
        "ami-0fedcba987654321f"
    );

    let bad_name = format!("{name}-bad");
    ssm.put_parameter(&ParameterWrite {
        name: bad_name.clone(),
        value: "not-an-ami".to_owned(),
        ..write
    })
    .await
    .expect("put parameter");
    let bad = ImageSource {
        image_id: None,
        ssm_parameter: Some(bad_name),
    };
    let err = compute.resolve_image(&bad).await.expect_err("not an AMI");
    assert!(
        matches!(err, ComputeError::ImageParameterInvalid { .. }),
        "{err:?}"
    );

    let missing = ImageSource {
        image_id: None,
        ssm_parameter: Some(format!("{name}-missing")),
    };
    let err = compute
        .resolve_image(&missing)
        .await
        .expect_err("no parameter");
    assert!(matches!(err, ComputeError::NotFound(_)), "{err:?}");
    assert_eq!(err.aws_code(), Some("ParameterNotFound"));
}
