//! Everything the engine keeps on disk, and the only code that touches files.
//!
//! - [`format`]: **the** on-disk format: every file's layout, magic numbers,
//!   versions, encoders and decoders (no I/O), with its version history;
//! - `wal`: the write-ahead log's writer and replay;
//! - `segment`: writing rows as a segment file and reading one through a map;
//! - [`fs`]: atomic writes, directory fsync, free space, the directory lock;
//! - `mmap`: the only memory-mapping code.

pub mod format;
pub mod fs;
pub mod io;
pub(crate) mod mmap;
pub(crate) mod segment;
pub(crate) mod wal;
