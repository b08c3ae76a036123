//! Integration tests of the engine used as a library.

mod basic;
mod model;
mod search;
mod support;
