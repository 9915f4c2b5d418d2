//! Objects read from watches without their `metadata.managedFields`.
//!
//! The API server sends every object with its field managers' records, a
//! third to two fifths of a pod's JSON (about 2 KB of a host pod's 5), and
//! kube parses them into nested JSON values that the caches drop at once.
//! [`Lean`] parses an object with that one field skipped where it stands
//! (`metadata.managedFields` of the object itself, nowhere else: a
//! ConfigMap's data key of that name is data), so the bytes are scanned
//! but nothing is built: a tenth of the syncer's CPU when it restarts with
//! 10,000 pods, and as much of every watch event it reads.

use std::borrow::Cow;
use std::fmt;

use kube::Resource;
use serde::de::{
    self, DeserializeSeed, Deserializer, IgnoredAny, IntoDeserializer as _, MapAccess, Visitor,
};

/// `K` as a watch reads it: parsed without `metadata.managedFields`.
#[derive(Clone, Debug)]
pub struct Lean<K>(pub K);

impl<K: Resource> Resource for Lean<K> {
    type DynamicType = K::DynamicType;
    type Scope = K::Scope;

    fn kind(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::kind(dt)
    }
    fn group(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::group(dt)
    }
    fn version(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::version(dt)
    }
    fn api_version(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::api_version(dt)
    }
    fn plural(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::plural(dt)
    }
    fn url_path(dt: &Self::DynamicType, namespace: Option<&str>) -> String {
        K::url_path(dt, namespace)
    }
    fn metadata_api() -> bool {
        K::metadata_api()
    }
    fn meta(&self) -> &kube::api::ObjectMeta {
        self.0.meta()
    }
    fn meta_mut(&mut self) -> &mut kube::api::ObjectMeta {
        self.0.meta_mut()
    }
}

impl<'de, K: de::Deserialize<'de>> de::Deserialize<'de> for Lean<K> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        K::deserialize(Skipping {
            inner: d,
            level: Level::Object,
        })
        .map(Lean)
    }
}

/// Where a map being read stands.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Level {
    /// The object: its `metadata` is read as [`Level::Metadata`].
    Object,
    /// The object's metadata: its `managedFields` is skipped.
    Metadata,
}

/// A deserializer whose maps (structs) are read through [`SkipMap`]; every
/// other request goes to `inner` as it is.
struct Skipping<D> {
    inner: D,
    level: Level,
}

macro_rules! forward {
    ($($method:ident($($arg:ident: $ty:ty),*)),* $(,)?) => {
        $(fn $method<V: Visitor<'de>>(self, $($arg: $ty,)* visitor: V) -> Result<V::Value, D::Error> {
            self.inner.$method($($arg,)* visitor)
        })*
    };
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Skipping<D> {
    type Error = D::Error;

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        let level = self.level;
        self.inner.deserialize_map(SkipVisitor { visitor, level })
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        let level = self.level;
        self.inner
            .deserialize_struct(name, fields, SkipVisitor { visitor, level })
    }

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        let level = self.level;
        self.inner.deserialize_any(SkipVisitor { visitor, level })
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        let level = self.level;
        self.inner
            .deserialize_option(SkipVisitor { visitor, level })
    }

    forward! {
        deserialize_bool(), deserialize_i8(), deserialize_i16(), deserialize_i32(),
        deserialize_i64(), deserialize_u8(), deserialize_u16(), deserialize_u32(),
        deserialize_u64(), deserialize_f32(), deserialize_f64(), deserialize_char(),
        deserialize_str(), deserialize_string(), deserialize_bytes(),
        deserialize_byte_buf(), deserialize_unit(), deserialize_seq(),
        deserialize_identifier(), deserialize_ignored_any(),
        deserialize_unit_struct(name: &'static str),
        deserialize_newtype_struct(name: &'static str),
        deserialize_tuple(len: usize),
        deserialize_tuple_struct(name: &'static str, len: usize),
        deserialize_enum(name: &'static str, variants: &'static [&'static str]),
    }

    fn is_human_readable(&self) -> bool {
        self.inner.is_human_readable()
    }
}

/// A visitor that hands `visitor` its map through [`SkipMap`] (and an
/// `Option`'s content through [`Skipping`]). What serde_json gives a
/// struct, a map or an option is passed on; the rest (bytes, enums,
/// newtypes, 128-bit numbers) it never gives them, and is refused as the
/// default visitor methods refuse it.
struct SkipVisitor<V> {
    visitor: V,
    level: Level,
}

impl<'de, V: Visitor<'de>> Visitor<'de> for SkipVisitor<V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        self.visitor.expecting(f)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        self.visitor.visit_map(SkipMap {
            inner: map,
            level: self.level,
            next_is_metadata: false,
        })
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<V::Value, D::Error> {
        self.visitor.visit_some(Skipping {
            inner: d,
            level: self.level,
        })
    }

    fn visit_none<E: de::Error>(self) -> Result<V::Value, E> {
        self.visitor.visit_none()
    }
    fn visit_unit<E: de::Error>(self) -> Result<V::Value, E> {
        self.visitor.visit_unit()
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<V::Value, E> {
        self.visitor.visit_bool(v)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<V::Value, E> {
        self.visitor.visit_i64(v)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<V::Value, E> {
        self.visitor.visit_u64(v)
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<V::Value, E> {
        self.visitor.visit_f64(v)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<V::Value, E> {
        self.visitor.visit_str(v)
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<V::Value, E> {
        self.visitor.visit_borrowed_str(v)
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<V::Value, E> {
        self.visitor.visit_string(v)
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, seq: A) -> Result<V::Value, A::Error> {
        self.visitor.visit_seq(seq)
    }
}

/// A map whose `managedFields` key is skipped at [`Level::Metadata`], and
/// whose `metadata` value is read at that level from [`Level::Object`].
struct SkipMap<A> {
    inner: A,
    level: Level,
    next_is_metadata: bool,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for SkipMap<A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        loop {
            let Some(Key(key)) = self.inner.next_key::<Key<'de>>()? else {
                return Ok(None);
            };
            match (self.level, key.as_ref()) {
                (Level::Metadata, "managedFields") => {
                    self.inner.next_value::<IgnoredAny>()?;
                    continue;
                }
                (Level::Object, "metadata") => self.next_is_metadata = true,
                _ => {}
            }
            return match key {
                Cow::Borrowed(k) => seed.deserialize(de::value::BorrowedStrDeserializer::new(k)),
                Cow::Owned(k) => seed.deserialize(k.into_deserializer()),
            }
            .map(Some);
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        if std::mem::take(&mut self.next_is_metadata) {
            self.inner.next_value_seed(MetadataSeed(seed))
        } else {
            self.inner.next_value_seed(seed)
        }
    }

    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

/// A map key, borrowed from the input when it can be.
struct Key<'de>(Cow<'de, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

/// The object's `metadata` value, read at [`Level::Metadata`].
struct MetadataSeed<S>(S);

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for MetadataSeed<S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<S::Value, D::Error> {
        self.0.deserialize(Skipping {
            inner: d,
            level: Level::Metadata,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ConfigMap, Pod};
    use kube::ResourceExt as _;
    use serde_json::json;

    fn managed() -> serde_json::Value {
        json!([{"manager": "kubectl", "operation": "Apply", "apiVersion": "v1",
            "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:containers": {}}}}])
    }

    #[test]
    fn an_object_is_read_whole_but_for_its_managed_fields() {
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web", "namespace": "shop", "uid": "u1",
                "managedFields": managed(),
                "labels": {"app": "web"}, "annotations": {"managedFields": "kept"},
                "resourceVersion": "7"},
            "spec": {"containers": [{"name": "c", "image": "nginx"}]},
            "status": {"phase": "Running"},
        });
        let text = pod.to_string();
        let Lean(lean): Lean<Pod> = serde_json::from_str(&text).unwrap();
        let mut whole: Pod = serde_json::from_str(&text).unwrap();
        assert!(whole.metadata.managed_fields.is_some());
        whole.metadata.managed_fields = None;
        assert_eq!(lean, whole, "all else as parsed whole");
        assert_eq!(lean.annotations()["managedFields"], "kept");
        // From a reader (owned keys) as from a slice (borrowed keys).
        let Lean(from_reader): Lean<Pod> = serde_json::from_reader(text.as_bytes()).unwrap();
        assert_eq!(from_reader, whole);
    }

    #[test]
    fn a_data_key_of_that_name_is_data() {
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "c", "managedFields": managed()},
            "data": {"managedFields": "x", "metadata": "y"}});
        let Lean(lean): Lean<ConfigMap> = serde_json::from_value(cm.clone()).unwrap();
        assert_eq!(lean.metadata.managed_fields, None);
        let data = lean.data.unwrap();
        assert_eq!(
            (data["managedFields"].as_str(), data["metadata"].as_str()),
            ("x", "y")
        );
    }

    #[test]
    fn a_watch_event_reads_its_object_lean() {
        // As the API server writes it: "type" first, so the object is read
        // straight from the input, not from serde's buffer.
        let ev = format!(
            r#"{{"type":"ADDED","object":{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"c","managedFields":{}}}}}}}"#,
            managed()
        );
        let ev: kube::api::WatchEvent<Lean<ConfigMap>> =
            serde_json::from_slice(ev.as_bytes()).unwrap();
        let kube::api::WatchEvent::Added(Lean(cm)) = ev else {
            panic!("not an added event")
        };
        assert_eq!(
            (cm.name_any(), cm.metadata.managed_fields),
            ("c".into(), None)
        );
    }

    #[test]
    fn bad_input_fails_as_it_would_whole() {
        for bad in [
            r#"{"metadata": {"name": 7}}"#,
            r#"{"metadata": 7}"#,
            "[]",
            "7",
        ] {
            let lean = serde_json::from_str::<Lean<Pod>>(bad)
                .unwrap_err()
                .to_string();
            let whole = serde_json::from_str::<Pod>(bad).unwrap_err().to_string();
            assert_eq!(lean, whole, "{bad}");
        }
    }
}
