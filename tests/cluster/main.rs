//! Cluster-mode tests against real NATS JetStream and etcd clusters on
//! loopback (the harness is `visage_tests::cluster`). Without `nats-server`
//! and `etcd` on PATH they skip, unless `VISAGE_REQUIRE_CLUSTER=1` (CI).

mod bench;
mod catalog;
mod erase;
mod harness_checks;
mod nodes;
mod replica;
mod security;
