//! Functions: the trait users implement, the registry, and the built-ins.

/// A function runq can run as a job (placeholder until the foundation lands).
pub trait Function {}
