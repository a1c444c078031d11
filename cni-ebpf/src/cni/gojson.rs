//! Key matching as Go's `encoding/json` does it, for every JSON object the
//! plugin reads.
//!
//! Runtimes are Go programs (libcni) and the reference plugins decode with
//! `encoding/json`, which matches an object key to a struct field by exact
//! name first and otherwise case-insensitively; unknown keys are ignored.
//! containerd's go-cni marshals its capability structs without JSON tags, so
//! a plugin receives `{"HostPort":80,"ContainerPort":80,"Protocol":"tcp",
//! "HostIP":""}` and `{"Servers":[],"Searches":[],"Options":[]}`: a plugin
//! that matches keys exactly refuses what every reference plugin accepts.
//!
//! One rule, [`fold_iter`], used two ways:
//! - [`from_value`] decodes any `#[derive(Deserialize)]` type through a
//!   deserializer that applies the rule to every struct it meets, at any
//!   depth, with serde's own field names (after `rename`/`rename_all`) as
//!   the known names;
//! - [`Object`] holds one hand-walked object level whose keys were folded
//!   with a [`Fields`] list, and is read only through that list's variants,
//!   so a key cannot be read without being foldable (see [`go_fields!`]).
//!
//! Go's rule for one object level, as implemented here:
//! - a key equal to a field name goes to that field;
//! - otherwise the key goes to the first field (in declaration order) whose
//!   name is equal under Go's case folding ([`fold_name`]);
//! - a key that matches no field is ignored.
//!
//! A `null` member of a struct is treated as absent: Go leaves the field at
//! its zero value (`"search": null` is an empty list, not an error).
//!
//! Duplicates: Go decodes every key in document order, so of two spellings of
//! one field the later one wins. serde_json keeps objects sorted by key
//! (no `preserve_order`), so document order is gone here; instead the exact
//! spelling wins over a folded one, and of two folded spellings the first in
//! byte order. No runtime sends two spellings of one key.

use std::{marker::PhantomData, ops::Index};

use serde::de::{
    self, value::BorrowedStrDeserializer, DeserializeOwned, DeserializeSeed, Deserializer,
    EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor,
};
use serde_json::{Map, Value};

type Error = serde_json::Error;

/// Go's `foldName`: the key every spelling of one name shares. ASCII letters
/// are upper-cased; any other character becomes the smallest character of its
/// simple case-fold orbit (Go's `foldRune`), so `ſ` (U+017F) folds with `s`
/// and the Kelvin sign (U+212A) with `k`, as in Go.
pub fn fold_name(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii() {
                return c.to_ascii_uppercase();
            }
            // The only non-ASCII characters Unicode's simple folding joins
            // with ASCII letters (Turkish ı and İ are not among them).
            match c {
                '\u{17f}' => return 'S',
                '\u{212a}' => return 'K',
                _ => {}
            }
            fn one(mut it: impl Iterator<Item = char>) -> Option<char> {
                let c = it.next()?;
                it.next().is_none().then_some(c)
            }
            let lower = |c: char| one(c.to_lowercase()).filter(|x| !x.is_ascii());
            let upper = |c: char| one(c.to_uppercase()).filter(|x| !x.is_ascii());
            // The orbit reachable by single-character case mappings.
            let mut orbit = vec![c];
            for _ in 0..2 {
                let more: Vec<char> = orbit
                    .iter()
                    .flat_map(|&x| [lower(x), upper(x)])
                    .flatten()
                    .collect();
                orbit.extend(more);
            }
            orbit.into_iter().min().unwrap_or(c)
        })
        .collect()
}

/// The known name `key` decodes as: itself when it is one, else the first
/// whose [`fold_name`] is the same; `None` for an unknown key.
pub fn resolve<'k>(key: &str, known: &[&'k str]) -> Option<&'k str> {
    if let Some(k) = known.iter().find(|k| **k == key) {
        return Some(k);
    }
    let folded = fold_name(key);
    known.iter().copied().find(|k| fold_name(k) == folded)
}

/// Go's rule for one object level: every entry of `obj` under the name it
/// decodes as. An inexact spelling is renamed to the canonical name; one
/// whose field is already set by an exact (or an earlier inexact) spelling is
/// left out; unknown keys are kept as they are (decoders ignore them).
pub fn fold_iter<'a, 'k: 'a>(
    obj: &'a Map<String, Value>,
    known: &'a [&'k str],
) -> impl Iterator<Item = (&'a str, &'a Value)> + 'a {
    let mut taken: Vec<&'k str> = Vec::new();
    obj.iter().filter_map(move |(k, v)| {
        let k = k.as_str();
        match resolve(k, known) {
            Some(c) if c == k => Some((k, v)),
            None => Some((k, v)),
            Some(c) if obj.contains_key(c) || taken.contains(&c) => None,
            Some(c) => {
                taken.push(c);
                Some((c, v))
            }
        }
    })
}

/// [`fold_iter`] applied in place: inexact spellings of `known` names are
/// renamed to them.
pub fn fold_keys(obj: &mut Map<String, Value>, known: &[&str]) {
    // Only the inexact spellings of known names move; the rest stays put.
    let inexact: Vec<(String, &str)> = obj
        .keys()
        .filter(|k| !known.contains(&k.as_str()))
        .filter_map(|k| resolve(k, known).map(|c| (k.clone(), c)))
        .collect();
    for (from, to) in inexact {
        let v = obj.remove(&from).expect("listed above");
        // An exact (or an earlier inexact) spelling is already there: it wins.
        if !obj.contains_key(to) {
            obj.insert(to.to_string(), v);
        }
    }
}

/// The field names of one object level, declared once (by [`go_fields!`]):
/// the list keys are folded with and the only names an [`Object`] can be read
/// by.
pub trait Fields: Copy + 'static {
    /// Every name, in declaration order (the order Go's fold tries them).
    const NAMES: &'static [&'static str];
    /// This field's canonical name.
    fn name(self) -> &'static str;
}

/// Declares a [`Fields`] enum: `go_fields! { pub enum Key { Name = "name", ... } }`.
#[macro_export]
macro_rules! go_fields {
    ($(#[$meta:meta])* $vis:vis enum $name:ident { $($(#[$vmeta:meta])* $var:ident = $s:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        $vis enum $name {
            $($(#[$vmeta])* #[doc = concat!("`", $s, "`")] $var,)+
        }
        impl $crate::cni::gojson::Fields for $name {
            const NAMES: &'static [&'static str] = &[$($s,)+];
            fn name(self) -> &'static str {
                match self {
                    $(Self::$var => $s,)+
                }
            }
        }
    };
}
pub use go_fields;

/// One JSON object level with its keys folded to `K`'s names, read and
/// written by `K` only.
#[derive(Debug, Clone, PartialEq)]
pub struct Object<K> {
    map: Map<String, Value>,
    _k: PhantomData<K>,
}

static NULL: Value = Value::Null;

impl<K: Fields> Object<K> {
    /// Folds `map`'s keys to `K`'s names.
    pub fn fold(mut map: Map<String, Value>) -> Self {
        fold_keys(&mut map, K::NAMES);
        Self {
            map,
            _k: PhantomData,
        }
    }

    /// The value of `k` as given (`null` included); `None` when absent.
    pub fn get(&self, k: K) -> Option<&Value> {
        self.map.get(k.name())
    }

    /// Whether `k` is present (even as `null`).
    pub fn contains(&self, k: K) -> bool {
        self.map.contains_key(k.name())
    }

    /// Sets `k`.
    pub fn insert(&mut self, k: K, v: Value) {
        self.map.insert(k.name().to_string(), v);
    }

    /// Removes `k`.
    pub fn remove(&mut self, k: K) -> Option<Value> {
        self.map.remove(k.name())
    }

    /// The whole object (unknown keys included), e.g. to serialize it.
    pub fn as_map(&self) -> &Map<String, Value> {
        &self.map
    }

    /// The whole object.
    pub fn into_map(self) -> Map<String, Value> {
        self.map
    }
}

impl<K: Fields> Index<K> for Object<K> {
    type Output = Value;

    /// The value of `k`, `null` when absent (as `serde_json::Value` indexes).
    fn index(&self, k: K) -> &Value {
        self.get(k).unwrap_or(&NULL)
    }
}

/// Decodes `v` as `T` with Go's key matching for every struct inside.
pub fn from_value<T: DeserializeOwned>(v: &Value) -> Result<T, Error> {
    T::deserialize(GoValue(v))
}

/// A `serde_json::Value` seen through Go's key matching: `deserialize_struct`
/// folds the object's keys with serde's field list, and every nested value
/// (array element, map value, option, newtype, enum payload) is wrapped
/// again. Scalars go straight to `serde_json`'s own `Value` deserializer, so
/// types, numbers and error messages are exactly `serde_json`'s.
#[derive(Clone, Copy)]
struct GoValue<'de>(&'de Value);

macro_rules! forward_scalars {
    ($($m:ident)*) => {
        $(fn $m<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            self.0.$m(visitor)
        })*
    };
}

impl<'de> Deserializer<'de> for GoValue<'de> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::Array(a) => visit_seq(a, visitor),
            Value::Object(m) => visit_map(m.iter().map(|(k, v)| (k.as_str(), v)), visitor),
            v => v.deserialize_any(visitor),
        }
    }

    forward_scalars! {
        deserialize_bool deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64
        deserialize_i128 deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64
        deserialize_u128 deserialize_f32 deserialize_f64 deserialize_char deserialize_str
        deserialize_string deserialize_bytes deserialize_byte_buf deserialize_unit
        deserialize_identifier deserialize_ignored_any
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.0.deserialize_unit_struct(name, visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::Array(a) => visit_seq(a, visitor),
            v => v.deserialize_seq(visitor),
        }
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            // A map's keys are data, not field names: Go does not fold them.
            Value::Object(m) => visit_map(m.iter().map(|(k, v)| (k.as_str(), v)), visitor),
            v => v.deserialize_map(visitor),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        match self.0 {
            // A JSON null leaves a Go field as it was: absent, to serde.
            Value::Object(m) => {
                visit_map(fold_iter(m, fields).filter(|(_, v)| !v.is_null()), visitor)
            }
            Value::Array(a) => visit_seq(a, visitor),
            v => v.deserialize_struct(name, fields, visitor),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        match self.0 {
            Value::Object(m) if m.len() == 1 => {
                let (variant, value) = m.iter().next().expect("one entry");
                visitor.visit_enum(Enum { variant, value })
            }
            // A unit variant as a string, or the error serde_json gives.
            v => v.deserialize_enum(name, variants, visitor),
        }
    }
}

fn visit_seq<'de, V: Visitor<'de>>(a: &'de [Value], visitor: V) -> Result<V::Value, Error> {
    let len = a.len();
    let mut seq = Seq(a.iter());
    let out = visitor.visit_seq(&mut seq)?;
    if seq.0.len() == 0 {
        Ok(out)
    } else {
        Err(de::Error::invalid_length(len, &"fewer elements in array"))
    }
}

fn visit_map<'de, V: Visitor<'de>>(
    entries: impl Iterator<Item = (&'de str, &'de Value)>,
    visitor: V,
) -> Result<V::Value, Error> {
    let entries: Vec<_> = entries.collect();
    let len = entries.len();
    let mut map = Entries {
        iter: entries.into_iter(),
        value: None,
    };
    let out = visitor.visit_map(&mut map)?;
    if map.iter.len() == 0 {
        Ok(out)
    } else {
        Err(de::Error::invalid_length(len, &"fewer elements in map"))
    }
}

struct Seq<'de>(std::slice::Iter<'de, Value>);

impl<'de> SeqAccess<'de> for Seq<'de> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        self.0
            .next()
            .map(|v| seed.deserialize(GoValue(v)))
            .transpose()
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.0.len())
    }
}

struct Entries<'de> {
    iter: std::vec::IntoIter<(&'de str, &'de Value)>,
    value: Option<&'de Value>,
}

impl<'de> MapAccess<'de> for Entries<'de> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        match self.iter.next() {
            Some((k, v)) => {
                self.value = Some(v);
                seed.deserialize(BorrowedStrDeserializer::new(k)).map(Some)
            }
            None => Ok(None),
        }
    }

    fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value, Error> {
        let v = self
            .value
            .take()
            .ok_or_else(|| de::Error::custom("value is missing"))?;
        seed.deserialize(GoValue(v))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.iter.len())
    }
}

/// `{"Variant": payload}`.
struct Enum<'de> {
    variant: &'de str,
    value: &'de Value,
}

impl<'de> EnumAccess<'de> for Enum<'de> {
    type Error = Error;
    type Variant = GoValue<'de>;

    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, Self::Variant), Error> {
        let variant = BorrowedStrDeserializer::<Error>::new(self.variant);
        Ok((seed.deserialize(variant)?, GoValue(self.value)))
    }
}

impl<'de> VariantAccess<'de> for GoValue<'de> {
    type Error = Error;

    fn unit_variant(self) -> Result<(), Error> {
        <() as de::Deserialize>::deserialize(self)
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, Error> {
        seed.deserialize(self)
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_struct("", fields, visitor)
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use serde_json::json;

    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "camelCase")]
    struct Inner {
        host_port: u32,
        #[serde(default, rename = "hostIP")]
        host_ip: String,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct Outer {
        list: Vec<Inner>,
        #[serde(default)]
        opt: Option<Inner>,
        #[serde(default)]
        map: std::collections::BTreeMap<String, Inner>,
    }

    #[test]
    fn fold_name_is_go_s() {
        assert_eq!(fold_name("hostPort"), "HOSTPORT");
        assert_eq!(fold_name("HostIP"), fold_name("hostip"));
        // Go's simple folds that reach ASCII letters.
        assert_eq!(fold_name("\u{17f}ubnet"), fold_name("subnet"));
        assert_eq!(fold_name("\u{212a}ey"), fold_name("key"));
        // Turkish dotless i and dotted I are not i in Go's fold.
        assert_ne!(fold_name("\u{131}ps"), fold_name("ips"));
        assert_ne!(fold_name("\u{130}ps"), fold_name("ips"));
        assert_eq!(fold_name("\u{3c3}"), fold_name("\u{3a3}"));
    }

    #[test]
    fn nested_structs_fold_at_every_depth() {
        let v = json!({"LIST": [{"HostPort": 1, "HOSTIP": "10.0.0.1"}],
            "Opt": {"hostport": 2},
            "map": {"Key": {"HOSTPORT": 3}}});
        let o: Outer = from_value(&v).unwrap();
        assert_eq!(
            o.list[0],
            Inner {
                host_port: 1,
                host_ip: "10.0.0.1".into()
            }
        );
        assert_eq!(o.opt.unwrap().host_port, 2);
        // Map keys are data: kept as given.
        assert_eq!(o.map["Key"].host_port, 3);
    }

    #[test]
    fn exact_wins_unknown_ignored_errors_as_serde_json() {
        let i: Inner =
            from_value(&json!({"HostPort": 1, "hostPort": 2, "HOSTPORT": 3, "x": 4})).unwrap();
        assert_eq!(i.host_port, 2);
        let e = from_value::<Inner>(&json!({"port": 1})).unwrap_err();
        assert_eq!(e.to_string(), "missing field `hostPort`");
        let e = from_value::<Inner>(&json!({"HostPort": "1"})).unwrap_err();
        assert_eq!(
            e.to_string(),
            serde_json::from_value::<Inner>(json!({"hostPort": "1"}))
                .unwrap_err()
                .to_string()
        );
    }

    #[test]
    fn fold_keys_renames_in_place() {
        let mut m = json!({"CNIVERSION": "1.0.0", "Name": "n", "name2": 1, "Other": 2})
            .as_object()
            .unwrap()
            .clone();
        fold_keys(&mut m, &["cniVersion", "name"]);
        assert_eq!(
            Value::Object(m),
            json!({"cniVersion": "1.0.0", "name": "n", "name2": 1, "Other": 2})
        );
        // In place and by iteration alike: of two inexact spellings the first
        // in byte order wins.
        let dup = json!({"Mtu": 2, "MTU": 1, "x": 3})
            .as_object()
            .unwrap()
            .clone();
        let iterated: Map<String, Value> = fold_iter(&dup, &["mtu"])
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        let mut in_place = dup.clone();
        fold_keys(&mut in_place, &["mtu"]);
        assert_eq!(in_place, iterated);
        assert_eq!(Value::Object(in_place), json!({"mtu": 1, "x": 3}));
    }
}
