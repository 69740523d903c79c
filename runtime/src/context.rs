//! [`Context`]: the embedder's per-invocation values, a small type map.
//!
//! An [`crate::Invocation`] carries one; it moves into the invocation's
//! store, where host functions reach it ([`crate::HostCx::context`], or
//! [`crate::StoreState::context_mut`] from a component host interface).
//! Every invocation has its own store, so two invocations of one function,
//! concurrent or not, never see each other's context.
//!
//! Why a type map and not a generic `T` on `Runtime`, `Function` and
//! `Invocation`: the store's data type stays one type, fixed by the
//! runtime, so host functions, the pre-linked `InstancePre` and the pool
//! are the same whatever the embedder keeps per invocation, and an embedder
//! with several independent host libraries (a logger, a key-value store)
//! lets each keep its own value without agreeing on one struct. The cost is
//! a lookup by `TypeId` in a short vector (a few nanoseconds for the usual
//! one to three values), and nothing at all for an invocation without a
//! context (an empty vector does not allocate).
//!
//! ```
//! use wasmlet_runtime::Context;
//! #[derive(Debug, PartialEq)]
//! struct Tenant(&'static str);
//! let mut cx = Context::new().with(Tenant("acme")).with(7u64);
//! assert_eq!(cx.get::<Tenant>(), Some(&Tenant("acme")));
//! *cx.get_mut::<u64>().unwrap() += 1;
//! assert_eq!(cx.remove::<u64>(), Some(8));
//! assert!(cx.get::<String>().is_none());
//! ```

use std::any::{Any, TypeId};

/// Per-invocation values of the embedder, at most one of each type.
///
/// Values must be `Send + Sync` (an invocation is a future that may move
/// between threads, and is polled while the [`crate::Invocation`] it came
/// from is borrowed); state shared between invocations (a tenant's quota,
/// a connection pool) goes in as an `Arc`.
#[derive(Default)]
pub struct Context {
    entries: Vec<(TypeId, Box<dyn Any + Send + Sync>)>,
}

impl Context {
    /// An empty context (no allocation).
    pub fn new() -> Self {
        Context::default()
    }

    /// This context with `value` added (replacing one of the same type).
    pub fn with<T: Send + Sync + 'static>(mut self, value: T) -> Self {
        self.insert(value);
        self
    }

    /// Adds `value`; returns the value of the same type it replaces.
    pub fn insert<T: Send + Sync + 'static>(&mut self, value: T) -> Option<T> {
        let old = self.remove::<T>();
        self.entries.push((TypeId::of::<T>(), Box::new(value)));
        old
    }

    /// The value of type `T`, if there is one.
    pub fn get<T: 'static>(&self) -> Option<&T> {
        self.entries
            .iter()
            .find(|(id, _)| *id == TypeId::of::<T>())
            .and_then(|(_, v)| v.downcast_ref())
    }

    /// The value of type `T`, mutably, if there is one.
    pub fn get_mut<T: 'static>(&mut self) -> Option<&mut T> {
        self.entries
            .iter_mut()
            .find(|(id, _)| *id == TypeId::of::<T>())
            .and_then(|(_, v)| v.downcast_mut())
    }

    /// Takes the value of type `T` out, if there is one.
    pub fn remove<T: 'static>(&mut self) -> Option<T> {
        let at = self
            .entries
            .iter()
            .position(|(id, _)| *id == TypeId::of::<T>())?;
        let (_, value) = self.entries.swap_remove(at);
        value.downcast().ok().map(|b| *b)
    }

    /// How many values it holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether it holds no value.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("values", &self.entries.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_value_per_type() {
        let mut cx = Context::new();
        assert!(cx.is_empty());
        assert_eq!(cx.insert(1u32), None);
        assert_eq!(cx.insert(2u32), Some(1));
        cx.insert(String::from("x"));
        assert_eq!(cx.len(), 2);
        assert_eq!(cx.get::<u32>(), Some(&2));
        assert_eq!(cx.remove::<String>().as_deref(), Some("x"));
        assert_eq!(cx.remove::<String>(), None);
        assert_eq!(cx.len(), 1);
    }
}
