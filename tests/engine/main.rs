//! Integration tests of the engine used as a library.

mod backup;
mod basic;
mod calibration;
mod compat;
mod concurrency;
mod corruption;
mod crash;
mod dims;
mod docs;
mod erasure;
mod faults;
mod fuzzed;
mod head;
mod ids;
mod layers;
mod lock;
mod model;
mod outliers;
mod poison;
mod quantized;
mod screened;
mod search;
mod subjects;
mod support;
mod tiled;
mod validation;
