//! Authentication and authorization of API calls: who a bearer token is ([`Principal`]) and
//! what it may do ([`Principal::allows`], the one permission table).
//!
//! Two kinds of credentials are accepted. Flat tokens (`--token`) are admin keys, as they
//! always were. Scoped keys come from a keys file (`--keys-file`, see [`super::keys`]),
//! which the server reads again whenever it changes ([`Authenticate::watch_keys_file`]), so
//! keys are created, revoked and rotated without a restart. With neither, the server is open
//! (local development) and every call acts as an anonymous admin.
//!
//! The interceptor resolves the caller and puts its [`Principal`] into the request's
//! extensions; each service method then calls [`authorize`] (or [`authorize_cluster`]) with
//! the [`Action`] it performs, since an interceptor does not see which method is called.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tonic::service::Interceptor;
use tonic::{Request, Status};

use super::keys::{self, ALL_CLUSTERS, Scope};
use super::store::DEFAULT_CLUSTER_SLUG;

/// How often the keys file is checked for changes: a revoked key is refused at most this
/// long (plus one call) after the file changed.
pub const KEYS_FILE_POLL: Duration = Duration::from_millis(500);

/// What a call does, as far as permissions go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    SubmitJob,
    /// Retry or cancel a job.
    ManageJobs,
    /// Get, query and list jobs and their tasks, and job state counts.
    ReadJobs,
    /// Ask for tasks of a cluster (`NextTask`, `Work` with a claim).
    Claim,
    /// Report a task done, failed or handed back (with its subtasks).
    Report,
    ExtendLease,
    /// Export OTLP logs and spans.
    WriteTelemetry,
    /// Query a job's logs and spans.
    ReadTelemetry,
    ReadClusters,
    /// Create, update, delete clusters.
    ManageClusters,
    ReadWorkflows,
    /// Create, update, delete workflows.
    ManageWorkflows,
    /// Publish or unpublish a release.
    Publish,
    /// Deploy or undeploy a release.
    Deploy,
    UploadArtifact,
    /// Get and download artifacts.
    ReadArtifacts,
    WatchDeployments,
    /// List runners (their hosts, addresses, keys and tasks).
    ReadRunners,
}

impl Action {
    /// What the action is, for refusals ("may not …").
    fn describe(self) -> &'static str {
        match self {
            Action::SubmitJob => "submit jobs",
            Action::ManageJobs => "retry or cancel jobs",
            Action::ReadJobs => "read jobs",
            Action::Claim => "claim tasks",
            Action::Report => "report tasks",
            Action::ExtendLease => "extend task leases",
            Action::WriteTelemetry => "export logs and spans",
            Action::ReadTelemetry => "read logs and spans",
            Action::ReadClusters => "read clusters",
            Action::ManageClusters => "create, update or delete clusters",
            Action::ReadWorkflows => "read workflows",
            Action::ManageWorkflows => "create, update or delete workflows",
            Action::Publish => "publish or unpublish releases",
            Action::Deploy => "deploy or undeploy releases",
            Action::UploadArtifact => "upload artifacts",
            Action::ReadArtifacts => "download artifacts",
            Action::WatchDeployments => "watch deployments",
            Action::ReadRunners => "list runners",
        }
    }
}

/// Who is calling: a key's name, scope and (for runner keys) clusters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub scope: Scope,
    /// The clusters a runner key serves (`*` for all); empty for other scopes.
    pub clusters: Vec<String>,
}

impl Principal {
    fn admin(name: &str) -> Self {
        Self {
            name: name.to_string(),
            scope: Scope::Admin,
            clusters: Vec::new(),
        }
    }

    /// The permission table: whether this key's scope may perform `action` at all.
    pub fn allows(&self, action: Action) -> bool {
        use Action::*;
        match self.scope {
            Scope::Admin => true,
            Scope::Runner => matches!(
                action,
                Claim
                    | Report
                    | ExtendLease
                    | WriteTelemetry
                    | WatchDeployments
                    | ReadArtifacts
                    | ReadClusters
            ),
            Scope::ReadOnly => matches!(
                action,
                ReadJobs
                    | ReadTelemetry
                    | ReadClusters
                    | ReadWorkflows
                    | ReadArtifacts
                    | WatchDeployments
                    | ReadRunners
            ),
        }
    }

    /// Whether this key may act on `cluster` (`""` is the default cluster). Only runner
    /// keys are limited to clusters.
    pub fn may_serve(&self, cluster: &str) -> bool {
        if self.scope != Scope::Runner {
            return true;
        }
        let cluster = if cluster.is_empty() {
            DEFAULT_CLUSTER_SLUG
        } else {
            cluster
        };
        self.clusters
            .iter()
            .any(|allowed| allowed == ALL_CLUSTERS || allowed == cluster)
    }

    /// Whether this key may act on every cluster.
    pub fn may_serve_every_cluster(&self) -> bool {
        self.scope != Scope::Runner || self.clusters.iter().any(|allowed| allowed == ALL_CLUSTERS)
    }

    fn describe(&self) -> String {
        if self.scope == Scope::Runner {
            format!(
                "key `{}` (scope {}, clusters {})",
                self.name,
                self.scope,
                self.clusters.join(", ")
            )
        } else {
            format!("key `{}` (scope {})", self.name, self.scope)
        }
    }

    /// `PERMISSION_DENIED` unless the scope allows `action`.
    pub fn check(&self, action: Action) -> Result<(), Status> {
        if self.allows(action) {
            Ok(())
        } else {
            Err(Status::permission_denied(format!(
                "{} may not {}",
                self.describe(),
                action.describe()
            )))
        }
    }

    /// `PERMISSION_DENIED` unless the scope allows `action` on `cluster`.
    pub fn check_cluster(&self, action: Action, cluster: &str) -> Result<(), Status> {
        self.check(action)?;
        if self.may_serve(cluster) {
            Ok(())
        } else {
            let cluster = if cluster.is_empty() {
                DEFAULT_CLUSTER_SLUG
            } else {
                cluster
            };
            Err(Status::permission_denied(format!(
                "{} may not {} of cluster `{cluster}`",
                self.describe(),
                action.describe()
            )))
        }
    }
}

/// The caller of `request`, as the interceptor resolved it.
pub fn principal<T>(request: &Request<T>) -> Result<Arc<Principal>, Status> {
    request
        .extensions()
        .get::<Arc<Principal>>()
        .cloned()
        .ok_or_else(|| Status::internal("the call was not authenticated (no principal)"))
}

/// The caller of `request`, if its scope allows `action`.
pub fn authorize<T>(request: &Request<T>, action: Action) -> Result<Arc<Principal>, Status> {
    let principal = principal(request)?;
    principal.check(action)?;
    Ok(principal)
}

/// The caller of `request`, if its scope allows `action` on `cluster`.
pub fn authorize_cluster<T>(
    request: &Request<T>,
    action: Action,
    cluster: &str,
) -> Result<Arc<Principal>, Status> {
    let principal = principal(request)?;
    principal.check_cluster(action, cluster)?;
    Ok(principal)
}

/// A key of the keys file, ready to compare.
struct LoadedKey {
    hash: [u8; 32],
    principal: Arc<Principal>,
}

/// The keys file and what was last read from it.
struct KeysFile {
    path: PathBuf,
    keys: RwLock<Arc<Vec<LoadedKey>>>,
    /// Modification time and length of the file as last read (or last seen malformed).
    /// The SHA-256 of the file's bytes as last read (`None`: unreadable).
    seen: Mutex<Option<[u8; 32]>>,
}

impl KeysFile {
    fn load(path: PathBuf) -> Result<Self, keys::Error> {
        let stamp = stamp(&path);
        let keys = loaded(keys::load(&path)?);
        Ok(Self {
            path,
            keys: RwLock::new(Arc::new(keys)),
            seen: Mutex::new(stamp),
        })
    }

    /// Reads the file again if it changed; a malformed or missing file keeps the keys.
    fn reload_if_changed(&self) {
        let now = stamp(&self.path);
        {
            let mut seen = self.seen.lock().expect("no code panics holding this lock");
            if *seen == now {
                return;
            }
            *seen = now;
        }
        match keys::load(&self.path) {
            Ok(file) => {
                let keys = loaded(file);
                tracing::info!(path = %self.path.display(), keys = keys.len(), "keys file reloaded");
                *self.keys.write().expect("no code panics holding this lock") = Arc::new(keys);
            }
            Err(error) => {
                let error = error_chain(&error);
                tracing::error!(path = %self.path.display(), "{error}; keeping the previous keys");
            }
        }
    }

    fn find(&self, hash: &[u8; 32]) -> Option<Arc<Principal>> {
        let keys = self
            .keys
            .read()
            .expect("no code panics holding this lock")
            .clone();
        // Every key is compared, in constant time, so timing tells nothing of which matched.
        keys.iter().fold(None, |found, key| {
            if constant_time_equal(&key.hash, hash) {
                Some(key.principal.clone())
            } else {
                found
            }
        })
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// What the file holds, as a digest: a rewrite is seen whatever its size and timestamp (a
/// rotation keeps the length, and two writes may share an mtime tick). The file is small.
fn stamp(path: &std::path::Path) -> Option<[u8; 32]> {
    use sha2::Digest;
    let bytes = fs_err::read(path).ok()?;
    Some(sha2::Sha256::digest(bytes).into())
}

fn loaded(file: keys::KeysFile) -> Vec<LoadedKey> {
    file.keys
        .into_iter()
        .filter_map(|key| {
            let mut hash = [0u8; 32];
            // A hash that is not 64 hex digits can match no secret; skip the key.
            hex::decode_to_slice(&key.sha256, &mut hash).ok()?;
            Some(LoadedKey {
                hash,
                principal: Arc::new(Principal {
                    name: key.name,
                    scope: key.scope,
                    clusters: key.clusters,
                }),
            })
        })
        .collect()
}

/// Checks `authorization: Bearer <token>` against the flat tokens (admin keys) and the keys
/// file; with neither configured every call passes as an anonymous admin (an open local
/// development server).
#[derive(Clone)]
pub struct Authenticate {
    /// SHA-256 of each `--token`: compared by hash, so neither a token's bytes nor its
    /// length show in the time a comparison takes.
    tokens: Arc<Vec<[u8; 32]>>,
    keys_file: Option<Arc<KeysFile>>,
}

impl Authenticate {
    /// Reads the keys file, if any; a missing or malformed one is an error.
    pub fn new(tokens: &[String], keys_file: Option<PathBuf>) -> Result<Self, keys::Error> {
        Ok(Self {
            tokens: Arc::new(
                tokens
                    .iter()
                    .map(|token| sha256(token.as_bytes()))
                    .collect(),
            ),
            keys_file: keys_file.map(KeysFile::load).transpose()?.map(Arc::new),
        })
    }

    /// Whether every caller is accepted.
    pub fn is_open(&self) -> bool {
        self.tokens.is_empty() && self.keys_file.is_none()
    }

    /// Who `header` (the whole `authorization` value) is, if it carries a known key.
    pub fn resolve(&self, header: Option<&[u8]>) -> Option<Arc<Principal>> {
        if self.is_open() {
            return Some(Arc::new(Principal::admin("anonymous")));
        }
        let token = header.and_then(|header| header.strip_prefix(b"Bearer "))?;
        self.resolve_digest(&key_digest(token))
    }

    /// Who the key whose SHA-256 is `digest` is, if it is a flat token or in the keys file
    /// as last read. The console keeps only this digest in its sessions and resolves it on
    /// every request, so a key revoked or rotated in the keys file ends its sessions within
    /// [`KEYS_FILE_POLL`]. Not for an open server, which has no keys ([`Self::resolve`]).
    pub fn resolve_digest(&self, digest: &[u8; 32]) -> Option<Arc<Principal>> {
        // Compare against every token without stopping early, in constant time per token.
        let flat = self.tokens.iter().fold(false, |found, candidate| {
            found | constant_time_equal(candidate, digest)
        });
        if flat {
            return Some(Arc::new(Principal::admin("--token")));
        }
        self.keys_file.as_ref()?.find(digest)
    }

    /// Whether `header` carries a key that may export telemetry (the OTLP/HTTP routes).
    pub fn accepts(&self, header: Option<&[u8]>) -> bool {
        self.resolve(header)
            .is_some_and(|principal| principal.allows(Action::WriteTelemetry))
    }

    /// Reads the keys file again whenever it changes, until `shutdown` turns true.
    pub async fn watch_keys_file(self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let Some(keys_file) = self.keys_file else {
            return;
        };
        loop {
            tokio::select! {
                () = tokio::time::sleep(KEYS_FILE_POLL) => {}
                _ = shutdown.changed() => return,
            }
            let keys_file = keys_file.clone();
            // Reading a file blocks; keep it off the async workers.
            let _ = tokio::task::spawn_blocking(move || keys_file.reload_if_changed()).await;
        }
    }
}

/// The SHA-256 of a key's text: what the keys file and the console's sessions keep of it.
pub fn key_digest(key: &[u8]) -> [u8; 32] {
    sha256(key)
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

fn constant_time_equal(left: &[u8], right: &[u8]) -> bool {
    if left.len() != right.len() {
        return false;
    }
    left.iter()
        .zip(right)
        .fold(0u8, |difference, (a, b)| difference | (a ^ b))
        == 0
}

impl Interceptor for Authenticate {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let header = request
            .metadata()
            .get("authorization")
            .map(|value| value.as_bytes());
        match self.resolve(header) {
            Some(principal) => {
                request.extensions_mut().insert(principal);
                Ok(request)
            }
            None if header.is_none() => Err(Status::unauthenticated(
                "missing `authorization: Bearer <token>`: this server requires an API key",
            )),
            None => Err(Status::unauthenticated("invalid API key")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_server_accepts_everything() {
        let open = Authenticate::new(&[], None).unwrap();
        assert!(open.accepts(None));
        assert_eq!(open.resolve(None).unwrap().scope, Scope::Admin);
    }

    #[test]
    fn configured_tokens_are_required() {
        let auth = Authenticate::new(&["alpha".into(), "beta".into()], None).unwrap();
        assert!(auth.accepts(Some(b"Bearer alpha")));
        assert!(auth.accepts(Some(b"Bearer beta")));
        assert!(!auth.accepts(Some(b"Bearer gamma")));
        assert!(!auth.accepts(Some(b"Bearer alph")));
        assert!(!auth.accepts(Some(b"alpha")));
        assert!(!auth.accepts(None));
    }

    #[test]
    fn a_key_resolves_by_its_digest_as_by_its_text() {
        let auth = Authenticate::new(&["alpha".into()], None).unwrap();
        let by_digest = auth.resolve_digest(&key_digest(b"alpha")).unwrap();
        assert_eq!(*by_digest, *auth.resolve(Some(b"Bearer alpha")).unwrap());
        assert_eq!(by_digest.name, "--token");
        assert!(auth.resolve_digest(&key_digest(b"alph")).is_none());
        // The digest is not the key: sending a digest's text as a key is refused.
        let text = hex::encode(key_digest(b"alpha"));
        assert!(
            auth.resolve(Some(format!("Bearer {text}").as_bytes()))
                .is_none()
        );
    }

    #[test]
    fn runner_keys_serve_their_clusters_only() {
        let runner = Principal {
            name: "ci".into(),
            scope: Scope::Runner,
            clusters: vec!["gpu".into(), DEFAULT_CLUSTER_SLUG.into()],
        };
        assert!(runner.check_cluster(Action::Claim, "gpu").is_ok());
        assert!(runner.check_cluster(Action::Claim, "").is_ok());
        let refusal = runner.check_cluster(Action::Claim, "cpu").unwrap_err();
        assert_eq!(refusal.code(), tonic::Code::PermissionDenied);
        assert!(
            refusal.message().contains("key `ci`"),
            "{}",
            refusal.message()
        );
        assert!(refusal.message().contains("cluster `cpu`"));
        assert!(runner.check(Action::Deploy).is_err());
        let everywhere = Principal {
            clusters: vec![ALL_CLUSTERS.into()],
            ..runner
        };
        assert!(everywhere.may_serve("anything"));
    }
}
