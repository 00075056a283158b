//! Integration tests, linked into one binary. Each module is one area of runq.

mod auth;
mod emulator;
