//! The Kubernetes API a test runs against: the development API server
//! started for it, or the cluster `BROWSERFLEET_TEST_KUBECONFIG` names
//! (`make test-kube-apiserver` starts a real kube-apiserver for it).

use std::time::Duration;

use anyhow::Context;
use browserfleet::api;
use devcluster::apiserver::DevApiServer;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, ResourceExt};

/// Where a test runs: the development API server started for it, or the
/// cluster named by `BROWSERFLEET_TEST_KUBECONFIG`; either way in a namespace
/// of its own, so tests run in parallel and leave each other alone.
pub struct TestCluster {
    pub client: Client,
    /// How `client` was configured, for tests that need a differently
    /// configured client against the same server.
    pub config: kube::Config,
    pub ns: String,
    pub dev: Option<DevApiServer>,
}

impl TestCluster {
    pub async fn new(test: &str, with_crds: bool) -> Self {
        let (config, dev) = match std::env::var_os("BROWSERFLEET_TEST_KUBECONFIG") {
            Some(path) => {
                let kubeconfig = kube::config::Kubeconfig::read_from(&path)
                    .expect("BROWSERFLEET_TEST_KUBECONFIG is readable");
                let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                    .await
                    .expect("kubeconfig usable");
                (config, None)
            }
            None => {
                let server = DevApiServer::start().await.expect("dev API server starts");
                let url = server.url.parse().expect("dev server URL");
                (kube::Config::new(url), Some(server))
            }
        };
        let client = Client::try_from(config.clone()).expect("client");
        let ns = format!(
            "bf-test-{test}-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..6]
        );
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let mut namespace = Namespace::default();
        namespace.metadata.name = Some(ns.clone());
        namespaces
            .create(&PostParams::default(), &namespace)
            .await
            .expect("test namespace");
        let cluster = Self {
            client,
            config,
            ns,
            dev,
        };
        if with_crds {
            cluster.install_crds().await;
        }
        cluster
    }

    /// Installs our CRDs (a real cluster may have them already) and waits
    /// until they are served.
    pub async fn install_crds(&self) {
        if let Err(error) = install_crds(&self.client).await {
            panic!("{error:#}");
        }
    }

    /// Whether the server keeps (and so enforces) our CRDs' CEL rules:
    /// kube-apiserver before 1.25 does not know `x-kubernetes-validations`
    /// and drops it when it stores the CRD (docs/dev-apiserver.md).
    pub async fn enforces_cel(&self) -> bool {
        let crds: Api<CustomResourceDefinition> = Api::all(self.client.clone());
        let fleet = crds
            .get("browserfleets.browserfleet.io")
            .await
            .expect("BrowserFleet CRD installed");
        let schema = serde_json::to_value(&fleet.spec.versions[0].schema).unwrap();
        schema["openAPIV3Schema"]["properties"]["spec"]["x-kubernetes-validations"].is_array()
    }

    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// A resourceVersion the cluster no longer has history for, for
    /// resources of our CRDs: on the dev server `rv` after forgetting all
    /// history (which also ends open watches); on a real cluster "1", older
    /// than the watch cache of a CRD's resources, which starts when the CRD
    /// is established.
    pub fn expired(&self, rv: &str) -> String {
        match &self.dev {
            Some(server) => {
                server.forget_history();
                rv.to_owned()
            }
            None => "1".to_owned(),
        }
    }
}

/// Creates our CRDs (one that exists already is kept: a real cluster may
/// have them) and waits, through kube-runtime's `await_condition`, until
/// each is established.
pub async fn install_crds(client: &Client) -> anyhow::Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in api::crds() {
        match crds.create(&PostParams::default(), &crd).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(other) => return Err(anyhow::Error::new(other).context("CRD refused")),
        }
        let name = crd.name_any();
        let established = await_condition(crds.clone(), &name, conditions::is_crd_established());
        tokio::time::timeout(Duration::from_secs(90), established)
            .await
            .with_context(|| format!("CRD {name} not established within 90 s"))?
            .with_context(|| format!("watching CRD {name}"))?;
    }
    Ok(())
}
