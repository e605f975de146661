//! What a launch test launches into: an AMI, two default subnets, a security
//! group and a key pair in moto, and a blueprint that uses all of them.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use anyhow::Context;
use aws_sdk_ec2::types::Filter;
use browserfleet::api::fleet::VolumeType;
use browserfleet::cloud::{Aws, ImageId, InstanceBlueprint, RootVolume};

/// What a test launches into: an AMI, two subnets, a security group, a key.
pub struct World {
    pub image_id: ImageId,
    pub subnets: Vec<String>,
    pub security_group: String,
    pub key_name: String,
}

/// The AMI and the two default subnets every moto has: looked up once per
/// process, because every test of a process shares one moto
/// ([`crate::moto::moto`]) whose defaults never change, and moto spends more
/// than half a second of CPU on each `DescribeImages` of its AMIs, CPU that
/// the parallel tests' own calls wait for.
pub async fn moto_image_and_subnets(
    ec2: &aws_sdk_ec2::Client,
) -> anyhow::Result<(ImageId, Vec<String>)> {
    static FOUND: OnceLock<(ImageId, Vec<String>)> = OnceLock::new();
    if let Some(found) = FOUND.get() {
        return Ok(found.clone());
    }
    let found = look_up_image_and_subnets(ec2).await?;
    Ok(FOUND.get_or_init(|| found).clone())
}

async fn look_up_image_and_subnets(
    ec2: &aws_sdk_ec2::Client,
) -> anyhow::Result<(ImageId, Vec<String>)> {
    let images = ec2.describe_images().owners("amazon").send().await?;
    let image_id = images
        .images()
        .iter()
        .find(|i| i.root_device_name().is_some())
        .and_then(|i| i.image_id())
        .and_then(ImageId::new)
        .context("moto ships default AMIs")?;
    let subnets = ec2
        .describe_subnets()
        .filters(
            Filter::builder()
                .name("default-for-az")
                .values("true")
                .build(),
        )
        .send()
        .await?;
    let mut subnets: Vec<String> = subnets
        .subnets()
        .iter()
        .filter_map(|s| s.subnet_id())
        .map(str::to_owned)
        .collect();
    subnets.sort();
    subnets.truncate(2);
    anyhow::ensure!(subnets.len() == 2, "moto has two default subnets");
    Ok((image_id, subnets))
}

/// Another of moto's default AMIs than `other_than`: what a test changes a
/// fleet's image to.
pub async fn another_image(aws: &Aws, other_than: &ImageId) -> ImageId {
    let ec2 = aws_sdk_ec2::Client::new(aws.sdk_config());
    let images = ec2
        .describe_images()
        .owners("amazon")
        .send()
        .await
        .expect("describe moto's images");
    images
        .images()
        .iter()
        .filter(|i| i.root_device_name().is_some())
        .filter_map(|i| i.image_id())
        .filter_map(ImageId::new)
        .find(|id| id != other_than)
        .expect("moto ships more than one AMI")
}

pub async fn world(aws: &Aws, name: &str) -> World {
    let ec2 = aws_sdk_ec2::Client::new(aws.sdk_config());
    let (image_id, subnets) = match moto_image_and_subnets(&ec2).await {
        Ok(found) => found,
        Err(error) => panic!("launch targets in moto: {error:#}"),
    };
    let group = ec2
        .create_security_group()
        .group_name(format!("bf-{name}-{}", super::unique_fleet(name).uid()))
        .description("browserfleet test")
        .send()
        .await
        .expect("create security group");
    let key_name = format!("bf-{}", super::unique_fleet(name).uid());
    ec2.create_key_pair()
        .key_name(&key_name)
        .send()
        .await
        .expect("create key pair");
    World {
        image_id,
        subnets,
        security_group: group.group_id().expect("group id").to_owned(),
        key_name,
    }
}

pub fn blueprint(world: &World) -> InstanceBlueprint {
    InstanceBlueprint {
        image_id: world.image_id.clone(),
        instance_types: vec!["m6i.xlarge".to_owned(), "m5.xlarge".to_owned()],
        subnet_ids: world.subnets.clone(),
        security_group_ids: vec![world.security_group.clone()],
        instance_profile: super::moto::INSTANCE_PROFILE.to_owned(),
        key_name: Some(world.key_name.clone()),
        root_volume: RootVolume {
            size_gib: 64,
            volume_type: VolumeType::Gp3,
            encrypted: true,
            kms_key_id: Some("alias/browserfleet".to_owned()),
        },
        user_data: Some("<powershell>Write-Output hello</powershell>".to_owned()),
        drift_user_data: None,
        associate_public_ip: false,
        capacity_type: browserfleet::api::fleet::CapacityType::OnDemand,
        tags: BTreeMap::from([("team".to_owned(), "qa".to_owned())]),
        cluster: None,
    }
}
