//! Integration tests of the engine used as a library.

mod basic;
mod search;
mod support;
