//! Build steps that need no system tools:
//! - compiles `proto/` with a pure-Rust proto compiler (protox), so no `protoc` is needed;
//! - embeds the Python runtime (`python/tilebox/**.py`) into the binary;
//! - links libpython with an rpath, so the binary finds the CPython it embeds;
//! - records the git commit it is built from, for `tilebox --version`.

// fs-err is not a build dependency; a failing file operation ends the build with its cause.
#![allow(clippy::disallowed_methods)]

use std::path::{Path, PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    compile_protos()?;
    record_git_commit();
    embed_python_runtime()?;
    pyo3_build_config::add_libpython_rpath_link_args();
    // The interpreter release venvs must be built with (the one this binary embeds).
    if let Some(executable) = pyo3_build_config::get().executable() {
        // The name is `env::EMBEDDED_PYTHON` (build scripts cannot import the crate).
        println!("cargo:rustc-env=TILEBOX_EMBEDDED_PYTHON={executable}");
    }
    Ok(())
}

fn compile_protos() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/tilebox/v1/id.proto",
        "proto/tilebox/v1/query.proto",
        "proto/workflows/v1/core.proto",
        "proto/workflows/v1/job.proto",
        "proto/workflows/v1/task.proto",
        "proto/workflows/v1/workflows.proto",
        "proto/tilebox/selfhosted/v1/releases.proto",
        "proto/tilebox/selfhosted/v1/work.proto",
        "proto/tilebox/selfhosted/v1/runners.proto",
        "proto/workflows/v1/telemetry.proto",
        "proto/opentelemetry/proto/collector/logs/v1/logs_service.proto",
        "proto/opentelemetry/proto/collector/trace/v1/trace_service.proto",
    ];
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}

/// Sets `TILEBOX_GIT_COMMIT` (`env::GIT_COMMIT`; build scripts cannot import the crate): the
/// short hash of `HEAD`, with `-dirty` when tracked files differ from it, or `unknown` when
/// the crate is built outside its own git work tree (a source tarball) or without `git`.
///
/// The script reruns when `HEAD`, the branch it points to or the index changes (a commit, a
/// checkout, `git add`), not on every edit: `-dirty` is as of the last of those.
fn record_git_commit() {
    let commit = git_commit().unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=TILEBOX_GIT_COMMIT={commit}");
}

fn git_commit() -> Option<String> {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let git = |arguments: &[&str]| -> Option<String> {
        let output = std::process::Command::new("git")
            .arg("-C")
            .arg(manifest_dir)
            .args(arguments)
            .output()
            .ok()?;
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
    };
    // Only this crate's own work tree: not a repository the tarball was unpacked into.
    let top = PathBuf::from(git(&["rev-parse", "--show-toplevel"])?);
    if top.canonicalize().ok()? != manifest_dir.canonicalize().ok()? {
        return None;
    }
    let git_dir = PathBuf::from(git(&["rev-parse", "--absolute-git-dir"])?);
    let common_dir = manifest_dir.join(git(&["rev-parse", "--git-common-dir"])?);
    // A missing file would rerun the script on every build: name only those that exist. Not
    // the index: `git status` rewrites it, and a rerun rebuilds the whole crate; so `-dirty`
    // is as of the last commit or checkout.
    let mut watched = vec![git_dir.join("HEAD"), common_dir.join("packed-refs")];
    if let Some(reference) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watched.push(common_dir.join(reference));
    }
    for path in watched.iter().filter(|path| path.exists()) {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    let hash = git(&["rev-parse", "--short=12", "HEAD"])?;
    // Without optional locks `status` does not rewrite the index, which would rerun this script.
    let dirty = git(&[
        "--no-optional-locks",
        "status",
        "--porcelain",
        "--untracked-files=no",
    ])?;
    Some(if dirty.is_empty() {
        hash
    } else {
        format!("{hash}-dirty")
    })
}

/// Writes `$OUT_DIR/python_runtime.rs`: every `.py` file under `python/tilebox`, as
/// (relative path, contents), sorted by path.
fn embed_python_runtime() -> Result<(), Box<dyn std::error::Error>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("python");
    println!("cargo:rerun-if-changed=python/tilebox");
    let mut files = Vec::new();
    collect_python_files(&root.join("tilebox"), &mut files)?;
    files.sort();
    let mut source = String::from(
        "/// The embedded Python runtime: (path relative to the runtime root, contents).\npub static RUNTIME_FILES: &[(&str, &str)] = &[\n",
    );
    for file in &files {
        let relative = file
            .strip_prefix(&root)?
            .to_string_lossy()
            .replace('\\', "/");
        println!("cargo:rerun-if-changed={}", file.display());
        source.push_str(&format!(
            "    ({relative:?}, include_str!({:?})),\n",
            file.display().to_string()
        ));
    }
    source.push_str("];\n");
    let out = PathBuf::from(std::env::var("OUT_DIR")?).join("python_runtime.rs");
    std::fs::write(out, source)?;
    Ok(())
}

fn collect_python_files(directory: &Path, files: &mut Vec<PathBuf>) -> std::io::Result<()> {
    if !directory.exists() {
        return Ok(());
    }
    for entry in std::fs::read_dir(directory)? {
        let path = entry?.path();
        if path.is_dir() {
            if path.file_name().is_some_and(|name| name != "__pycache__") {
                collect_python_files(&path, files)?;
            }
        } else if path.extension().is_some_and(|extension| extension == "py") {
            files.push(path);
        }
    }
    Ok(())
}
