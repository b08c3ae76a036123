//! Everything the engine keeps on disk, and the only code that touches files.
//!
//! - [`format`]: **the** on-disk format: every file's layout, magic numbers,
//!   versions, encoders and decoders (no I/O), with its version history;
//! - `wal`: the write-ahead log's writer and replay;
//! - `segment`: writing rows as a segment file and reading one through a map;
//! - [`fs`]: atomic writes, directory fsync, free space, the directory lock;
//! - `mmap`: the only memory-mapping code.
//!
//! Lengths, offsets and counts read from disk must not be silently truncated:
//! the lossy cast lints are denied here; such values go through `try_from`
//! (refusing the file as corrupt) or carry an `allow` with the check that
//! bounds them.
#![deny(
    clippy::cast_possible_truncation,
    clippy::cast_lossless,
    clippy::cast_sign_loss
)]

pub mod format;
pub mod fs;
pub mod io;
pub(crate) mod mmap;
pub(crate) mod segment;
pub(crate) mod wal;
