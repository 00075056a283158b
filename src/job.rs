//! TODO: job
