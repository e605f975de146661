//! The little of Kubernetes' protobuf encoding the dev server reads: request
//! bodies of Secrets and DeleteOptions, which Helm's release storage sends
//! (client-go typed clients write protobuf for built-in kinds). Responses
//! stay JSON, which those clients accept too.
//!
//! A body is the magic `k8s\0` and a `runtime.Unknown` whose `raw` is the
//! object (`k8s.io/apimachinery/pkg/runtime/serializer/protobuf`). Fields
//! the dev server does not know are refused, never dropped.
//!
//! The wire format is prost's; the messages are declared here, only the
//! fields the dev server reads, with Kubernetes' field numbers. The
//! generated `k8s-pb` crate would declare them for us, but it is every
//! Kubernetes API in one crate: 36 s of compile against prost's 7 s
//! (a cold debug build on this project's 2 cores), paid again by every CI
//! run, for the five messages below. prost drops fields it has no
//! declaration for; [`Strict`] turns that into a refusal.

use base64::Engine;
use prost::Message;
use prost::bytes::{Buf, BufMut};
use prost::encoding::{DecodeContext, WireType};
use serde_json::{Map, Value, json};

/// The media type.
pub const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";

const MAGIC: &[u8] = b"k8s\0";

/// Why a body could not be read.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("protobuf: {0}")]
pub struct ProtobufError(String);

impl From<prost::DecodeError> for ProtobufError {
    fn from(error: prost::DecodeError) -> Self {
        ProtobufError(error.to_string())
    }
}

/// A message that remembers the first field it has no declaration for.
///
/// prost skips such a field and leaves the message as it was. Every field
/// declared below is `optional` or `repeated` (Kubernetes' messages are
/// proto2), so reading a declared field always lengthens the message's
/// encoding: a field after which the length is unchanged was skipped. The
/// message is reached only through [`Strict::read`], which refuses it then.
/// (A singular field sent twice is read as protobuf reads it, the last one
/// wins, but refused if both have the same length; Go writes each field
/// once.)
#[derive(Debug, Default)]
struct Strict<M> {
    message: M,
    skipped: Option<u32>,
}

impl<M: prost::Name> Strict<M> {
    fn read(self) -> Result<M, ProtobufError> {
        match self.skipped {
            None => Ok(self.message),
            Some(field) => Err(ProtobufError(format!(
                "field {field} of {} is not supported by the development API server",
                M::NAME
            ))),
        }
    }
}

/// By hand, as prost's own well-known types are: the methods prost's
/// derive writes for a message, forwarded to it.
impl<M: Message> Message for Strict<M> {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        self.message.encode_raw(buf);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        let before = self.message.encoded_len();
        self.message.merge_field(tag, wire_type, buf, ctx)?;
        if self.message.encoded_len() == before {
            self.skipped.get_or_insert(tag);
        }
        Ok(())
    }

    fn encoded_len(&self) -> usize {
        self.message.encoded_len()
    }

    fn clear(&mut self) {
        self.message.clear();
        self.skipped = None;
    }
}

/// `runtime.Unknown`, the envelope.
#[derive(prost::Message)]
struct Unknown {
    #[prost(message, optional, tag = "1")]
    type_meta: Option<TypeMeta>,
    #[prost(bytes = "vec", optional, tag = "2")]
    raw: Option<Vec<u8>>,
    #[prost(string, optional, tag = "3")]
    content_encoding: Option<String>,
    #[prost(string, optional, tag = "4")]
    content_type: Option<String>,
}

/// `runtime.TypeMeta`: only its kind is read, the rest is the path's.
#[derive(prost::Message)]
struct TypeMeta {
    #[prost(string, optional, tag = "2")]
    kind: Option<String>,
}

/// `core/v1.Secret`.
#[derive(prost::Message)]
struct Secret {
    #[prost(message, optional, tag = "1")]
    metadata: Option<Strict<ObjectMeta>>,
    #[prost(message, repeated, tag = "2")]
    data: Vec<Strict<MapEntry>>,
    #[prost(string, optional, tag = "3")]
    r#type: Option<String>,
    #[prost(message, repeated, tag = "4")]
    string_data: Vec<Strict<MapEntry>>,
    #[prost(bool, optional, tag = "5")]
    immutable: Option<bool>,
}

/// `metav1.ObjectMeta`: the fields a client sets on a write, and those
/// generated Go code writes whether set or not (selfLink, uid, generation,
/// creationTimestamp), which are the server's and not used.
#[derive(prost::Message)]
struct ObjectMeta {
    #[prost(string, optional, tag = "1")]
    name: Option<String>,
    #[prost(string, optional, tag = "2")]
    generate_name: Option<String>,
    #[prost(string, optional, tag = "3")]
    namespace: Option<String>,
    #[prost(bytes = "vec", optional, tag = "4")]
    self_link: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "5")]
    uid: Option<Vec<u8>>,
    #[prost(string, optional, tag = "6")]
    resource_version: Option<String>,
    #[prost(int64, optional, tag = "7")]
    generation: Option<i64>,
    #[prost(bytes = "vec", optional, tag = "8")]
    creation_timestamp: Option<Vec<u8>>,
    #[prost(message, repeated, tag = "11")]
    labels: Vec<Strict<MapEntry>>,
    #[prost(message, repeated, tag = "12")]
    annotations: Vec<Strict<MapEntry>>,
    #[prost(string, repeated, tag = "14")]
    finalizers: Vec<String>,
}

/// One entry of a `map<string, string>` or `map<string, bytes>`, which on
/// the wire is a repeated message. Declared rather than a prost map so
/// that an entry is strict too and a value is read as bytes, whatever the
/// map's value type.
#[derive(prost::Message)]
struct MapEntry {
    #[prost(string, optional, tag = "1")]
    key: Option<String>,
    #[prost(bytes = "vec", optional, tag = "2")]
    value: Option<Vec<u8>>,
}

/// `metav1.DeleteOptions`.
#[derive(prost::Message)]
struct DeleteOptions {
    #[prost(int64, optional, tag = "1")]
    grace_period_seconds: Option<i64>,
    #[prost(message, optional, tag = "2")]
    preconditions: Option<Strict<Preconditions>>,
    #[prost(bool, optional, tag = "3")]
    orphan_dependents: Option<bool>,
    #[prost(string, optional, tag = "4")]
    propagation_policy: Option<String>,
    #[prost(string, repeated, tag = "5")]
    dry_run: Vec<String>,
}

/// `metav1.Preconditions`.
#[derive(prost::Message)]
struct Preconditions {
    #[prost(string, optional, tag = "1")]
    uid: Option<String>,
    #[prost(string, optional, tag = "2")]
    resource_version: Option<String>,
}

macro_rules! names {
    ($($message:ident in $package:literal),* $(,)?) => {$(
        impl prost::Name for $message {
            const NAME: &'static str = stringify!($message);
            const PACKAGE: &'static str = $package;
        }
    )*};
}

names! {
    Unknown in "k8s.io.apimachinery.pkg.runtime",
    Secret in "k8s.io.api.core.v1",
    ObjectMeta in "k8s.io.apimachinery.pkg.apis.meta.v1",
    MapEntry in "",
    DeleteOptions in "k8s.io.apimachinery.pkg.apis.meta.v1",
    Preconditions in "k8s.io.apimachinery.pkg.apis.meta.v1",
}

fn error(message: impl Into<String>) -> ProtobufError {
    ProtobufError(message.into())
}

/// Generated Go code writes every non-pointer field, empty or not, so an
/// empty value means absent.
fn set_text(map: &mut Map<String, Value>, key: &str, value: Option<String>) {
    if let Some(value) = value.filter(|value| !value.is_empty()) {
        map.insert(key.to_owned(), json!(value));
    }
}

/// A map field's entries as a JSON object, each value through `value`;
/// nothing for an empty map.
fn set_map(
    object: &mut Map<String, Value>,
    key: &str,
    entries: Vec<Strict<MapEntry>>,
    value: impl Fn(Vec<u8>) -> Value,
) -> Result<(), ProtobufError> {
    let mut map = Map::new();
    for entry in entries {
        let entry = entry.read()?;
        map.insert(
            entry.key.unwrap_or_default(),
            value(entry.value.unwrap_or_default()),
        );
    }
    if !map.is_empty() {
        object.insert(key.to_owned(), Value::Object(map));
    }
    Ok(())
}

fn lossy_text(bytes: Vec<u8>) -> Value {
    json!(String::from_utf8_lossy(&bytes))
}

fn object_meta(meta: ObjectMeta) -> Result<Value, ProtobufError> {
    let mut json = Map::new();
    set_text(&mut json, "name", meta.name);
    set_text(&mut json, "generateName", meta.generate_name);
    set_text(&mut json, "namespace", meta.namespace);
    set_text(&mut json, "resourceVersion", meta.resource_version);
    set_map(&mut json, "labels", meta.labels, lossy_text)?;
    set_map(&mut json, "annotations", meta.annotations, lossy_text)?;
    if !meta.finalizers.is_empty() {
        json.insert("finalizers".into(), json!(meta.finalizers));
    }
    Ok(Value::Object(json))
}

/// `core/v1.Secret` as JSON: data base64-encoded, as the JSON form has it.
fn secret(raw: &[u8]) -> Result<Value, ProtobufError> {
    let secret = Strict::<Secret>::decode(raw)?.read()?;
    let mut json = Map::new();
    json.insert("apiVersion".into(), json!("v1"));
    json.insert("kind".into(), json!("Secret"));
    if let Some(meta) = secret.metadata {
        json.insert("metadata".into(), object_meta(meta.read()?)?);
    }
    set_text(&mut json, "type", secret.r#type);
    if let Some(immutable) = secret.immutable {
        json.insert("immutable".into(), json!(immutable));
    }
    let engine = base64::engine::general_purpose::STANDARD;
    set_map(&mut json, "data", secret.data, |v| json!(engine.encode(v)))?;
    set_map(&mut json, "stringData", secret.string_data, lossy_text)?;
    Ok(Value::Object(json))
}

/// `metav1.DeleteOptions` as JSON.
fn delete_options(raw: &[u8]) -> Result<Value, ProtobufError> {
    let options = Strict::<DeleteOptions>::decode(raw)?.read()?;
    let mut json = json!({"kind": "DeleteOptions", "apiVersion": "v1"});
    if let Some(seconds) = options.grace_period_seconds {
        json["gracePeriodSeconds"] = json!(seconds);
    }
    if let Some(preconditions) = options.preconditions {
        let preconditions = preconditions.read()?;
        let mut object = Map::new();
        set_text(&mut object, "uid", preconditions.uid);
        set_text(
            &mut object,
            "resourceVersion",
            preconditions.resource_version,
        );
        json["preconditions"] = Value::Object(object);
    }
    if let Some(orphan) = options.orphan_dependents {
        json["orphanDependents"] = json!(orphan);
    }
    if let Some(policy) = options.propagation_policy {
        json["propagationPolicy"] = json!(policy);
    }
    if !options.dry_run.is_empty() {
        json["dryRun"] = json!(options.dry_run);
    }
    Ok(json)
}

/// The envelope's kind and its object's bytes.
fn unwrap(body: &[u8]) -> Result<(String, Vec<u8>), ProtobufError> {
    let unknown = body
        .strip_prefix(MAGIC)
        .ok_or_else(|| error("the body does not start with the k8s protobuf magic"))?;
    let unknown = Strict::<Unknown>::decode(unknown)?.read()?;
    for value in [unknown.content_encoding, unknown.content_type] {
        if let Some(value) = value.filter(|value| !value.is_empty()) {
            return Err(error(format!(
                "content encoding {value:?} is not supported"
            )));
        }
    }
    let kind = unknown.type_meta.and_then(|meta| meta.kind);
    Ok((kind.unwrap_or_default(), unknown.raw.unwrap_or_default()))
}

/// A protobuf request body of `kind` as the JSON object it stands for;
/// `Ok(None)` for a kind this module does not read.
pub fn decode(body: &[u8], kind: &str) -> Result<Option<Value>, ProtobufError> {
    let (sent, raw) = unwrap(body)?;
    if !sent.is_empty() && sent != kind {
        return Err(error(format!("the body is a {sent}, not a {kind}")));
    }
    match kind {
        "Secret" => secret(&raw).map(Some),
        "DeleteOptions" => delete_options(&raw).map(Some),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(number: u64, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![u8::try_from(number << 3 | 2).unwrap()];
        out.push(u8::try_from(payload.len()).unwrap());
        out.extend_from_slice(payload);
        out
    }

    fn varint_field(number: u64, value: u8) -> Vec<u8> {
        vec![u8::try_from(number << 3).unwrap(), value]
    }

    fn envelope(kind: &str, raw: &[u8]) -> Vec<u8> {
        let mut type_meta = field(1, b"v1");
        type_meta.extend(field(2, kind.as_bytes()));
        let mut body = MAGIC.to_vec();
        body.extend(field(1, &type_meta));
        body.extend(field(2, raw));
        body.extend(field(3, b""));
        body.extend(field(4, b""));
        body
    }

    fn map_entry(key: &str, value: &[u8]) -> Vec<u8> {
        let mut entry = field(1, key.as_bytes());
        entry.extend(field(2, value));
        entry
    }

    /// A Secret as client-go writes it: every non-pointer field of its
    /// metadata, empty ones too.
    fn helm_secret() -> Vec<u8> {
        let mut meta = field(1, b"sh.helm.release.v1.bf.v1");
        for empty in [2, 3, 4, 5, 6] {
            meta.extend(field(empty, b""));
        }
        meta.extend(varint_field(7, 0));
        meta.extend(field(8, b""));
        meta.extend(field(11, &map_entry("owner", b"helm")));
        meta.extend(field(11, &map_entry("status", b"deployed")));
        let mut secret = field(1, &meta);
        secret.extend(field(2, &map_entry("release", b"\x00\xffgz")));
        secret.extend(field(3, b"helm.sh/release.v1"));
        envelope("Secret", &secret)
    }

    #[test]
    fn a_secret_reads_as_its_json_form() {
        let secret = decode(&helm_secret(), "Secret").unwrap().unwrap();
        assert_eq!(
            secret,
            json!({
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "sh.helm.release.v1.bf.v1", "labels": {"owner": "helm", "status": "deployed"}},
                "data": {"release": "AP9neg=="},
                "type": "helm.sh/release.v1",
            })
        );
    }

    #[test]
    fn every_field_read_reaches_the_json_form() {
        let mut meta = field(1, b"name");
        meta.extend(field(2, b"gen-"));
        meta.extend(field(3, b"ns"));
        meta.extend(field(6, b"42"));
        meta.extend(field(11, &map_entry("empty", b"")));
        meta.extend(field(12, &map_entry("note", b"\xffhi")));
        meta.extend(field(14, b"a/b"));
        meta.extend(field(14, b""));
        let mut secret = field(1, &meta);
        secret.extend(field(4, &map_entry("plain", b"text")));
        secret.extend(varint_field(5, 1));
        let secret = decode(&envelope("Secret", &secret), "Secret")
            .unwrap()
            .unwrap();
        assert_eq!(
            secret,
            json!({
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {
                    "name": "name", "generateName": "gen-", "namespace": "ns",
                    "resourceVersion": "42", "labels": {"empty": ""},
                    "annotations": {"note": "\u{fffd}hi"}, "finalizers": ["a/b", ""],
                },
                "stringData": {"plain": "text"},
                "immutable": true,
            })
        );
    }

    #[test]
    fn delete_options_read_as_json() {
        let mut raw = varint_field(1, 0);
        raw.extend(field(4, b"Background"));
        raw.extend(field(5, b"All"));
        let options = decode(&envelope("DeleteOptions", &raw), "DeleteOptions")
            .unwrap()
            .unwrap();
        assert_eq!(options["propagationPolicy"], "Background");
        assert_eq!(options["dryRun"], json!(["All"]));
        assert_eq!(options["gracePeriodSeconds"], 0);
    }

    #[test]
    fn delete_options_carry_preconditions_and_orphaning() {
        let mut preconditions = field(1, b"");
        preconditions.extend(field(2, b"7"));
        let mut raw = field(2, &preconditions);
        raw.extend(varint_field(3, 1));
        let options = decode(&envelope("DeleteOptions", &raw), "DeleteOptions")
            .unwrap()
            .unwrap();
        assert_eq!(
            options,
            json!({
                "kind": "DeleteOptions", "apiVersion": "v1",
                "preconditions": {"resourceVersion": "7"}, "orphanDependents": true,
            })
        );
    }

    #[test]
    fn what_it_does_not_know_is_refused() {
        // Owner references (ObjectMeta field 13) are not read.
        let meta = field(13, b"");
        let secret = envelope("Secret", &field(1, &meta));
        let refused = decode(&secret, "Secret").unwrap_err();
        assert!(refused.0.contains("field 13 of ObjectMeta"), "{refused}");
        assert!(decode(b"{}", "Secret").is_err());
        assert!(decode(&envelope("ConfigMap", b""), "Secret").is_err());
        assert_eq!(decode(&envelope("ConfigMap", b""), "ConfigMap"), Ok(None));
        // Truncated input is an error, not a panic.
        let body = helm_secret();
        for cut in 0..body.len() {
            let _ = decode(&body[..cut], "Secret");
        }
    }

    #[test]
    fn an_unknown_field_is_refused_at_every_depth() {
        let in_meta = |extra: Vec<u8>| envelope("Secret", &field(1, &extra));
        let mut label = map_entry("k", b"v");
        label.extend(varint_field(3, 1));
        let mut unknown = MAGIC.to_vec();
        unknown.extend(varint_field(5, 1));
        let cases = [
            (unknown, "Secret", "field 5 of Unknown"),
            (
                envelope("Secret", &varint_field(6, 1)),
                "Secret",
                "field 6 of Secret",
            ),
            (
                in_meta(varint_field(10, 30)),
                "Secret",
                "field 10 of ObjectMeta",
            ),
            // A fixed64: a wire type no declared field has.
            (
                in_meta(vec![9 << 3 | 1, 0, 0, 0, 0, 0, 0, 0, 0]),
                "Secret",
                "field 9 of ObjectMeta",
            ),
            (in_meta(field(11, &label)), "Secret", "field 3 of MapEntry"),
            (
                envelope("DeleteOptions", &varint_field(6, 1)),
                "DeleteOptions",
                "field 6 of DeleteOptions",
            ),
            (
                envelope("DeleteOptions", &field(2, &field(3, b""))),
                "DeleteOptions",
                "field 3 of Preconditions",
            ),
        ];
        for (body, kind, refusal) in cases {
            let refused = decode(&body, kind).unwrap_err();
            assert!(
                refused.0.contains(refusal),
                "{refused} (expected {refusal})"
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn any_undeclared_field_of_object_meta_is_refused(
            number in 1u64..2048,
            wire in proptest::sample::select(vec![0u8, 1, 2, 5]),
        ) {
            proptest::prop_assume!(![1, 2, 3, 4, 5, 6, 7, 8, 11, 12, 14].contains(&number));
            let payload: &[u8] = match wire {
                0 => &[1],
                1 => &[0; 8],
                2 => &[1, 0],
                _ => &[0; 4],
            };
            let mut key = Vec::new();
            prost::encoding::encode_varint(number << 3 | u64::from(wire), &mut key);
            let mut meta = field(1, b"name");
            meta.extend(key);
            meta.extend_from_slice(payload);
            let refused = decode(&envelope("Secret", &field(1, &meta)), "Secret").unwrap_err();
            let expected = format!("field {number} of ObjectMeta");
            proptest::prop_assert!(refused.0.contains(&expected), "{}", refused);
        }
    }
}
