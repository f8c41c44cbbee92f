//! Release archives: a deterministic `.tar.zst` writer, the content fingerprint, and a reader
//! that extracts untrusted archives without writing outside the destination.
//!
//! The format (the fixed-hash test pins it):
//! - a POSIX tar, written by the `tar` crate's builder from headers we fill in ourselves: one
//!   ustar header per selected file or symlink, sorted bytewise by path; no directory entries
//!   (extraction creates parents); two zero blocks at the end, no padding to a record size;
//! - every header has mtime 0, uid and gid 0, empty user and group names and device numbers 0;
//!   files have mode 0644, or 0755 when the source has any execute bit; symlinks 0777;
//! - a path or link target longer than 100 bytes or not ASCII, and a size of 8 GiB or more, go
//!   in a PAX extended header (`x`, named `././@PaxHeader`, records `path`, `linkpath`, `size` in
//!   that order, nothing else);
//! - compressed as one zstd frame at level 19, single-threaded, with a content checksum and
//!   neither content size nor dictionary id. The compressor is fed fixed-size chunks so its
//!   output depends only on the tar bytes (and the zstd version, pinned by `zstd-sys`).
//!
//! Layout:
//! - `mod.rs`: the format, the error type and the path rules writer and reader share
//! - `write.rs`: [`write_archive`], the deterministic writer
//! - `fingerprint.rs`: [`fingerprint`], the content fingerprint of a release's files, and
//!   [`digest_files`] and [`digest_file`], the digests of files on disk
//! - `read.rs`: [`read_archive`] and the limited, checked reader of untrusted archives
//! - `extract.rs`: [`extract_archive`], which never writes outside its destination

mod extract;
mod fingerprint;
mod read;
mod write;

use std::io;
use std::path::PathBuf;

pub use extract::extract_archive;
pub use fingerprint::{FileDigest, digest_file, digest_files, fingerprint};
pub use read::{ArchiveEntry, EntryKind, Limits, read_archive};
pub use write::{ArchiveInfo, COMPRESSION_LEVEL, write_archive, write_archive_reporting};

const BLOCK: usize = 512;
/// Size of the pieces handed to the compressor, and of read buffers.
const CHUNK: usize = 64 * 1024;

/// A failure writing, reading or extracting an archive.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} changed while it was being archived")]
    Changed { path: PathBuf },
    #[error("invalid release path `{path}`: {reason}")]
    InvalidPath { path: String, reason: String },
    #[error("archive entry `{entry}`: {reason}")]
    Refused { entry: String, reason: String },
    #[error("archive entry `{entry}`: the archive unpacks to more than {limit} bytes")]
    TooLarge { entry: String, limit: u64 },
    #[error("archive entry `{entry}`: the archive has more than {limit} entries")]
    TooManyEntries { entry: String, limit: usize },
    #[error("archive entry `{entry}`: the archive is truncated")]
    Truncated { entry: String },
    #[error("archive entry `{entry}`: {reason}")]
    Corrupt { entry: String, reason: String },
    #[error("archive entry `{entry}`: cannot decompress")]
    Decompress {
        entry: String,
        #[source]
        source: io::Error,
    },
    #[error("archive entry `{entry}`: {path} already exists")]
    Exists { entry: String, path: PathBuf },
    #[error("archive entry `{entry}`: cannot write {path}")]
    Extract {
        entry: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The normal form of an entry path (no `.` or empty components); refuses absolute paths and
/// `..`.
fn normalize(path: &str) -> Result<String, &'static str> {
    if path.starts_with('/') {
        return Err("absolute path");
    }
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err("the path contains `..`"),
            part => parts.push(part),
        }
    }
    if parts.is_empty() {
        return Err("empty path");
    }
    Ok(parts.join("/"))
}

/// Checks that a symlink at `path` with `target` points inside the archive root: not absolute,
/// and no `..` climbing above the root (judged on the text alone).
fn check_link_target(path: &str, target: &str) -> Result<(), String> {
    if target.is_empty() {
        return Err("empty link target".into());
    }
    if target.starts_with('/') {
        return Err(format!("link target `{target}` is absolute"));
    }
    // Directories between the root and where the target has led so far.
    let mut depth = path.split('/').count() - 1;
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                depth = depth
                    .checked_sub(1)
                    .ok_or_else(|| format!("link target `{target}` leaves the destination"))?;
            }
            _ => depth += 1,
        }
    }
    Ok(())
}
