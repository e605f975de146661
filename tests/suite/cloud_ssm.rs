//! `Ssm` against moto: the agent-config parameter and secrets (Parameters),
//! and Run Command (Commands).

use std::collections::BTreeMap;
use std::time::Duration;

use aws_sdk_ssm::types::{ParameterType, ResourceTypeForTagging};
use browserfleet::cloud::{
    Aws, CommandDocument, CommandId, CommandRequest, CommandStatus, Commands, FleetId, InstanceId,
    ParameterKind, ParameterWrite, Parameters, Ssm, SsmError,
};

fn config_write(fleet: &FleetId, value: &str, kind: ParameterKind) -> ParameterWrite {
    ParameterWrite {
        name: format!(
            "/browserfleet/{}/{}/agent-config",
            fleet.namespace(),
            fleet.uid()
        ),
        value: value.to_owned(),
        kind,
        description: Some(format!("agent configuration of fleet {fleet}")),
        tags: fleet.tags(&BTreeMap::new()),
    }
}

async fn tags_of(aws: &Aws, name: &str) -> BTreeMap<String, String> {
    let ssm = aws_sdk_ssm::Client::new(aws.sdk_config());
    let out = ssm
        .list_tags_for_resource()
        .resource_type(ResourceTypeForTagging::Parameter)
        .resource_id(name)
        .send()
        .await
        .expect("list tags");
    out.tag_list()
        .iter()
        .map(|t| (t.key().to_owned(), t.value().to_owned()))
        .collect()
}

#[tokio::test]
async fn agent_config_parameter_is_written_tagged_and_overwritten() {
    let aws = testkit::aws().await;
    let ssm = Ssm::new(&aws);
    let fleet = testkit::unique_fleet("config");
    let first = config_write(&fleet, r#"{"gatewayPort":9222}"#, ParameterKind::String);
    assert_eq!(ssm.put_parameter(&first).await.expect("put"), 1);

    let tags = tags_of(&aws, &first.name).await;
    assert_eq!(tags["browserfleet.io/fleet"], fleet.to_string());
    assert_eq!(tags["browserfleet.io/fleet-uid"], fleet.uid());
    assert_eq!(tags["browserfleet.io/managed-by"], "browserfleet");

    let second = config_write(&fleet, r#"{"gatewayPort":9333}"#, ParameterKind::String);
    assert_eq!(ssm.put_parameter(&second).await.expect("overwrite"), 2);
    let read = ssm.get_parameter(&first.name).await.expect("get");
    assert_eq!(read.value, r#"{"gatewayPort":9333}"#);
    assert_eq!(read.version, 2);
    assert!(!read.secure);

    let raw = aws_sdk_ssm::Client::new(aws.sdk_config());
    let described = raw
        .get_parameter()
        .name(&first.name)
        .send()
        .await
        .expect("raw get");
    assert_eq!(
        described.parameter().and_then(|p| p.r#type()),
        Some(&ParameterType::String)
    );
}

#[tokio::test]
async fn secure_string_is_stored_encrypted_and_read_back_as_a_secret() {
    let aws = testkit::aws().await;
    let ssm = Ssm::new(&aws);
    let fleet = testkit::unique_fleet("secret");
    let write = ParameterWrite {
        name: format!("/browserfleet/{}/autologon-password", fleet.uid()),
        value: "correct horse battery staple".to_owned(),
        kind: ParameterKind::SecureString { kms_key_id: None },
        description: None,
        tags: fleet.tags(&BTreeMap::new()),
    };
    ssm.put_parameter(&write).await.expect("put secure string");

    let raw = aws_sdk_ssm::Client::new(aws.sdk_config());
    let stored = raw
        .get_parameter()
        .name(&write.name)
        .send()
        .await
        .expect("raw get");
    let stored = stored.parameter().expect("parameter");
    assert_eq!(stored.r#type(), Some(&ParameterType::SecureString));
    assert_ne!(
        stored.value(),
        Some(write.value.as_str()),
        "not readable without decryption"
    );

    let secret = ssm.read_secret(&write.name).await.expect("read secret");
    assert_eq!(secret.expose(), "correct horse battery staple");
    assert!(
        !format!("{secret:?}").contains("horse"),
        "Debug never shows a secret"
    );
    let parameter = ssm.get_parameter(&write.name).await.expect("get");
    assert!(parameter.secure);
    assert!(!format!("{parameter:?}").contains("horse"));
}

#[tokio::test]
async fn a_plain_parameter_is_refused_as_a_secret_and_a_missing_one_is_not_found() {
    let aws = testkit::aws().await;
    let ssm = Ssm::new(&aws);
    let fleet = testkit::unique_fleet("not-secret");
    let write = config_write(&fleet, "plain", ParameterKind::String);
    ssm.put_parameter(&write).await.expect("put");
    let err = ssm
        .read_secret(&write.name)
        .await
        .expect_err("plain text is no secret");
    assert!(matches!(err, SsmError::NotSecure { .. }), "{err:?}");

    let err = ssm
        .get_parameter(&format!("{}-missing", write.name))
        .await
        .expect_err("missing");
    assert!(matches!(err, SsmError::NotFound(_)), "{err:?}");
    assert_eq!(err.aws_code(), Some("ParameterNotFound"));
    assert!(!err.is_retryable());
}

async fn two_instances(aws: &Aws, fleet: &FleetId) -> Vec<InstanceId> {
    // Any instance ids will do for moto's Run Command; launch real ones so the
    // test reads like the operator's bootstrap.
    let ec2 = aws_sdk_ec2::Client::new(aws.sdk_config());
    let images = ec2
        .describe_images()
        .owners("amazon")
        .send()
        .await
        .expect("images");
    let image = images
        .images()
        .first()
        .and_then(|i| i.image_id())
        .expect("an AMI");
    let out = ec2
        .run_instances()
        .image_id(image)
        .min_count(2)
        .max_count(2)
        .client_token(fleet.uid())
        .send()
        .await
        .expect("run instances");
    out.instances()
        .iter()
        .filter_map(|i| i.instance_id())
        .map(InstanceId::new)
        .collect()
}

async fn wait_until_final(
    ssm: &Ssm,
    command: &CommandId,
    instance: &InstanceId,
) -> browserfleet::cloud::CommandInvocation {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let invocation = ssm.invocation(command, instance).await.expect("invocation");
        if invocation.status.is_final() || tokio::time::Instant::now() > deadline {
            return invocation;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn shell_and_powershell_commands_are_sent_and_each_invocation_is_read() {
    let aws = testkit::aws().await;
    let ssm = Ssm::new(&aws);
    let fleet = testkit::unique_fleet("commands");
    let instances = two_instances(&aws, &fleet).await;
    let raw = aws_sdk_ssm::Client::new(aws.sdk_config());

    for (document, expected_name) in [
        (
            CommandDocument::Shell(vec!["echo install".to_owned()]),
            "AWS-RunShellScript",
        ),
        (
            CommandDocument::PowerShell(vec!["Write-Output install".to_owned()]),
            "AWS-RunPowerShellScript",
        ),
    ] {
        let lines = match &document {
            CommandDocument::Shell(lines) | CommandDocument::PowerShell(lines) => lines.clone(),
            CommandDocument::Named { .. } => unreachable!("only script documents here"),
        };
        let request = CommandRequest {
            document,
            instance_ids: instances.clone(),
            comment: Some("install agent 1.2.3".to_owned()),
            delivery_timeout: Some(Duration::from_secs(600)),
            max_concurrency: None,
            max_errors: None,
        };
        let command = ssm.send_command(&request).await.expect("send command");

        let listed = raw
            .list_commands()
            .command_id(command.as_str())
            .send()
            .await
            .expect("list commands");
        let sent = &listed.commands()[0];
        assert_eq!(sent.document_name(), Some(expected_name));
        assert_eq!(sent.comment(), Some("install agent 1.2.3"));
        assert_eq!(
            sent.parameters().and_then(|p| p.get("commands")),
            Some(&lines)
        );
        // moto adds every instance of the region to a command sent without
        // Targets, so only check that ours are among them.
        let targets: Vec<&str> = sent.instance_ids().iter().map(String::as_str).collect();
        for instance in &instances {
            assert!(
                targets.contains(&instance.as_str()),
                "{instance} in {targets:?}"
            );
        }

        for instance in &instances {
            let invocation = wait_until_final(&ssm, &command, instance).await;
            assert_eq!(&invocation.instance_id, instance);
            assert_eq!(invocation.command_id, command);
            // moto does not execute: every invocation succeeds with no output.
            assert_eq!(invocation.status, CommandStatus::Success);
            assert_eq!(invocation.response_code, Some(0));
        }
    }
}

#[tokio::test]
async fn a_named_document_is_sent_with_its_parameters() {
    let aws = testkit::aws().await;
    let ssm = Ssm::new(&aws);
    let fleet = testkit::unique_fleet("named");
    let instances = two_instances(&aws, &fleet).await;
    let parameters = BTreeMap::from([
        ("action".to_owned(), vec!["Install".to_owned()]),
        ("name".to_owned(), vec!["browserfleet-agent".to_owned()]),
    ]);
    let request = CommandRequest {
        document: CommandDocument::Named {
            name: "AWS-ConfigureAWSPackage".to_owned(),
            parameters: parameters.clone(),
        },
        instance_ids: instances[..1].to_vec(),
        comment: None,
        delivery_timeout: None,
        max_concurrency: None,
        max_errors: None,
    };
    let command = ssm.send_command(&request).await.expect("send command");
    let raw = aws_sdk_ssm::Client::new(aws.sdk_config());
    let listed = raw
        .list_commands()
        .command_id(command.as_str())
        .send()
        .await
        .expect("list commands");
    let sent = &listed.commands()[0];
    assert_eq!(sent.document_name(), Some("AWS-ConfigureAWSPackage"));
    let sent_parameters: BTreeMap<String, Vec<String>> = sent
        .parameters()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .collect();
    assert_eq!(sent_parameters, parameters);
    let invocation = wait_until_final(&ssm, &command, &instances[0]).await;
    assert!(invocation.status.is_final());
}

#[tokio::test]
async fn reading_an_unknown_command_is_not_found() {
    let aws = testkit::aws().await;
    let ssm = Ssm::new(&aws);
    let err = ssm
        .invocation(
            &CommandId::new("00000000-0000-0000-0000-000000000000"),
            &InstanceId::new("i-0123456789abcdef0"),
        )
        .await
        .expect_err("no such command");
    assert!(matches!(err, SsmError::NotFound(_)), "{err:?}");
    assert!(!err.is_retryable());
}
