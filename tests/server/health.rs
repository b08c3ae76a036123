//! The standard health service and server reflection (v1 and v1alpha), so
//! generic tools such as grpcurl work without the proto file.

use crate::harness::{Server, TempData};
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

async fn channel(server: &Server) -> Channel {
    Channel::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_serving() {
    let t = TempData::new();
    let server = Server::start(&t.data());
    let mut h = HealthClient::new(channel(&server).await);
    for service in ["", "visage.v1.Visage"] {
        let r = h
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            r.status,
            ServingStatus::Serving as i32,
            "service {service:?}"
        );
    }
    let e = h
        .check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_and_describes_the_services() {
    use prost::Message;
    let t = TempData::new();
    let server = Server::start(&t.data());
    let ch = channel(&server).await;

    // v1
    {
        use tonic_reflection::pb::v1::ServerReflectionRequest;
        use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
        let mut c = ServerReflectionClient::new(ch.clone());
        let reqs = vec![
            ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::ListServices(String::new())),
            },
            ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::FileContainingSymbol(
                    "visage.v1.Visage".into(),
                )),
            },
        ];
        let mut stream = c
            .server_reflection_info(tokio_stream::iter(reqs))
            .await
            .unwrap()
            .into_inner();
        let first = stream.message().await.unwrap().unwrap();
        let Some(MessageResponse::ListServicesResponse(list)) = first.message_response else {
            panic!("expected a service list, got {first:?}")
        };
        let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        for want in ["visage.v1.Visage", "grpc.health.v1.Health"] {
            assert!(
                names.iter().any(|n| n == want),
                "{want} missing from {names:?}"
            );
        }
        let second = stream.message().await.unwrap().unwrap();
        let Some(MessageResponse::FileDescriptorResponse(files)) = second.message_response else {
            panic!("expected a file descriptor, got {second:?}")
        };
        let fd =
            prost_types::FileDescriptorProto::decode(files.file_descriptor_proto[0].as_slice())
                .unwrap();
        assert_eq!(fd.package(), "visage.v1");
        let svc = fd
            .service
            .iter()
            .find(|s| s.name() == "Visage")
            .expect("service Visage");
        let methods: Vec<&str> = svc.method.iter().map(|m| m.name()).collect();
        for m in [
            "CreateGallery",
            "DropGallery",
            "ListGalleries",
            "GetGallery",
            "Insert",
            "InsertStream",
            "Delete",
            "Get",
            "Search",
            "Identify",
            "Verify",
            "TrainHead",
            "GetHead",
            "Compact",
            "Flush",
        ] {
            assert!(methods.contains(&m), "{m} missing from {methods:?}");
        }
    }
    // v1alpha (grpcurl 1.8 and Python's reflection client use it).
    {
        use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
        let mut c = ServerReflectionClient::new(ch);
        let reqs = vec![ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        }];
        let mut stream = c
            .server_reflection_info(tokio_stream::iter(reqs))
            .await
            .unwrap()
            .into_inner();
        let r = stream.message().await.unwrap().unwrap();
        let Some(MessageResponse::ListServicesResponse(list)) = r.message_response else {
            panic!("expected a service list")
        };
        assert!(list.service.iter().any(|s| s.name == "visage.v1.Visage"));
    }
}

#[test]
fn bad_flags_and_a_locked_directory_fail_clearly() {
    let t = TempData::new();
    let out = std::process::Command::new(crate::harness::binary("visage-server"))
        .args(["--durability", "sometimes"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("power-loss"));
    // A second server on the same directory is refused, naming the lock.
    let _first = Server::start(&t.data());
    let out = std::process::Command::new(crate::harness::binary("visage-server"))
        .arg("--data-dir")
        .arg(t.data())
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("locked by another process"), "{err}");
}
