//! gRPC contract of visage: package `visage.v1`, service `Visage`.
//!
//! The source of truth is `proto/visage/v1/visage.proto` (in this crate's
//! directory); it is compiled by `build.rs` with protox, so no system `protoc`
//! is needed. [`v1`] holds the prost messages, the tonic client
//! ([`v1::visage_client::VisageClient`]) and server
//! ([`v1::visage_server::VisageServer`]).

/// Messages and services of `visage.v1`, generated from the proto file.
#[allow(clippy::all, clippy::pedantic, missing_docs, unused_qualifications)]
pub mod v1 {
    tonic::include_proto!("visage.v1");
}

/// The encoded `FileDescriptorSet` of `visage.v1`, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/visage_descriptor.bin"));

/// The proto source, for clients that generate their own stubs.
pub const PROTO_SOURCE: &str = include_str!("../visage/v1/visage.proto");

/// Fully qualified name of the service (for health checks).
pub const SERVICE_NAME: &str = "visage.v1.Visage";

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn descriptor_set_describes_the_service() {
        // The encoded descriptor holds the package and service names verbatim.
        let text = String::from_utf8_lossy(FILE_DESCRIPTOR_SET);
        assert!(
            text.contains("visage.v1"),
            "descriptor set names the package"
        );
        assert!(text.contains("Visage"), "descriptor set names the service");
        assert!(
            text.contains("InsertStream"),
            "descriptor set names the methods"
        );
    }

    #[test]
    fn messages_round_trip() {
        let req = v1::InsertRequest {
            gallery: "staff".into(),
            embeddings: vec![v1::Embedding {
                id: 7,
                subject: "emp-1".into(),
                vector: vec![0.5; 128],
            }],
        };
        let bytes = req.encode_to_vec();
        let back = v1::InsertRequest::decode(bytes.as_slice()).unwrap();
        assert_eq!(back, req);
        let v = v1::Verdict {
            same: false,
            probability: None,
            distance: 1.0,
            matched_id: Some(3),
        };
        assert_eq!(
            v1::Verdict::decode(v.encode_to_vec().as_slice()).unwrap(),
            v
        );
    }
}
