//! TODO: dispatch
