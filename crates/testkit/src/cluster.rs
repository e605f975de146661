//! The Kubernetes API a test runs against: the development API server
//! started for it, or the cluster `BROWSERFLEET_TEST_KUBECONFIG` names
//! (`make test-kube-apiserver` starts a real kube-apiserver for it).

use std::time::Duration;

use browserfleet::api;
use devcluster::apiserver::DevApiServer;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};

use crate::agent_world::eventually;

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
        let crds: Api<CustomResourceDefinition> = Api::all(self.client.clone());
        for crd in api::crds() {
            match crds.create(&PostParams::default(), &crd).await {
                Ok(_) => {}
                Err(kube::Error::Api(status)) if status.code == 409 => {}
                Err(other) => panic!("CRD refused: {other}"),
            }
            let name = crd.name_any();
            eventually("CRD established", Duration::from_secs(90), || {
                let crds = crds.clone();
                let name = name.clone();
                async move {
                    crds.get(&name)
                        .await
                        .ok()
                        .and_then(|c| c.status)
                        .and_then(|s| s.conditions)
                        .is_some_and(|c| {
                            c.iter()
                                .any(|c| c.type_ == "Established" && c.status == "True")
                        })
                }
            })
            .await;
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
