//! Integration tests of the engine used as a library.

mod basic;
mod crash;
mod model;
mod search;
mod support;
