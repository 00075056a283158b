//! Functions: the trait users implement, the registry, and the built-ins.
