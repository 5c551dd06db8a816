//! Postcard decoding with a bound on nesting.
//!
//! postcard decodes recursive types (a batch of operations holding a batch,
//! an error whose source is an error, ...) by recursion and has no depth
//! limit of its own, so a few kilobytes of crafted input can nest deep
//! enough to overflow the decoding thread's stack, which aborts the whole
//! process. [`from_bytes`] decodes through a thin wrapper around postcard's
//! deserializer that counts how deep the value being built is (every
//! sequence, map, struct, enum, option and newtype is a level) and refuses
//! input deeper than [`MAX_DEPTH`]. The encoding is unchanged.
//!
//! Every message off the wire (`frame::decode_body`) and every record read
//! back from storage is decoded here.

use std::cell::Cell;
use std::fmt;

use serde::de::{
    self, DeserializeOwned, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess,
    VariantAccess, Visitor,
};

/// Deepest nesting accepted. tstore's deepest real message (a Raft append
/// carrying a table creation with range splits) nests 13 levels.
pub const MAX_DEPTH: usize = 64;

/// Why bytes could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("{0}")]
    Postcard(postcard::Error),
    #[error("value nests deeper than {max} levels")]
    TooDeep { max: usize },
}

/// Decodes one `T` from the front of `bytes` (trailing bytes are ignored,
/// as with `postcard::from_bytes`), refusing values nested deeper than
/// [`MAX_DEPTH`].
pub fn from_bytes<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    from_bytes_with_depth(bytes, MAX_DEPTH)
}

/// [`from_bytes`] with another depth limit.
pub fn from_bytes_with_depth<T: DeserializeOwned>(
    bytes: &[u8],
    max: usize,
) -> Result<T, DecodeError> {
    let depth = Depth {
        left: Cell::new(max),
        exceeded: Cell::new(false),
    };
    let mut de = postcard::Deserializer::from_bytes(bytes);
    let res = T::deserialize(Limited {
        inner: &mut de,
        depth: &depth,
    });
    match res {
        Ok(v) => Ok(v),
        // postcard drops the text of custom errors, so the limit is told
        // apart by the flag rather than by the error.
        Err(_) if depth.exceeded.get() => Err(DecodeError::TooDeep { max }),
        Err(e) => Err(DecodeError::Postcard(e)),
    }
}

/// Levels still allowed below the current one.
struct Depth {
    left: Cell<usize>,
    exceeded: Cell<bool>,
}

impl Depth {
    fn enter<E: de::Error>(&self) -> Result<(), E> {
        match self.left.get() {
            0 => {
                self.exceeded.set(true);
                Err(E::custom("value nests too deep"))
            }
            n => {
                self.left.set(n - 1);
                Ok(())
            }
        }
    }

    fn leave(&self) {
        self.left.set(self.left.get() + 1);
    }

    /// Runs `f` one level deeper.
    fn nested<T, E: de::Error>(&self, f: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
        self.enter()?;
        let res = f();
        self.leave();
        res
    }
}

/// A deserializer that hands every visitor it is given a depth-counting
/// wrapper.
struct Limited<'a, D> {
    inner: D,
    depth: &'a Depth,
}

/// A visitor that counts a level for every compound value it visits.
struct Wrap<'a, V> {
    inner: V,
    depth: &'a Depth,
}

/// A seed whose deserializer is wrapped again (elements, fields, variants).
struct Seed<'a, S> {
    inner: S,
    depth: &'a Depth,
}

struct Access<'a, A> {
    inner: A,
    depth: &'a Depth,
}

impl<'a, V> Wrap<'a, V> {
    fn new(inner: V, depth: &'a Depth) -> Self {
        Self { inner, depth }
    }
}

macro_rules! forward_deserialize {
    ($($method:ident($($arg:ident: $ty:ty),*)),* $(,)?) => {
        $(
            fn $method<V: Visitor<'de>>(self, $($arg: $ty,)* visitor: V) -> Result<V::Value, Self::Error> {
                self.inner.$method($($arg,)* Wrap::new(visitor, self.depth))
            }
        )*
    };
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Limited<'_, D> {
    type Error = D::Error;

    forward_deserialize! {
        deserialize_any(),
        deserialize_bool(),
        deserialize_i8(),
        deserialize_i16(),
        deserialize_i32(),
        deserialize_i64(),
        deserialize_i128(),
        deserialize_u8(),
        deserialize_u16(),
        deserialize_u32(),
        deserialize_u64(),
        deserialize_u128(),
        deserialize_f32(),
        deserialize_f64(),
        deserialize_char(),
        deserialize_str(),
        deserialize_string(),
        deserialize_bytes(),
        deserialize_byte_buf(),
        deserialize_option(),
        deserialize_unit(),
        deserialize_unit_struct(name: &'static str),
        deserialize_newtype_struct(name: &'static str),
        deserialize_seq(),
        deserialize_tuple(len: usize),
        deserialize_tuple_struct(name: &'static str, len: usize),
        deserialize_map(),
        deserialize_struct(name: &'static str, fields: &'static [&'static str]),
        deserialize_enum(name: &'static str, variants: &'static [&'static str]),
        deserialize_identifier(),
        deserialize_ignored_any(),
    }

    fn is_human_readable(&self) -> bool {
        self.inner.is_human_readable()
    }
}

macro_rules! forward_visit {
    ($($method:ident($ty:ty)),* $(,)?) => {
        $(
            fn $method<E: de::Error>(self, v: $ty) -> Result<Self::Value, E> {
                self.inner.$method(v)
            }
        )*
    };
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Wrap<'_, V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.expecting(f)
    }

    forward_visit! {
        visit_bool(bool),
        visit_i8(i8),
        visit_i16(i16),
        visit_i32(i32),
        visit_i64(i64),
        visit_i128(i128),
        visit_u8(u8),
        visit_u16(u16),
        visit_u32(u32),
        visit_u64(u64),
        visit_u128(u128),
        visit_f32(f32),
        visit_f64(f64),
        visit_char(char),
        visit_str(&str),
        visit_borrowed_str(&'de str),
        visit_string(String),
        visit_bytes(&[u8]),
        visit_borrowed_bytes(&'de [u8]),
        visit_byte_buf(Vec<u8>),
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        self.inner.visit_none()
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        self.inner.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        let depth = self.depth;
        depth.nested(|| self.inner.visit_some(Limited { inner: d, depth }))
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        let depth = self.depth;
        depth.nested(|| self.inner.visit_newtype_struct(Limited { inner: d, depth }))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        let depth = self.depth;
        depth.nested(|| self.inner.visit_seq(Access { inner: seq, depth }))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        let depth = self.depth;
        depth.nested(|| self.inner.visit_map(Access { inner: map, depth }))
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Self::Value, A::Error> {
        let depth = self.depth;
        depth.nested(|| self.inner.visit_enum(Access { inner: data, depth }))
    }
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Seed<'_, S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        self.inner.deserialize(Limited {
            inner: d,
            depth: self.depth,
        })
    }
}

impl<'a, A> Access<'a, A> {
    fn seed<S>(&self, inner: S) -> Seed<'a, S> {
        Seed {
            inner,
            depth: self.depth,
        }
    }
}

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for Access<'_, A> {
    type Error = A::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Self::Error> {
        let seed = self.seed(seed);
        self.inner.next_element_seed(seed)
    }

    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Access<'_, A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        let seed = self.seed(seed);
        self.inner.next_key_seed(seed)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, Self::Error> {
        let seed = self.seed(seed);
        self.inner.next_value_seed(seed)
    }

    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

impl<'a, 'de, A: EnumAccess<'de>> EnumAccess<'de> for Access<'a, A> {
    type Error = A::Error;
    type Variant = Access<'a, A::Variant>;

    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, Self::Variant), Self::Error> {
        let depth = self.depth;
        let seed = self.seed(seed);
        let (value, variant) = self.inner.variant_seed(seed)?;
        Ok((
            value,
            Access {
                inner: variant,
                depth,
            },
        ))
    }
}

impl<'de, A: VariantAccess<'de>> VariantAccess<'de> for Access<'_, A> {
    type Error = A::Error;

    fn unit_variant(self) -> Result<(), Self::Error> {
        self.inner.unit_variant()
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<T::Value, Self::Error> {
        let seed = self.seed(seed);
        self.inner.newtype_variant_seed(seed)
    }

    fn tuple_variant<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.inner
            .tuple_variant(len, Wrap::new(visitor, self.depth))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.inner
            .struct_variant(fields, Wrap::new(visitor, self.depth))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde::{Deserialize, Serialize};

    /// A recursive type, as a batch of operations or a chain of errors is.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    enum Tree {
        Leaf(u64),
        Text(String),
        Node(Vec<Tree>),
        Chain(Option<Box<Tree>>),
    }

    fn nested(levels: usize) -> Tree {
        let mut t = Tree::Leaf(7);
        for i in 0..levels {
            t = if i % 2 == 0 {
                Tree::Node(vec![t])
            } else {
                Tree::Chain(Some(Box::new(t)))
            };
        }
        t
    }

    #[test]
    fn shallow_values_decode_as_postcard_does() {
        let t = Tree::Node(vec![Tree::Leaf(1), Tree::Text("héllo".into()), nested(10)]);
        let bytes = postcard::to_stdvec(&t).unwrap();
        assert_eq!(from_bytes::<Tree>(&bytes).unwrap(), t);
        assert_eq!(postcard::from_bytes::<Tree>(&bytes).unwrap(), t);
    }

    #[test]
    fn deep_values_are_refused_by_name() {
        // 200,000 levels in 400 KB: enough to overflow any thread's stack
        // if it were decoded by recursion.
        let mut bytes = Vec::new();
        for _ in 0..200_000 {
            bytes.extend_from_slice(&[2, 1]); // Node, one element
        }
        bytes.extend_from_slice(&[0, 7]); // Leaf(7)
        let err = from_bytes::<Tree>(&bytes).unwrap_err();
        assert!(
            matches!(err, DecodeError::TooDeep { max: MAX_DEPTH }),
            "{err}"
        );
        assert_eq!(err.to_string(), "value nests deeper than 64 levels");
    }

    #[test]
    fn the_limit_counts_levels() {
        // A leaf is one level (the enum); each Node adds two (the enum, the
        // Vec), each Chain two (the enum, the Option): 63 levels.
        let bytes = postcard::to_stdvec(&nested(31)).unwrap();
        assert!(from_bytes_with_depth::<Tree>(&bytes, 63).is_ok());
        assert!(matches!(
            from_bytes_with_depth::<Tree>(&bytes, 62),
            Err(DecodeError::TooDeep { max: 62 })
        ));
    }

    #[test]
    fn other_errors_are_postcard_errors() {
        let err = from_bytes::<Tree>(&[9]).unwrap_err();
        assert!(matches!(err, DecodeError::Postcard(_)), "{err}");
    }

    fn tree() -> impl Strategy<Value = Tree> {
        let leaf = prop_oneof![
            any::<u64>().prop_map(Tree::Leaf),
            ".{0,8}".prop_map(Tree::Text)
        ];
        leaf.prop_recursive(8, 64, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Tree::Node),
                proptest::option::of(inner).prop_map(|t| Tree::Chain(t.map(Box::new))),
            ]
        })
    }

    proptest! {
        #[test]
        fn agrees_with_postcard(t in tree()) {
            let bytes = postcard::to_stdvec(&t).unwrap();
            prop_assert_eq!(from_bytes::<Tree>(&bytes).unwrap(), t);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let ours = from_bytes::<Tree>(&bytes);
            // Where postcard succeeds, so do we, with the same value, unless
            // the value nests too deep.
            if let Ok(t) = postcard::from_bytes::<Tree>(&bytes) {
                match ours {
                    Ok(v) => prop_assert_eq!(v, t),
                    Err(e) => prop_assert!(matches!(e, DecodeError::TooDeep { .. }), "{}", e),
                }
            }
        }
    }
}
