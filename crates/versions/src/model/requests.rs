//! The bodies the server's API takes. The client serializes them and the
//! server deserializes them, so each request body is described once; the
//! API description is derived from the same structs.
//!
//! Deserializing checks shape only (types, unknown fields); what a value
//! means (a URL that can be fetched, a group name) the server checks after.

use std::collections::BTreeMap;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use super::{Limits, Strategy};

/// The body of `PUT /v1/resources`: the request to keep versions of, and
/// how. Only `url` is required.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Registration {
    /// `GET` (the default), `POST` or `PUT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, pattern = "^(GET|POST|PUT)$"))]
    pub method: Option<String>,
    /// An `http` or `https` URL; its query joins `query`.
    // Missing reads as empty, so the server can say `url` is required with
    // the field named, rather than serde's message about the whole body.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(pattern = "^https?://\\S+$", required = true))]
    pub url: String,
    /// Query parameters: `[name, value]` pairs, or an object.
    #[serde(default, deserialize_with = "query_pairs")]
    #[cfg_attr(feature = "openapi", schema(schema_with = query_schema, required = false))]
    pub query: Vec<(String, String)>,
    /// Request headers.
    #[serde(default, deserialize_with = "null_is_default")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<BTreeMap<String, String>>))]
    pub headers: BTreeMap<String, String>,
    /// The request body: a JSON value, sent as JSON; a string is sent as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Value>))]
    pub body: Option<Value>,
    /// The group (default `default`): 1 to 64 of `A-Z a-z 0-9 . _ -`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, pattern = "^[A-Za-z0-9._-]{1,64}$"))]
    pub group: Option<String>,
    /// When new versions are fetched (default: `remote_changed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<Strategy>,
    /// How many versions are kept; missing fields take their defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Limits>))]
    pub limits: Option<LimitsChange>,
    /// Free-form notes, at most 4096 bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(max_length = 4096))]
    pub description: Option<String>,
    /// A link about the resource, at most 4096 bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(max_length = 4096))]
    pub link: Option<String>,
    /// Purge the resource's URL and its new version's cache tags at the
    /// server's purge targets whenever a new version's body differs
    /// (default `false`; the server needs `--purge-targets`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purge_on_change: Option<bool>,
}

/// The body of `PATCH /v1/resources/{rid}`: what is absent stays as it is.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Change {
    /// When new versions are fetched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<Strategy>,
    /// How many versions are kept; missing fields keep their values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Limits>))]
    pub limits: Option<LimitsChange>,
    /// Whether a new version whose body differs is purged at the server's
    /// purge targets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purge_on_change: Option<bool>,
}

/// The body of `PUT …/versions/{vid}/pin`; empty for a pin without end.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Pin {
    /// How long the pin lasts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub duration_seconds: Option<u64>,
}

/// [`Limits`] as a request gives them: each missing field keeps the value
/// it is laid over (the defaults, or the resource's current limits).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsChange {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_unpinned: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_pinned: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_failed: Option<u32>,
}

impl LimitsChange {
    /// These limits laid over `current`.
    pub fn over(self, current: Limits) -> Limits {
        Limits {
            max_unpinned: self.max_unpinned.unwrap_or(current.max_unpinned),
            max_pinned: self.max_pinned.unwrap_or(current.max_pinned),
            max_failed: self.max_failed.unwrap_or(current.max_failed),
        }
    }
}

impl From<Limits> for LimitsChange {
    fn from(limits: Limits) -> Self {
        Self {
            max_unpinned: Some(limits.max_unpinned),
            max_pinned: Some(limits.max_pinned),
            max_failed: Some(limits.max_failed),
        }
    }
}

/// `null` reads as the default, as a missing field does.
fn null_is_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// `query`: `[name, value]` pairs, or an object of names to values (a value
/// that isn't a string reads as its JSON text), or `null`.
fn query_pairs<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<(String, String)>, D::Error> {
    const EXPECTED: &str = "an object or a list of [name, value] pairs is expected";
    match Option::<Value>::deserialize(deserializer)? {
        None => Ok(Vec::new()),
        Some(Value::Object(names)) => Ok(names
            .into_iter()
            .map(|(name, value)| match value {
                Value::String(text) => (name, text),
                other => (name, other.to_string()),
            })
            .collect()),
        Some(pairs @ Value::Array(_)) => serde_json::from_value(pairs).map_err(|_| D::Error::custom(EXPECTED)),
        Some(_) => Err(D::Error::custom(EXPECTED)),
    }
}

/// `query` in a registration, for the API description: `[name, value]`
/// pairs, or an object of names to values.
#[cfg(feature = "openapi")]
fn query_schema() -> utoipa::openapi::Schema {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Type};
    let text = || ObjectBuilder::new().schema_type(Type::String);
    let pairs = ArrayBuilder::new().items(ArrayBuilder::new().items(text()).min_items(Some(2)).max_items(Some(2)));
    let names = ObjectBuilder::new()
        .schema_type(Type::Object)
        .additional_properties(Some(text()));
    OneOfBuilder::new()
        .item(pairs)
        .item(names)
        .item(ObjectBuilder::new().schema_type(Type::Null))
        .description(Some("Query parameters: `[name, value]` pairs, or an object"))
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registration_reads_query_as_pairs_or_names_and_null_as_absent() {
        let read = |json: &str| serde_json::from_str::<Registration>(json);
        let pairs = read(r#"{"url":"u","query":[["a","1"],["a","2"]]}"#).unwrap();
        assert_eq!(pairs.query, [("a".into(), "1".into()), ("a".into(), "2".into())]);
        let names = read(r#"{"url":"u","query":{"n":5,"s":"x"}}"#).unwrap();
        assert_eq!(names.query, [("n".into(), "5".into()), ("s".into(), "x".into())]);
        let nulls = read(r#"{"url":"u","query":null,"headers":null,"body":null,"group":null}"#).unwrap();
        assert!(nulls.query.is_empty() && nulls.headers.is_empty() && nulls.body.is_none() && nulls.group.is_none());
        assert!(read(r#"{"url":"u","query":5}"#).is_err());
        assert!(read(r#"{"url":"u","query":[["only one"]]}"#).is_err());
        assert!(read(r#"{"url":"u","colour":"red"}"#).is_err());
    }

    #[test]
    fn limits_lay_over_what_they_change() {
        let change: LimitsChange = serde_json::from_str(r#"{"max_pinned":1}"#).unwrap();
        let current = Limits {
            max_unpinned: 7,
            ..Limits::default()
        };
        assert_eq!(
            change.over(current),
            Limits {
                max_unpinned: 7,
                max_pinned: 1,
                max_failed: 3
            }
        );
        assert_eq!(LimitsChange::from(current).over(Limits::default()), current);
        assert!(serde_json::from_str::<LimitsChange>(r#"{"max_unpinned":-1}"#).is_err());
    }
}
