//! Emulator conformance and push tests.
