//! Emulator conformance and push tests: the official `google-cloud-pubsub` clients (and raw
//! REST/gRPC where the crate has no method) against an emulator started per test on a real
//! socket. Tests of timing run the emulator's test clock, never Pub/Sub's real minimums.

mod admin;
mod common;
mod delivery;
mod push;
mod raw;
