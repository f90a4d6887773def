//! Helpers for the live-cluster tests.
