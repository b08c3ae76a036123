//! API keys and roles: the key file, the table of which role each method
//! needs, and the tower layer that checks every request against both.
//!
//! Key file (`--api-keys PATH`): one key per line, `ROLE KEY`, where ROLE is
//! `read`, `write` or `admin`; blank lines and lines starting with `#` are
//! ignored, and so is anything after the key that starts with `#`. Keys are
//! 16 to 1024 visible ASCII characters (they travel in an HTTP header). The
//! file keeps only SHA-256 digests of the keys in memory; a presented key is
//! hashed and compared with every digest in constant time. Errors name the
//! file and line, never the key.
//!
//! Clients send `authorization: Bearer KEY` (or `x-api-key: KEY`). Roles nest:
//! `read` ⊂ `write` ⊂ `admin` ⊂ `node`. The `node` role is the cluster's:
//! nodes present a key of it to each other, and only it may address one
//! shard of a gallery directly (a request with the [`SHARD_HEADER`]
//! metadata, which a node sends when it fans a read out). Which role a method needs is [`visage_role`], a
//! `match` over every method of `visage.v1.Visage` (a unit test checks it
//! against the proto file); a method it does not know is refused. The health
//! service is open to all (load balancers probe it without a key); reflection
//! and anything else need a valid key of any role.

use ring::digest::{SHA256, digest};
use std::fmt;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::Status;
use tonic::codegen::http;
use tower::{Layer, Service};

/// Shortest key accepted in a key file.
pub const MIN_KEY_LEN: usize = 16;
/// Longest key accepted in a key file.
pub const MAX_KEY_LEN: usize = 1024;

/// What a key may do. Roles nest: each one may do everything of the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Read-only calls: search, identify, verify, get, gallery and head info.
    Read,
    /// `read`, plus inserting (upserting) embeddings and flushing.
    Write,
    /// Everything: creating and dropping galleries, deleting, compacting, training heads.
    Admin,
    /// Everything, and the calls cluster nodes make to each other (reads of
    /// one shard, copies of a shard): the cluster key's role.
    Node,
}

/// The metadata key of a request addressed to one shard of a gallery (its
/// value is the shard's number): only the `node` role may send it.
pub const SHARD_HEADER: &str = "visage-shard";

impl Role {
    /// The role's name in key files and messages.
    pub fn name(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
            Role::Node => "node",
        }
    }

    fn parse(s: &str) -> Option<Role> {
        match s {
            "read" => Some(Role::Read),
            "write" => Some(Role::Write),
            "admin" => Some(Role::Admin),
            "node" => Some(Role::Node),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The role a method of `visage.v1.Visage` needs, or `None` for a method
/// this table does not know (refused). Every method of the proto must be here.
pub fn visage_role(method: &str) -> Option<Role> {
    Some(match method {
        "ListGalleries" | "GetGallery" | "ListSubjects" | "Get" | "Search" | "Identify"
        | "Verify" | "GetHead" => Role::Read,
        "Insert" | "InsertStream" | "Flush" => Role::Write,
        "CreateGallery" | "DropGallery" | "Delete" | "Compact" | "TrainHead" | "Export"
        | "Backup" | "Restore" | "Import" | "ClusterStatus" => Role::Admin,
        "CopyShard" => Role::Node,
        _ => return None,
    })
}

/// What a request path needs when keys are configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No key (the health service).
    Open,
    /// A valid key of any role (reflection, unknown services).
    AnyKey,
    /// A key with at least this role (methods of `visage.v1.Visage`).
    Role(Role),
    /// Refused whatever the key: a method of `visage.v1.Visage` without a role.
    Unknown,
}

/// What the request path `/package.Service/Method` needs.
pub fn access(path: &str) -> Access {
    let path = path.strip_prefix('/').unwrap_or(path);
    let (service, method) = path.split_once('/').unwrap_or((path, ""));
    if service == "grpc.health.v1.Health" {
        Access::Open
    } else if service == visage_proto::SERVICE_NAME {
        visage_role(method).map_or(Access::Unknown, Access::Role)
    } else {
        Access::AnyKey
    }
}

/// A malformed or unreadable key file. The message names the file and line
/// and never contains a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFileError(String);

impl fmt::Display for KeyFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for KeyFileError {}

type Digest = [u8; 32];

fn sha256(key: &[u8]) -> Digest {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, key).as_ref());
    out
}

/// Equality of two digests in time independent of where they differ.
fn digests_equal(a: &Digest, b: &Digest) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// The keys of a key file, as SHA-256 digests with their roles.
#[derive(Clone)]
pub struct ApiKeys {
    keys: Vec<(Digest, Role)>,
}

impl fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Neither keys nor digests: only how many of each role.
        let count = |r: Role| self.keys.iter().filter(|(_, k)| *k == r).count();
        f.debug_struct("ApiKeys")
            .field("read", &count(Role::Read))
            .field("write", &count(Role::Write))
            .field("admin", &count(Role::Admin))
            .field("node", &count(Role::Node))
            .finish()
    }
}

impl ApiKeys {
    /// Read and parse a key file.
    pub fn load(path: &Path) -> Result<ApiKeys, KeyFileError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            KeyFileError(format!("cannot read API key file {}: {e}", path.display()))
        })?;
        ApiKeys::parse(&text, &path.display().to_string())
    }

    /// Parse the text of a key file; `source` names it in errors.
    pub fn parse(text: &str, source: &str) -> Result<ApiKeys, KeyFileError> {
        let mut keys: Vec<(Digest, Role)> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let at = |what: String| KeyFileError(format!("{source}:{}: {what}", i + 1));
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut fields = line.split_whitespace();
            let role = fields.next().unwrap_or_default();
            let Some(key) = fields.next() else {
                return Err(at(
                    "expected `ROLE KEY` (ROLE is read, write, admin or node), found one field"
                        .into(),
                ));
            };
            if let Some(extra) = fields.next()
                && !extra.starts_with('#')
            {
                return Err(at(
                    "expected `ROLE KEY`, found more fields (a comment after the key starts with #)"
                        .into(),
                ));
            }
            let Some(role) = Role::parse(role) else {
                // The first field may be a key written without its role: do not echo it.
                return Err(at(
                    "unknown role (expected `read`, `write`, `admin` or `node` before the key)"
                        .into(),
                ));
            };
            if !(MIN_KEY_LEN..=MAX_KEY_LEN).contains(&key.len()) {
                return Err(at(format!(
                    "the key has {} characters; keys are {MIN_KEY_LEN} to {MAX_KEY_LEN}",
                    key.len()
                )));
            }
            if let Some(bad) = key.bytes().position(|b| !b.is_ascii_graphic()) {
                return Err(at(format!(
                    "the key has a character that is not visible ASCII at position {}",
                    bad + 1
                )));
            }
            let d = sha256(key.as_bytes());
            if keys.iter().any(|(k, _)| digests_equal(k, &d)) {
                return Err(at("the same key appears on an earlier line".into()));
            }
            keys.push((d, role));
        }
        if keys.is_empty() {
            return Err(KeyFileError(format!(
                "{source}: no keys (each line is `ROLE KEY`, ROLE one of read, write, admin, node)"
            )));
        }
        Ok(ApiKeys { keys })
    }

    /// Keys in the file.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether there are no keys (never true for a parsed file).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The role of `key`, if it is one of the file's keys. Compares against
    /// every key, in time independent of which key (if any) matches.
    pub fn role_of(&self, key: &[u8]) -> Option<Role> {
        let d = sha256(key);
        let mut found = None;
        for (k, role) in &self.keys {
            if digests_equal(k, &d) {
                found = Some(*role);
            }
        }
        found
    }

    /// The role of the key a request presents (`authorization: Bearer KEY`
    /// or `x-api-key: KEY`); UNAUTHENTICATED if there is none, it is
    /// malformed, or it is not one of the file's keys. The metrics endpoint
    /// checks its requests with this and [`require`] too.
    pub fn role_for(&self, headers: &http::HeaderMap) -> Result<Role, Status> {
        match presented_key(headers)? {
            None => Err(Status::unauthenticated(
                "missing API key: send the metadata `authorization: Bearer KEY` (or `x-api-key: KEY`)",
            )),
            Some(key) => self
                .role_of(key)
                .ok_or_else(|| Status::unauthenticated("unknown API key")),
        }
    }

    /// Check a request's headers against what `path` needs.
    pub fn check(&self, path: &str, headers: &http::HeaderMap) -> Result<(), Status> {
        let need = access(path);
        if need == Access::Open {
            return Ok(());
        }
        let role = self.role_for(headers)?;
        let method = path.strip_prefix('/').unwrap_or(path);
        if headers.contains_key(SHARD_HEADER) {
            require(
                role,
                Role::Node,
                &format!("{method} of one shard ({SHARD_HEADER})"),
            )?;
        }
        match need {
            Access::Open | Access::AnyKey => Ok(()),
            Access::Role(needed) => require(role, needed, method),
            Access::Unknown => Err(Status::permission_denied(format!(
                "{method} has no role assigned on this server"
            ))),
        }
    }
}

/// PERMISSION_DENIED unless `role` includes `needed`; `what` names the call.
pub fn require(role: Role, needed: Role, what: &str) -> Result<(), Status> {
    if role >= needed {
        Ok(())
    } else {
        Err(Status::permission_denied(format!(
            "{what} needs the {needed} role; this key has the {role} role"
        )))
    }
}

/// The key in `authorization: Bearer KEY` or `x-api-key: KEY`, if any.
fn presented_key(headers: &http::HeaderMap) -> Result<Option<&[u8]>, Status> {
    if let Some(v) = headers.get(http::header::AUTHORIZATION) {
        let v = v.as_bytes();
        let scheme = b"bearer ";
        if v.len() > scheme.len() && v[..scheme.len()].eq_ignore_ascii_case(scheme) {
            return Ok(Some(v[scheme.len()..].trim_ascii()));
        }
        return Err(Status::unauthenticated(
            "the authorization metadata must be `Bearer KEY`",
        ));
    }
    Ok(headers
        .get("x-api-key")
        .map(|v| v.as_bytes().trim_ascii())
        .filter(|k| !k.is_empty()))
}

/// A tower layer that checks API keys before any service sees a request
/// (see the module documentation). Without keys it passes everything through.
#[derive(Debug, Clone, Default)]
pub struct AuthLayer {
    keys: Option<Arc<ApiKeys>>,
}

impl AuthLayer {
    /// Check requests against `keys`; `None` lets everything through.
    pub fn new(keys: Option<ApiKeys>) -> AuthLayer {
        AuthLayer {
            keys: keys.map(Arc::new),
        }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Auth<S> {
        Auth {
            inner,
            keys: self.keys.clone(),
        }
    }
}

/// The service of [`AuthLayer`].
#[derive(Debug, Clone)]
pub struct Auth<S> {
    inner: S,
    keys: Option<Arc<ApiKeys>>,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Auth<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        if let Some(keys) = &self.keys
            && let Err(status) = keys.check(req.uri().path(), req.headers())
        {
            // The path and the outcome only: never the metadata.
            tracing::info!(method = %req.uri().path(), code = ?status.code(), reason = %status.message(), "request refused");
            return Box::pin(std::future::ready(Ok(status.into_http())));
        }
        // The inner service was driven to readiness: call that one, leave a clone.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(inner.call(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: &str = "read-key-0123456789";
    const W: &str = "write-key-0123456789";
    const A: &str = "admin-key-0123456789";

    fn keys() -> ApiKeys {
        ApiKeys::parse(
            &format!("# ops keys\n\nread {R}\n  write\t{W}   # the ingest job\nadmin {A}\n"),
            "keys.txt",
        )
        .expect("valid file")
    }

    fn headers(pairs: &[(&'static str, &str)]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().expect("header value"));
        }
        h
    }

    fn bearer(key: &str) -> http::HeaderMap {
        headers(&[("authorization", &format!("Bearer {key}"))])
    }

    #[test]
    fn parses_roles_comments_and_blank_lines() {
        let k = keys();
        assert_eq!(k.len(), 3);
        assert_eq!(k.role_of(R.as_bytes()), Some(Role::Read));
        assert_eq!(k.role_of(W.as_bytes()), Some(Role::Write));
        assert_eq!(k.role_of(A.as_bytes()), Some(Role::Admin));
        assert_eq!(k.role_of(b"not-a-key-0123456789"), None);
        assert_eq!(k.role_of(b""), None);
        // Debug shows counts, not keys or digests.
        let dbg = format!("{k:?}");
        assert_eq!(dbg, "ApiKeys { read: 1, write: 1, admin: 1, node: 0 }");
    }

    #[test]
    fn only_the_node_role_addresses_one_shard() {
        let node_key = "node-key-0123456789abcdef";
        let k = ApiKeys::parse(&format!("admin {A}\nnode {node_key}\n"), "keys").unwrap();
        assert_eq!(k.role_of(node_key.as_bytes()), Some(Role::Node));
        let path = "/visage.v1.Visage/Search";
        let mut h = bearer(A);
        assert!(k.check(path, &h).is_ok());
        h.insert(SHARD_HEADER, http::HeaderValue::from_static("2"));
        let e = k.check(path, &h).unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
        assert!(e.message().contains("node role"), "{e}");
        let mut h = bearer(node_key);
        h.insert(SHARD_HEADER, http::HeaderValue::from_static("2"));
        assert!(k.check(path, &h).is_ok());
        assert_eq!(
            access("/visage.v1.Visage/CopyShard"),
            Access::Role(Role::Node)
        );
        let e = k
            .check("/visage.v1.Visage/CopyShard", &bearer(A))
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    }

    #[test]
    fn malformed_files_name_file_and_line_and_never_the_key() {
        let secret = "s3cret-s3cret-s3cret";
        let cases: &[(String, &str, &str)] = &[
            (
                format!("read {R}\nowner {secret}\n"),
                "k:2:",
                "unknown role",
            ),
            (format!("\n\n{secret}\n"), "k:3:", "found one field"),
            (format!("read {secret} extra\n"), "k:1:", "more fields"),
            ("read short\n".to_owned(), "k:1:", "keys are 16 to 1024"),
            (
                format!("read {}\n", "x".repeat(MAX_KEY_LEN + 1)),
                "k:1:",
                "keys are 16 to 1024",
            ),
            (
                format!("read {secret}\nadmin {secret}\n"),
                "k:2:",
                "earlier line",
            ),
            ("# nothing\n\n".to_owned(), "k: no keys", ""),
            (
                format!("read {secret}\u{e9}\n"),
                "k:1:",
                "not visible ASCII",
            ),
            // A role in capitals is not a role.
            (format!("READ {secret}\n"), "k:1:", "unknown role"),
        ];
        for (text, at, what) in cases {
            let e = ApiKeys::parse(text, "k").expect_err(text).to_string();
            assert!(e.starts_with(at), "{e:?} should start with {at:?}");
            assert!(e.contains(what), "{e:?} should say {what:?}");
            assert!(!e.contains(secret), "{e:?} leaks the key");
            assert!(
                !e.contains("short\n") && !e.contains("xxxx"),
                "{e:?} leaks the key"
            );
        }
    }

    #[test]
    fn load_reports_unreadable_files() {
        let e = ApiKeys::load(Path::new("/nonexistent/visage-keys")).expect_err("missing file");
        assert!(e.to_string().contains("/nonexistent/visage-keys"), "{e}");
    }

    #[test]
    fn every_method_of_the_proto_has_a_role() {
        // The proto is the source of truth: a new RPC without a role fails here
        // (and is refused at run time).
        let mut methods = Vec::new();
        for line in visage_proto::PROTO_SOURCE.lines() {
            if let Some(rest) = line.trim().strip_prefix("rpc ")
                && let Some(name) = rest.split('(').next()
            {
                methods.push(name.trim().to_owned());
            }
        }
        assert_eq!(methods.len(), 22, "methods found in the proto: {methods:?}");
        for m in &methods {
            assert!(visage_role(m).is_some(), "{m} has no role in visage_role");
        }
        // Bulk biometric data is the admin's.
        assert_eq!(visage_role("Export"), Some(Role::Admin));
        assert_eq!(visage_role("ListSubjects"), Some(Role::Read));
        for admin in [
            "CreateGallery",
            "DropGallery",
            "Delete",
            "Compact",
            "TrainHead",
            "Backup",
            "Restore",
            "Import",
        ] {
            assert_eq!(visage_role(admin), Some(Role::Admin), "{admin}");
        }
        for write in ["Insert", "InsertStream", "Flush"] {
            assert_eq!(visage_role(write), Some(Role::Write), "{write}");
        }
        assert_eq!(visage_role("Frobnicate"), None);
    }

    #[test]
    fn access_by_path() {
        assert_eq!(access("/grpc.health.v1.Health/Check"), Access::Open);
        assert_eq!(access("/grpc.health.v1.Health/Watch"), Access::Open);
        assert_eq!(
            access("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
            Access::AnyKey
        );
        assert_eq!(access("/visage.v1.Visage/Search"), Access::Role(Role::Read));
        assert_eq!(
            access("/visage.v1.Visage/Delete"),
            Access::Role(Role::Admin)
        );
        assert_eq!(access("/visage.v1.Visage/Nope"), Access::Unknown);
        assert_eq!(access("/visage.v1.Visage"), Access::Unknown);
        assert_eq!(access("/other.Service/Delete"), Access::AnyKey);
    }

    #[test]
    fn check_codes_and_messages() {
        let k = keys();
        let code = |path: &str, h: &http::HeaderMap| k.check(path, h).map_err(|s| s.code());
        let search = "/visage.v1.Visage/Search";
        let insert = "/visage.v1.Visage/Insert";
        let delete = "/visage.v1.Visage/Delete";
        let none = http::HeaderMap::new();

        assert_eq!(code("/grpc.health.v1.Health/Check", &none), Ok(()));
        let e = k.check(search, &none).expect_err("no key");
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        assert!(
            e.message().starts_with("missing API key"),
            "{}",
            e.message()
        );
        let e = k
            .check(search, &bearer("wrong-key-0123456789"))
            .expect_err("bad key");
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        assert_eq!(e.message(), "unknown API key");
        assert!(!e.message().contains("wrong-key"));
        let e = k
            .check(
                search,
                &headers(&[("authorization", &format!("Basic {R}"))]),
            )
            .expect_err("not bearer");
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        assert!(!e.message().contains(R));

        assert_eq!(code(search, &bearer(R)), Ok(()));
        assert_eq!(code(search, &headers(&[("x-api-key", R)])), Ok(()));
        assert_eq!(
            code(
                search,
                &headers(&[("authorization", &format!("bearer  {R} "))])
            ),
            Ok(())
        );
        let e = k.check(insert, &bearer(R)).expect_err("read inserts");
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert_eq!(
            e.message(),
            "visage.v1.Visage/Insert needs the write role; this key has the read role"
        );
        assert_eq!(code(insert, &bearer(W)), Ok(()));
        assert_eq!(code(delete, &bearer(W)), Err(tonic::Code::PermissionDenied));
        assert_eq!(code(delete, &bearer(A)), Ok(()));
        assert_eq!(
            code("/visage.v1.Visage/Nope", &bearer(A)),
            Err(tonic::Code::PermissionDenied)
        );
        let reflection = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo";
        assert_eq!(code(reflection, &bearer(R)), Ok(()));
        assert_eq!(code(reflection, &none), Err(tonic::Code::Unauthenticated));
    }

    #[test]
    fn digests_compare() {
        let a = sha256(b"a");
        let mut b = a;
        assert!(digests_equal(&a, &b));
        b[31] ^= 1;
        assert!(!digests_equal(&a, &b));
    }
}
