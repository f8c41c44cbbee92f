//! Every environment variable `tilebox` reads or sets, declared once. Commands take each as
//! the default of a flag (`clap`'s `env`), so `--help` shows it next to the flag.

/// The API URL the CLI and runners talk to (`--api-url`).
pub const API_URL: &str = "TILEBOX_API_URL";
/// The API key sent as `authorization: Bearer <key>` (`--api-key`).
pub const API_KEY: &str = "TILEBOX_API_KEY";
/// A PEM file with the CA certificate(s) `https://` API URLs are verified against, instead
/// of the system's roots (`--ca-cert`).
pub const CA_CERT: &str = "TILEBOX_CA_CERT";
/// The cluster a runner claims tasks for (`runner start --cluster`).
pub const CLUSTER: &str = "TILEBOX_CLUSTER";
/// The server's accepted tokens, comma-separated (`server --token`).
pub const SERVER_TOKENS: &str = "TILEBOX_SERVER_TOKENS";
/// The server's keys file of scoped API keys (`server --keys-file`, `server keys`).
pub const SERVER_KEYS_FILE: &str = "TILEBOX_SERVER_KEYS_FILE";
/// `server --no-console`: do not serve the web console.
pub const SERVER_NO_CONSOLE: &str = "TILEBOX_SERVER_NO_CONSOLE";
/// The server's data directory (`server --data-dir`).
pub const DATA_DIR: &str = "TILEBOX_DATA_DIR";
/// `tilebox server --database`: the PostgreSQL URL to keep the state in.
pub const DATABASE_URL: &str = "TILEBOX_DATABASE_URL";
/// The binary a runner starts as the child-process host of a release (tests and
/// benchmarks point it at a build; default: this executable).
pub const PYTHON_HOST: &str = "TILEBOX_PYTHON_HOST";
/// Set by `tilebox parallel` for each command it starts: its index, from 0.
pub const PARALLEL_INDEX: &str = "TILEBOX_PARALLEL_INDEX";
/// Read by the Python runtime: the level of `context.logger` records (default `INFO`).
pub const LOG_LEVEL: &str = "TILEBOX_LOG_LEVEL";
/// Any value turns off colour in the CLI's own logs (<https://no-color.org>).
pub const NO_COLOR: &str = "NO_COLOR";
/// The uv program to run, instead of searching `PATH` and the embedded interpreter for one.
pub const UV: &str = "TILEBOX_UV";
/// Set for `uv`: never download a Python (release venvs use the embedded interpreter).
pub const UV_PYTHON_DOWNLOADS: &str = "UV_PYTHON_DOWNLOADS";
/// Set for `uv`: the venv a shared release environment is synced into.
pub const UV_PROJECT_ENVIRONMENT: &str = "UV_PROJECT_ENVIRONMENT";
/// Set by `build.rs` at compile time: the CPython executable the binary embeds.
pub const EMBEDDED_PYTHON: &str = "TILEBOX_EMBEDDED_PYTHON";
/// Set by `build.rs` at compile time: the git commit the binary is built from (short hash,
/// `-dirty` when tracked files differed from it, `unknown` outside git).
pub const GIT_COMMIT: &str = "TILEBOX_GIT_COMMIT";
