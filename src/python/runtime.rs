//! The embedded `tilebox.workflows` runtime (`python/tilebox/**`, compiled into the binary)
//! and where it is unpacked for interpreters to import.

use std::path::{Path, PathBuf};

use super::Error;

include!(concat!(env!("OUT_DIR"), "/python_runtime.rs"));

/// A short hash of the runtime's contents: unpacked copies of different builds never mix.
pub fn fingerprint() -> String {
    // FNV-1a over paths and contents; stable across builds and machines.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for (path, contents) in RUNTIME_FILES {
        for byte in path.bytes().chain([0]).chain(contents.bytes()).chain([0]) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{hash:016x}")
}

/// Unpacks the runtime under `cache_dir/runtime/<fingerprint>` (once; later calls reuse it)
/// and returns the directory to put first on `sys.path`.
pub fn unpack(cache_dir: &Path) -> Result<PathBuf, Error> {
    let target = cache_dir.join("runtime").join(fingerprint());
    let marker = target.join(".complete");
    if marker.exists() {
        return Ok(target);
    }
    let staging =
        cache_dir
            .join("runtime")
            .join(format!(".{}-{}", fingerprint(), std::process::id()));
    let io_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Runtime { path, source }
    };
    for (relative, contents) in RUNTIME_FILES {
        let path = staging.join(relative);
        if let Some(parent) = path.parent() {
            fs_err::create_dir_all(parent).map_err(io_error(parent))?;
        }
        fs_err::write(&path, contents).map_err(io_error(&path))?;
    }
    fs_err::write(staging.join(".complete"), b"").map_err(io_error(&staging))?;
    match fs_err::rename(&staging, &target) {
        Ok(()) => Ok(target),
        // Another process unpacked the same runtime first: use theirs.
        Err(_) if marker.exists() => {
            let _ = fs_err::remove_dir_all(&staging);
            Ok(target)
        }
        Err(source) => Err(Error::Runtime {
            path: target,
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_runtime_is_embedded_and_unpacks_once() {
        assert!(
            RUNTIME_FILES
                .iter()
                .any(|(path, _)| *path == "tilebox/workflows/__init__.py"),
            "python/tilebox/workflows/__init__.py is embedded"
        );
        assert!(
            !RUNTIME_FILES
                .iter()
                .any(|(path, _)| *path == "tilebox/__init__.py"),
            "tilebox stays a namespace package"
        );
        let cache = tempfile::tempdir().unwrap();
        let first = unpack(cache.path()).unwrap();
        assert!(first.join("tilebox/workflows/__init__.py").is_file());
        assert_eq!(unpack(cache.path()).unwrap(), first);
    }
}
