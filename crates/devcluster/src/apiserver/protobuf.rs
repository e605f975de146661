//! The little of Kubernetes' protobuf encoding the dev server reads: request
//! bodies of Secrets and DeleteOptions, which Helm's release storage sends
//! (client-go typed clients write protobuf for built-in kinds). Responses
//! stay JSON, which those clients accept too.
//!
//! A body is the magic `k8s\0` and a `runtime.Unknown` whose `raw` is the
//! object (`k8s.io/apimachinery/pkg/runtime/serializer/protobuf`). Fields
//! the dev server does not know are refused, never dropped.

use base64::Engine;
use serde_json::{Map, Value, json};

/// The media type.
pub const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";

const MAGIC: &[u8] = b"k8s\0";

/// Why a body could not be read.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("protobuf: {0}")]
pub struct ProtobufError(String);

fn error(message: impl Into<String>) -> ProtobufError {
    ProtobufError(message.into())
}

/// One field's value on the wire.
enum Wire<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

/// The fields of one message, in order.
fn fields(mut data: &[u8]) -> Result<Vec<(u64, Wire<'_>)>, ProtobufError> {
    fn varint(data: &mut &[u8]) -> Result<u64, ProtobufError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = data
                .split_first()
                .ok_or_else(|| error("truncated varint"))?;
            *data = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(error("varint too long"))
    }
    let mut out = Vec::new();
    while !data.is_empty() {
        let key = varint(&mut data)?;
        let wire = match key & 7 {
            0 => Wire::Varint(varint(&mut data)?),
            2 => {
                let len = usize::try_from(varint(&mut data)?).map_err(|_| error("length"))?;
                if len > data.len() {
                    return Err(error("truncated field"));
                }
                let (bytes, rest) = data.split_at(len);
                data = rest;
                Wire::Bytes(bytes)
            }
            other => return Err(error(format!("wire type {other} is not supported"))),
        };
        out.push((key >> 3, wire));
    }
    Ok(out)
}

fn bytes<'a>(wire: &Wire<'a>, what: &str) -> Result<&'a [u8], ProtobufError> {
    match wire {
        Wire::Bytes(b) => Ok(b),
        Wire::Varint(_) => Err(error(format!("{what}: expected bytes"))),
    }
}

fn text(wire: &Wire<'_>, what: &str) -> Result<String, ProtobufError> {
    String::from_utf8(bytes(wire, what)?.to_vec()).map_err(|_| error(format!("{what}: not UTF-8")))
}

fn number(wire: &Wire<'_>, what: &str) -> Result<u64, ProtobufError> {
    match wire {
        Wire::Varint(v) => Ok(*v),
        Wire::Bytes(_) => Err(error(format!("{what}: expected a number"))),
    }
}

fn unsupported(message: &str, field: u64) -> ProtobufError {
    error(format!(
        "field {field} of {message} is not supported by the development API server"
    ))
}

/// A `map<string, string|bytes>` entry: key 1, value 2.
fn entry(data: &[u8], what: &str) -> Result<(String, Vec<u8>), ProtobufError> {
    let (mut key, mut value) = (String::new(), Vec::new());
    for (field, wire) in fields(data)? {
        match field {
            1 => key = text(&wire, what)?,
            2 => value = bytes(&wire, what)?.to_vec(),
            other => return Err(unsupported(what, other)),
        }
    }
    Ok((key, value))
}

fn set_text(map: &mut Map<String, Value>, key: &str, value: String) {
    if !value.is_empty() {
        map.insert(key.to_owned(), json!(value));
    }
}

/// `metav1.ObjectMeta`: the fields a client sets on a write. Generated Go
/// code writes every non-pointer field, empty or not, so empty values
/// (and a zero creationTimestamp) mean absent.
fn object_meta(data: &[u8]) -> Result<Value, ProtobufError> {
    let mut meta = Map::new();
    let mut labels = Map::new();
    let mut annotations = Map::new();
    let mut finalizers = Vec::new();
    for (field, wire) in fields(data)? {
        match field {
            1 => set_text(&mut meta, "name", text(&wire, "name")?),
            2 => set_text(&mut meta, "generateName", text(&wire, "generateName")?),
            3 => set_text(&mut meta, "namespace", text(&wire, "namespace")?),
            4 | 5 | 8 => {
                // selfLink and uid are the server's; a creationTimestamp
                // the server keeps its own of.
            }
            6 => set_text(
                &mut meta,
                "resourceVersion",
                text(&wire, "resourceVersion")?,
            ),
            7 => {
                number(&wire, "generation")?;
            }
            11 => {
                let (k, v) = entry(bytes(&wire, "labels")?, "labels")?;
                labels.insert(k, json!(String::from_utf8_lossy(&v)));
            }
            12 => {
                let (k, v) = entry(bytes(&wire, "annotations")?, "annotations")?;
                annotations.insert(k, json!(String::from_utf8_lossy(&v)));
            }
            14 => finalizers.push(json!(text(&wire, "finalizers")?)),
            other => return Err(unsupported("ObjectMeta", other)),
        }
    }
    if !labels.is_empty() {
        meta.insert("labels".into(), Value::Object(labels));
    }
    if !annotations.is_empty() {
        meta.insert("annotations".into(), Value::Object(annotations));
    }
    if !finalizers.is_empty() {
        meta.insert("finalizers".into(), Value::Array(finalizers));
    }
    Ok(Value::Object(meta))
}

/// `core/v1.Secret` as JSON: data base64-encoded, as the JSON form has it.
fn secret(data: &[u8]) -> Result<Value, ProtobufError> {
    let mut secret = json!({"apiVersion": "v1", "kind": "Secret"});
    let mut values = Map::new();
    let mut strings = Map::new();
    let engine = base64::engine::general_purpose::STANDARD;
    for (field, wire) in fields(data)? {
        match field {
            1 => secret["metadata"] = object_meta(bytes(&wire, "metadata")?)?,
            2 => {
                let (k, v) = entry(bytes(&wire, "data")?, "data")?;
                values.insert(k, json!(engine.encode(v)));
            }
            3 => {
                let kind = text(&wire, "type")?;
                if !kind.is_empty() {
                    secret["type"] = json!(kind);
                }
            }
            4 => {
                let (k, v) = entry(bytes(&wire, "stringData")?, "stringData")?;
                strings.insert(k, json!(String::from_utf8_lossy(&v)));
            }
            5 => secret["immutable"] = json!(number(&wire, "immutable")? != 0),
            other => return Err(unsupported("Secret", other)),
        }
    }
    if !values.is_empty() {
        secret["data"] = Value::Object(values);
    }
    if !strings.is_empty() {
        secret["stringData"] = Value::Object(strings);
    }
    Ok(secret)
}

/// `metav1.DeleteOptions` as JSON.
fn delete_options(data: &[u8]) -> Result<Value, ProtobufError> {
    let mut options = json!({"kind": "DeleteOptions", "apiVersion": "v1"});
    let mut dry_run = Vec::new();
    for (field, wire) in fields(data)? {
        match field {
            1 => options["gracePeriodSeconds"] = json!(number(&wire, "gracePeriodSeconds")?),
            2 => {
                let mut preconditions = Map::new();
                for (field, wire) in fields(bytes(&wire, "preconditions")?)? {
                    match field {
                        1 => set_text(&mut preconditions, "uid", text(&wire, "uid")?),
                        2 => set_text(
                            &mut preconditions,
                            "resourceVersion",
                            text(&wire, "resourceVersion")?,
                        ),
                        other => return Err(unsupported("Preconditions", other)),
                    }
                }
                options["preconditions"] = Value::Object(preconditions);
            }
            3 => options["orphanDependents"] = json!(number(&wire, "orphanDependents")? != 0),
            4 => options["propagationPolicy"] = json!(text(&wire, "propagationPolicy")?),
            5 => dry_run.push(json!(text(&wire, "dryRun")?)),
            other => return Err(unsupported("DeleteOptions", other)),
        }
    }
    if !dry_run.is_empty() {
        options["dryRun"] = Value::Array(dry_run);
    }
    Ok(options)
}

/// The envelope's kind and its object's bytes.
fn unwrap(body: &[u8]) -> Result<(String, &[u8]), ProtobufError> {
    let unknown = body
        .strip_prefix(MAGIC)
        .ok_or_else(|| error("the body does not start with the k8s protobuf magic"))?;
    let (mut kind, mut raw): (String, &[u8]) = (String::new(), &[]);
    for (field, wire) in fields(unknown)? {
        match field {
            1 => {
                for (field, wire) in fields(bytes(&wire, "typeMeta")?)? {
                    if field == 2 {
                        kind = text(&wire, "kind")?;
                    }
                }
            }
            2 => raw = bytes(&wire, "raw")?,
            3 | 4 => {
                let value = text(&wire, "contentEncoding")?;
                if !value.is_empty() {
                    return Err(error(format!(
                        "content encoding {value:?} is not supported"
                    )));
                }
            }
            other => return Err(unsupported("Unknown", other)),
        }
    }
    Ok((kind, raw))
}

/// A protobuf request body of `kind` as the JSON object it stands for;
/// `Ok(None)` for a kind this module does not read.
pub fn decode(body: &[u8], kind: &str) -> Result<Option<Value>, ProtobufError> {
    let (sent, raw) = unwrap(body)?;
    if !sent.is_empty() && sent != kind {
        return Err(error(format!("the body is a {sent}, not a {kind}")));
    }
    match kind {
        "Secret" => secret(raw).map(Some),
        "DeleteOptions" => delete_options(raw).map(Some),
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
}
