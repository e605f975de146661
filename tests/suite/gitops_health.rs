//! The Argo CD health checks in `config/argocd/health/`, run by Debian's
//! Lua 5.1 (Argo CD's gopher-lua implements 5.1) against fleets and
//! sessions as the operator left them: progressing, healthy, suspended
//! (paused) and degraded fleets; starting, ready, ended and failed
//! sessions. The objects are read raw from the API server, as Argo CD
//! reads them.

use std::path::{Path, PathBuf};
use std::process::Command;

use browserfleet::api::session::SessionPhase;
use browserfleet::api::{BrowserFleet, BrowserSession};
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use serde_json::{Value, json};

use testkit::operator_world::{OperatorWorld, has_condition, test_settings};

/// What a health check answered.
#[derive(Debug)]
struct Health {
    status: String,
    message: String,
}

fn script(kind: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("config/argocd/health")
        .join(format!("browserfleet.io_{kind}.lua"))
}

/// `value` as a Lua table constructor (JSON null is nil: absent).
fn lua_value(value: &Value) -> String {
    match value {
        Value::Null => "nil".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => lua_string(s),
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(lua_value).collect();
            format!("{{{}}}", items.join(", "))
        }
        Value::Object(map) => {
            let fields: Vec<String> = map
                .iter()
                .map(|(k, v)| format!("[{}] = {}", lua_string(k), lua_value(v)))
                .collect();
            format!("{{{}}}", fields.join(", "))
        }
    }
}

/// A Lua string literal: printable ASCII as is, everything else as decimal
/// byte escapes, which Lua 5.1 reads back byte for byte.
fn lua_string(s: &str) -> String {
    let mut literal = String::from("\"");
    for byte in s.bytes() {
        match byte {
            b'"' | b'\\' => {
                literal.push('\\');
                literal.push(byte as char);
            }
            0x20..=0x7e => literal.push(byte as char),
            _ => literal.push_str(&format!("\\{byte:03}")),
        }
    }
    literal.push('"');
    literal
}

/// Runs the health check of `kind` on `object` the way Argo CD does: the
/// script's body as a function of the global `obj`.
fn health(kind: &str, object: &Value) -> Health {
    let body = std::fs::read_to_string(script(kind)).expect("health script");
    let program = format!(
        "obj = {}\nlocal hs = (function()\n{body}\nend)()\nio.write(hs.status, \"\\n\", hs.message or \"\")\n",
        lua_value(object)
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("check.lua");
    std::fs::write(&file, program).expect("program written");
    let output = Command::new("lua5.1")
        .arg(&file)
        .output()
        .expect("lua5.1 runs (scripts/install-lua.sh installs it)");
    assert!(
        output.status.success(),
        "lua5.1 failed on {kind}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).expect("UTF-8");
    let (status, message) = text.split_once('\n').unwrap_or((&text, ""));
    Health {
        status: status.to_owned(),
        message: message.to_owned(),
    }
}

/// The object `name` of kind `K` as the API server serves it.
async fn raw<K>(world: &OperatorWorld, name: &str) -> Value
where
    K: kube::Resource<DynamicType = ()>,
{
    let resource = ApiResource::erase::<K>(&());
    let api: Api<DynamicObject> =
        Api::namespaced_with(world.cluster.client.clone(), &world.cluster.ns, &resource);
    serde_json::to_value(api.get(name).await.expect("object")).expect("JSON")
}

fn observed(fleet: &BrowserFleet) -> bool {
    fleet
        .status
        .as_ref()
        .and_then(|s| s.observed_generation)
        .is_some_and(|g| Some(g) == fleet.metadata.generation)
}

#[test]
fn the_checks_read_objects_without_status_as_progressing() {
    for kind in ["BrowserFleet", "BrowserSession"] {
        let fresh = json!({"metadata": {"name": "x", "generation": 1}, "spec": {}});
        let answer = health(kind, &fresh);
        assert_eq!(answer.status, "Progressing", "{kind}: {answer:?}");
        assert!(answer.message.contains("operator"), "{kind}: {answer:?}");
    }
    // Strings survive the trip into Lua byte for byte.
    let odd = "quote \" backslash \\ newline \n ünïcode";
    let object =
        json!({"metadata": {"generation": 1}, "status": {"phase": "Failed", "message": odd}});
    assert!(health("BrowserSession", &object).message.ends_with(odd));
}

#[test]
fn the_argocd_cm_entries_are_the_scripts_verbatim() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/argocd/argocd-cm.yaml");
    let text = std::fs::read_to_string(&path).expect("argocd-cm.yaml");
    let config_map: Value = serde_saphyr::from_str(&text).expect("YAML");
    for kind in ["BrowserFleet", "BrowserSession"] {
        let key = format!("resource.customizations.health.browserfleet.io_{kind}");
        let entry = config_map["data"][&key]
            .as_str()
            .expect("an entry per kind");
        let lua = std::fs::read_to_string(script(kind)).expect("script");
        assert_eq!(entry, lua, "{key} differs from {}", script(kind).display());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn argo_cd_health_follows_fleets_and_sessions_through_their_states() {
    let world = OperatorWorld::new("gitops-health").await;
    let _operator = world.start_operator(test_settings(), None).await;
    // Agents come up 3 s after their instance: long enough to see the
    // fleet progressing.
    let nodes = world.start_nodes(|options| options.boot_delay = std::time::Duration::from_secs(3));
    let mut manifest = world.fleet(1, 2);
    manifest["spec"]["agent"]["sessions"] = json!({"defaultTtlSeconds": 300, "maxTtlSeconds": 600});
    world.apply(&manifest).await;

    // Observed, instance still booting.
    world
        .wait_for("observed while its instance boots", |f| {
            observed(f) && !has_condition(f, "Ready", "True")
        })
        .await;
    let booting = raw::<BrowserFleet>(&world, &world.name).await;
    let answer = health("BrowserFleet", &booting);
    assert_eq!(answer.status, "Progressing", "{answer:?}\n{booting:#}");

    world
        .wait_for("ready at its size", |f| {
            observed(f) && has_condition(f, "Ready", "True") && has_condition(f, "Scaling", "False")
        })
        .await;
    let ready = raw::<BrowserFleet>(&world, &world.name).await;
    let answer = health("BrowserFleet", &ready);
    assert_eq!(answer.status, "Healthy", "{answer:?}\n{ready:#}");
    assert!(answer.message.starts_with("AtDesiredSize"), "{answer:?}");
    // The same object once its spec changed and before the operator saw it.
    let mut unseen = ready.clone();
    let generation = unseen["metadata"]["generation"]
        .as_i64()
        .expect("generation");
    unseen["metadata"]["generation"] = json!(generation + 1);
    let answer = health("BrowserFleet", &unseen);
    assert_eq!(answer.status, "Progressing", "{answer:?}");
    assert!(answer.message.contains("generation"), "{answer:?}");

    // Sessions: on the way, ready, ended by their lifetime, refused.
    world
        .apply_session(&world.session("starting", json!({"ttlSeconds": 4})))
        .await;
    let starting = world
        .wait_for_session("starting", "admitted", |s| {
            s.status
                .as_ref()
                .is_some_and(|st| matches!(st.phase, SessionPhase::Starting | SessionPhase::Ready))
        })
        .await;
    if starting.status.as_ref().map(|s| s.phase) == Some(SessionPhase::Starting) {
        let object = raw::<BrowserSession>(&world, "starting").await;
        if object["status"]["phase"] == "Starting" {
            let answer = health("BrowserSession", &object);
            assert_eq!(answer.status, "Progressing", "{answer:?}\n{object:#}");
        }
    }
    world.wait_for_phase("starting", SessionPhase::Ready).await;
    let object = raw::<BrowserSession>(&world, "starting").await;
    let answer = health("BrowserSession", &object);
    assert_eq!(answer.status, "Healthy", "{answer:?}\n{object:#}");
    assert!(answer.message.starts_with("Ready"), "{answer:?}");
    world
        .wait_for_phase("starting", SessionPhase::Terminated)
        .await;
    let object = raw::<BrowserSession>(&world, "starting").await;
    let answer = health("BrowserSession", &object);
    assert_eq!(answer.status, "Healthy", "{answer:?}\n{object:#}");
    assert!(
        answer.message.starts_with("Terminated (expired)"),
        "{answer:?}"
    );

    world
        .apply_session(&world.session("too-long", json!({"ttlSeconds": 3600})))
        .await;
    world.wait_for_phase("too-long", SessionPhase::Failed).await;
    let object = raw::<BrowserSession>(&world, "too-long").await;
    let answer = health("BrowserSession", &object);
    assert_eq!(answer.status, "Degraded", "{answer:?}\n{object:#}");
    assert!(
        answer.message.starts_with("Failed (rejected)"),
        "{answer:?}"
    );

    // Paused.
    let fleets: Api<BrowserFleet> = world.cluster.api();
    fleets
        .patch(
            &world.name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"paused": true}})),
        )
        .await
        .expect("paused");
    world.wait_for("pause observed", observed).await;
    let paused = raw::<BrowserFleet>(&world, &world.name).await;
    let answer = health("BrowserFleet", &paused);
    assert_eq!(answer.status, "Suspended", "{answer:?}\n{paused:#}");

    // Degraded: a spec the schema lets through and the operator refuses
    // (a reply queue on port 99999).
    fleets
        .patch(
            &world.name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"paused": false, "agent": {"replies": {
                "defaultReplyTo": "http://127.0.0.1:99999/123456789012/replies"
            }}}})),
        )
        .await
        .expect("broken");
    world
        .wait_for("invalid spec reported", |f| {
            observed(f) && has_condition(f, "Degraded", "True")
        })
        .await;
    let broken = raw::<BrowserFleet>(&world, &world.name).await;
    let answer = health("BrowserFleet", &broken);
    assert_eq!(answer.status, "Degraded", "{answer:?}\n{broken:#}");
    assert!(answer.message.starts_with("InvalidSpec"), "{answer:?}");
    assert!(answer.message.contains("defaultReplyTo"), "{answer:?}");

    world.delete().await;
    nodes.shutdown().await;
}
