//! Integration tests of the engine used as a library.

mod basic;
mod crash;
mod lock;
mod model;
mod search;
mod support;
