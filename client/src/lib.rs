//! Rust client for visage (filled in by the server issue).
