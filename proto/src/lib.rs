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

/// An error and its sources on one line, each said once (a source whose text
/// its parent already includes is not repeated): for messages that must not
/// lose the cause behind a wrapper, such as a TLS or transport error.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let text = s.to_string();
        if !out.contains(&text) {
            out = format!("{out}: {text}");
        }
        src = s.source();
    }
    out
}

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
            model: "arcface-r100".into(),
            matrix: Some(v1::Matrix {
                rows: 1,
                dim: 2,
                f32_le: [0.5f32, -1.0]
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect(),
            }),
            ids: vec![9],
            subjects: vec!["emp-2".into()],
            conflict_check: v1::ConflictCheck::Reject as i32,
        };
        let bytes = req.encode_to_vec();
        let back = v1::InsertRequest::decode(bytes.as_slice()).unwrap();
        assert_eq!(back, req);
        let v = v1::Verdict {
            same: false,
            probability: None,
            distance: 1.0,
            matched_id: Some(3),
            similarity: Some(0.5),
            rule: v1::VerdictRule::Probability as i32,
            threshold: 0.75,
        };
        assert_eq!(
            v1::Verdict::decode(v.encode_to_vec().as_slice()).unwrap(),
            v
        );
    }

    #[derive(Debug)]
    struct Wrap(&'static str, Option<Box<Wrap>>);
    impl std::fmt::Display for Wrap {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }
    impl std::error::Error for Wrap {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|w| w as _)
        }
    }

    #[test]
    fn error_chain_says_every_source_once() {
        let root = Wrap("no such file", None);
        let mid = Wrap("reading key: no such file", Some(Box::new(root)));
        let top = Wrap("unusable TLS key", Some(Box::new(mid)));
        assert_eq!(
            error_chain(&top),
            "unusable TLS key: reading key: no such file"
        );
        assert_eq!(error_chain(&Wrap("alone", None)), "alone");
    }
}
