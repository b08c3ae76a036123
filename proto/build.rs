//! Compile `visage/v1/visage.proto` with protox (pure Rust: no system `protoc`),
//! generate the tonic service and prost messages, and keep the encoded
//! descriptor set for server reflection.

use prost::Message;
use std::path::PathBuf;

const PROTO: &str = "visage/v1/visage.proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={PROTO}");
    let fds = protox::compile([PROTO], ["."])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    // `compile_fds` ignores `file_descriptor_set_path`: write it ourselves.
    std::fs::write(out.join("visage_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
