//! Release archives: a deterministic `.tar.zst` writer, the content fingerprint, and a reader
//! that extracts untrusted archives without writing outside the destination.
//!
//! The format (the fixed-hash test pins it):
//! - a POSIX tar: one ustar header per selected file or symlink, sorted bytewise by path; no
//!   directory entries (extraction creates parents); two zero blocks at the end, no padding to
//!   a record size;
//! - every header has mtime 0, uid and gid 0, empty user and group names and device numbers 0;
//!   files have mode 0644, or 0755 when the source has any execute bit; symlinks 0777;
//! - a path or link target longer than 100 bytes or not ASCII, and a size of 8 GiB or more, go
//!   in a PAX extended header (`x`, named `././@PaxHeader`, records `path`, `linkpath`, `size` in
//!   that order, nothing else);
//! - compressed as one zstd frame at level 19, single-threaded, with a content checksum and
//!   neither content size nor dictionary id. The compressor is fed fixed-size chunks so its
//!   output depends only on the tar bytes (and the zstd version, pinned by `zstd-sys`).

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::select::{FileKind, SelectedFile};

/// zstd level of release archives; changing it changes every archive's digest.
pub const COMPRESSION_LEVEL: i32 = 19;
/// Largest back-reference window accepted when decompressing (128 MiB, zstd's default limit).
const WINDOW_LOG_MAX: u32 = 27;
const BLOCK: usize = 512;
/// Size of the pieces handed to the compressor, and of read buffers.
const CHUNK: usize = 64 * 1024;
/// Largest size the 11 octal digits of a ustar size field hold.
const MAX_USTAR_SIZE: u64 = 0o777_7777_7777;
const PAX_HEADER_NAME: &str = "././@PaxHeader";
/// Largest PAX or GNU long-name header accepted when reading.
const MAX_METADATA_SIZE: u64 = 1 << 20;
/// Mode of a regular file, an executable and a symlink in the fingerprint (git's).
const FILE_MODE: u32 = 0o100_644;
const EXECUTABLE_MODE: u32 = 0o100_755;
const SYMLINK_MODE: u32 = 0o120_000;
/// First line of the fingerprint's canonical listing; bump it when the listing changes.
const FINGERPRINT_VERSION: &str = "tilebox-files-v1\n";

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

/// A written archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveInfo {
    pub path: PathBuf,
    /// Size in bytes of the compressed file.
    pub size: u64,
    /// SHA-256 of the compressed file, lowercase hex: the artifact digest.
    pub sha256: String,
    /// The archived paths, in archive order.
    pub files: Vec<String>,
    /// [`fingerprint`] of the archived files.
    pub fingerprint: String,
}

/// What the fingerprint records of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileDigest {
    pub path: String,
    /// Git's modes: 0o100644, 0o100755 (executable) or 0o120000 (symlink).
    pub mode: u32,
    /// SHA-256 of the content (of the target path for a symlink), lowercase hex.
    pub sha256: String,
}

/// The SHA-256 (lowercase hex) of this canonical listing of `files`:
///
/// ```text
/// tilebox-files-v1\n
/// <mode, 6 octal digits> <content sha256, 64 hex digits> <path>\0    one per file, by path
/// ```
///
/// Files are sorted bytewise by path first, so the order given does not matter. Paths cannot
/// contain NUL and the other fields have fixed widths, so two different sets of files never
/// share a listing. Only paths, modes and contents enter it: not mtimes, owners or compression.
pub fn fingerprint(files: &[FileDigest]) -> String {
    let mut sorted: Vec<&FileDigest> = files.iter().collect();
    sorted.sort_by(|left, right| left.path.cmp(&right.path));
    let mut hasher = Sha256::new();
    hasher.update(FINGERPRINT_VERSION);
    for file in sorted {
        hasher.update(format!("{:06o} {} {}\0", file.mode, file.sha256, file.path));
    }
    hex(&hasher.finalize())
}

/// Writes the files (relative to `root`) as a deterministic archive at `out_path`.
///
/// The archive is written next to `out_path` and renamed into place when complete.
pub fn write_archive(
    root: &Path,
    files: &[SelectedFile],
    out_path: &Path,
) -> Result<ArchiveInfo, Error> {
    let mut sorted: Vec<&SelectedFile> = files.iter().collect();
    sorted.sort_by(|left, right| left.path.cmp(&right.path));
    for pair in sorted.windows(2) {
        if pair[0].path == pair[1].path {
            return Err(Error::InvalidPath {
                path: pair[0].path.clone(),
                reason: "listed twice".into(),
            });
        }
    }
    for file in &sorted {
        let invalid = |reason: String| Error::InvalidPath {
            path: file.path.clone(),
            reason,
        };
        if normalize(&file.path).map_err(|reason| invalid(reason.into()))? != file.path {
            return Err(invalid("not in normal form".into()));
        }
        if let FileKind::Symlink { target } = &file.kind {
            check_link_target(&file.path, target).map_err(invalid)?;
        }
    }

    let file_name = out_path.file_name().unwrap_or_default().to_string_lossy();
    let partial = out_path.with_file_name(format!(".{file_name}.partial"));
    let written = write_tar_zst(root, &sorted, &partial, out_path).and_then(|written| {
        fs::rename(&partial, out_path).map_err(|source| Error::Write {
            path: out_path.to_path_buf(),
            source,
        })?;
        Ok(written)
    });
    let (size, sha256, digests) = match written {
        Ok(written) => written,
        Err(error) => {
            let _ = fs::remove_file(&partial);
            return Err(error);
        }
    };
    Ok(ArchiveInfo {
        path: out_path.to_path_buf(),
        size,
        sha256,
        files: sorted.iter().map(|file| file.path.clone()).collect(),
        fingerprint: fingerprint(&digests),
    })
}

/// Writes the archive to `partial`; returns its size, sha256 and the files' digests.
fn write_tar_zst(
    root: &Path,
    files: &[&SelectedFile],
    partial: &Path,
    out_path: &Path,
) -> Result<(u64, String, Vec<FileDigest>), Error> {
    let write_error = |source| Error::Write {
        path: out_path.to_path_buf(),
        source,
    };
    let file = File::create(partial).map_err(write_error)?;
    let hashing = Hashing {
        inner: BufWriter::new(file),
        hasher: Sha256::new(),
        size: 0,
    };
    let mut encoder = zstd::Encoder::new(hashing, COMPRESSION_LEVEL).map_err(write_error)?;
    encoder.include_checksum(true).map_err(write_error)?;
    encoder.include_contentsize(false).map_err(write_error)?;
    encoder.include_dictid(false).map_err(write_error)?;
    encoder.long_distance_matching(false).map_err(write_error)?;
    let mut tar = Chunked {
        inner: encoder,
        buffer: Vec::with_capacity(CHUNK),
    };

    let mut digests = Vec::with_capacity(files.len());
    let mut buffer = vec![0; CHUNK];
    for file in files {
        match &file.kind {
            FileKind::File { executable } => {
                let source_path = root.join(&file.path);
                let read_error = |source| Error::Read {
                    path: source_path.clone(),
                    source,
                };
                let mut source = File::open(&source_path).map_err(read_error)?;
                let metadata = source.metadata().map_err(read_error)?;
                if !metadata.is_file() {
                    return Err(Error::Changed { path: source_path });
                }
                let size = metadata.len();
                let mode = if *executable { 0o755 } else { 0o644 };
                write_header(&mut tar, &file.path, "", mode, size, b'0').map_err(write_error)?;
                let mut hasher = Sha256::new();
                let mut remaining = size;
                while remaining > 0 {
                    let wanted = usize::try_from(remaining).unwrap_or(CHUNK).min(CHUNK);
                    let read = match source.read(&mut buffer[..wanted]) {
                        Ok(0) => return Err(Error::Changed { path: source_path }),
                        Ok(read) => read,
                        Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                        Err(error) => return Err(read_error(error)),
                    };
                    hasher.update(&buffer[..read]);
                    tar.write_all(&buffer[..read]).map_err(write_error)?;
                    remaining -= read as u64;
                }
                if source.read(&mut buffer[..1]).map_err(read_error)? != 0 {
                    return Err(Error::Changed { path: source_path });
                }
                write_padding(&mut tar, size).map_err(write_error)?;
                digests.push(FileDigest {
                    path: file.path.clone(),
                    mode: if *executable {
                        EXECUTABLE_MODE
                    } else {
                        FILE_MODE
                    },
                    sha256: hex(&hasher.finalize()),
                });
            }
            FileKind::Symlink { target } => {
                write_header(&mut tar, &file.path, target, 0o777, 0, b'2').map_err(write_error)?;
                digests.push(FileDigest {
                    path: file.path.clone(),
                    mode: SYMLINK_MODE,
                    sha256: hex(&Sha256::digest(target.as_bytes())),
                });
            }
        }
    }
    tar.write_all(&[0; 2 * BLOCK]).map_err(write_error)?;

    let encoder = tar.finish().map_err(write_error)?;
    let hashing = encoder.finish().map_err(write_error)?;
    let file = hashing
        .inner
        .into_inner()
        .map_err(|error| write_error(error.into_error()))?;
    file.sync_all().map_err(write_error)?;
    Ok((hashing.size, hex(&hashing.hasher.finalize()), digests))
}

/// Writes the header of one entry, preceded by a PAX header when ustar cannot hold it.
fn write_header(
    out: &mut impl Write,
    path: &str,
    link: &str,
    mode: u32,
    size: u64,
    typeflag: u8,
) -> io::Result<()> {
    let fits = |text: &str| text.len() <= 100 && text.is_ascii();
    let mut records = Vec::new();
    if !fits(path) {
        pax_record(&mut records, "path", path.as_bytes());
    }
    if !fits(link) {
        pax_record(&mut records, "linkpath", link.as_bytes());
    }
    let ustar_size = if size > MAX_USTAR_SIZE {
        pax_record(&mut records, "size", size.to_string().as_bytes());
        0
    } else {
        size
    };
    if !records.is_empty() {
        let length = records.len() as u64;
        out.write_all(&header(
            PAX_HEADER_NAME.as_bytes(),
            b"",
            0o644,
            length,
            b'x',
        ))?;
        out.write_all(&records)?;
        write_padding(out, length)?;
    }
    out.write_all(&header(
        path.as_bytes(),
        link.as_bytes(),
        mode,
        ustar_size,
        typeflag,
    ))
}

/// A ustar header block with every field the developer's machine could leak set to zero.
/// `path` and `link` are cut at 100 bytes (a PAX header carries them whole).
fn header(path: &[u8], link: &[u8], mode: u32, size: u64, typeflag: u8) -> [u8; BLOCK] {
    let mut block = [0; BLOCK];
    let name = &path[..path.len().min(100)];
    block[..name.len()].copy_from_slice(name);
    octal(&mut block[100..108], mode.into()); // mode
    octal(&mut block[108..116], 0); // uid
    octal(&mut block[116..124], 0); // gid
    octal(&mut block[124..136], size);
    octal(&mut block[136..148], 0); // mtime
    block[156] = typeflag;
    let link = &link[..link.len().min(100)];
    block[157..157 + link.len()].copy_from_slice(link);
    block[257..263].copy_from_slice(b"ustar\0");
    block[263..265].copy_from_slice(b"00");
    // uname and gname (265..329) stay empty.
    octal(&mut block[329..337], 0); // devmajor
    octal(&mut block[337..345], 0); // devminor
    block[148..156].fill(b' ');
    let checksum: u32 = block.iter().map(|&byte| u32::from(byte)).sum();
    block[148..156].copy_from_slice(format!("{checksum:06o}\0 ").as_bytes());
    block
}

/// Zero-padded octal digits and a terminating NUL.
fn octal(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    let text = format!("{value:0digits$o}");
    assert_eq!(text.len(), digits, "{value} does not fit a tar field");
    field[..digits].copy_from_slice(text.as_bytes());
    field[digits] = 0;
}

/// Appends `<length> <key>=<value>\n`, where the length counts the whole record.
fn pax_record(records: &mut Vec<u8>, key: &str, value: &[u8]) {
    let base = key.len() + value.len() + 3;
    let mut length = base;
    loop {
        let total = base + length.to_string().len();
        if total == length {
            break;
        }
        length = total;
    }
    records.extend_from_slice(format!("{length} {key}=").as_bytes());
    records.extend_from_slice(value);
    records.push(b'\n');
}

fn write_padding(out: &mut impl Write, size: u64) -> io::Result<()> {
    let partial = (size % BLOCK as u64) as usize;
    if partial != 0 {
        out.write_all(&[0; BLOCK][partial..])?;
    }
    Ok(())
}

/// Counts and hashes what passes through.
struct Hashing<W> {
    inner: W,
    hasher: Sha256,
    size: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let written = self.inner.write(data)?;
        self.hasher.update(&data[..written]);
        self.size += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Passes data on in pieces of exactly `CHUNK` bytes (the last one shorter), so how the tar
/// bytes were produced (short reads, small headers) cannot change the compressor's output.
struct Chunked<W> {
    inner: W,
    buffer: Vec<u8>,
}

impl<W: Write> Chunked<W> {
    fn finish(mut self) -> io::Result<W> {
        self.inner.write_all(&self.buffer)?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for Chunked<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let taken = data.len().min(CHUNK - self.buffer.len());
        self.buffer.extend_from_slice(&data[..taken]);
        if self.buffer.len() == CHUNK {
            self.inner.write_all(&self.buffer)?;
            self.buffer.clear();
        }
        Ok(taken)
    }

    /// Does nothing: a partial chunk waits for the next write or [`Chunked::finish`].
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        write!(text, "{byte:02x}").expect("writing to a String cannot fail");
    }
    text
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

/// Bounds on what an archive may unpack to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most bytes the decompressed tar stream (headers included) may have.
    pub max_size: u64,
    /// Most entries (files, links and directories).
    pub max_entries: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_size: 4 << 30,
            max_entries: 100_000,
        }
    }
}

/// One entry of an archive, checked: its path is relative and in normal form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveEntry {
    pub path: String,
    pub kind: EntryKind,
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    File {
        executable: bool,
    },
    Directory,
    /// `target` as stored, relative to the link's directory, never leaving the root.
    Symlink {
        target: String,
    },
    /// `target` is the path, relative to the root, of a file earlier in the archive.
    Hardlink {
        target: String,
    },
}

/// Lists an archive's entries, with the checks of [`extract_archive`] that need no files:
/// paths, link targets, entry types and limits.
pub fn read_archive(archive_path: &Path, limits: Limits) -> Result<Vec<ArchiveEntry>, Error> {
    let mut reader = TarReader::open(archive_path, limits)?;
    let mut entries = Vec::new();
    while let Some(entry) = reader.next_entry()? {
        entries.push(entry);
    }
    Ok(entries)
}

/// Extracts an archive into `dest` (created if missing) and returns the paths of the files and
/// links written, sorted.
///
/// Never writes outside `dest`: paths must be relative without `..`; an existing path is never
/// replaced and an existing symlink never followed; symlinks are created last and only when
/// their target, reached through real directories, stays inside `dest`; hard links must name a
/// file extracted before them; devices and fifos are refused. On error `dest` may hold part of
/// the archive: extract into a fresh directory and rename it into place.
pub fn extract_archive(
    archive_path: &Path,
    dest: &Path,
    limits: Limits,
) -> Result<Vec<String>, Error> {
    fs::create_dir_all(dest).map_err(|source| Error::Write {
        path: dest.to_path_buf(),
        source,
    })?;
    let mut reader = TarReader::open(archive_path, limits)?;
    let mut extracted = Vec::new();
    let mut symlinks = Vec::new();
    while let Some(entry) = reader.next_entry()? {
        let path = dest.join(&entry.path);
        let failed = |source: io::Error| {
            if source.kind() == io::ErrorKind::AlreadyExists {
                Error::Exists {
                    entry: entry.path.clone(),
                    path: path.clone(),
                }
            } else {
                Error::Extract {
                    entry: entry.path.clone(),
                    path: path.clone(),
                    source,
                }
            }
        };
        match &entry.kind {
            EntryKind::Directory => create_directories(dest, &entry.path, true)?,
            EntryKind::File { executable } => {
                create_directories(dest, &entry.path, false)?;
                let mut file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&path)
                    .map_err(failed)?;
                reader.read_content(&entry.path, |chunk| file.write_all(chunk).map_err(failed))?;
                set_mode(&file, *executable).map_err(failed)?;
                extracted.push(entry.path.clone());
            }
            EntryKind::Hardlink { target } => {
                if !is_extracted_file(dest, target) {
                    return Err(Error::Refused {
                        entry: entry.path.clone(),
                        reason: format!(
                            "hard link target `{target}` is not a file extracted before it"
                        ),
                    });
                }
                create_directories(dest, &entry.path, false)?;
                fs::hard_link(dest.join(target), &path).map_err(failed)?;
                extracted.push(entry.path.clone());
            }
            EntryKind::Symlink { target } => {
                create_directories(dest, &entry.path, false)?;
                symlinks.push((entry.path.clone(), target.clone()));
            }
        }
    }
    // Last, so no later entry can be written through a link.
    for (path, target) in symlinks {
        check_link_directories(dest, &path, &target)?;
        make_symlink(&target, &dest.join(&path)).map_err(|source| {
            if source.kind() == io::ErrorKind::AlreadyExists {
                Error::Exists {
                    entry: path.clone(),
                    path: dest.join(&path),
                }
            } else {
                Error::Extract {
                    entry: path.clone(),
                    path: dest.join(&path),
                    source,
                }
            }
        })?;
        extracted.push(path);
    }
    extracted.sort();
    Ok(extracted)
}

/// Creates the directories of the entry at `path` under `dest` (all of them with `whole`, else
/// its parents), refusing any existing component that is not a real directory.
fn create_directories(dest: &Path, path: &str, whole: bool) -> Result<(), Error> {
    let parts: Vec<&str> = path.split('/').collect();
    let count = if whole { parts.len() } else { parts.len() - 1 };
    let mut current = dest.to_path_buf();
    for (index, part) in parts[..count].iter().enumerate() {
        current.push(part);
        match fs::symlink_metadata(&current) {
            Ok(metadata) if metadata.is_dir() => {}
            Ok(_) => {
                return Err(Error::Refused {
                    entry: path.to_string(),
                    reason: format!(
                        "`{}` is not a directory in the destination",
                        parts[..=index].join("/")
                    ),
                });
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&current).map_err(|source| Error::Extract {
                    entry: path.to_string(),
                    path: current.clone(),
                    source,
                })?;
            }
            Err(source) => {
                return Err(Error::Extract {
                    entry: path.to_string(),
                    path: current,
                    source,
                });
            }
        }
    }
    Ok(())
}

/// Whether `path` under `dest` is a regular file reached through real directories only.
fn is_extracted_file(dest: &Path, path: &str) -> bool {
    let mut current = dest.to_path_buf();
    let parts: Vec<&str> = path.split('/').collect();
    for (index, part) in parts.iter().enumerate() {
        current.push(part);
        let Ok(metadata) = fs::symlink_metadata(&current) else {
            return false;
        };
        if index + 1 == parts.len() {
            return metadata.is_file();
        }
        if !metadata.is_dir() {
            return false;
        }
    }
    false
}

/// Checks that the symlink at `path` reaches its target through real directories only, so
/// the lexical check of [`check_link_target`] is also where the link leads.
fn check_link_directories(dest: &Path, path: &str, target: &str) -> Result<(), Error> {
    let mut current: Vec<&str> = path.split('/').collect();
    current.pop();
    let parts: Vec<&str> = target
        .split('/')
        .filter(|part| !part.is_empty() && *part != ".")
        .collect();
    for (index, part) in parts.iter().enumerate() {
        if *part == ".." {
            current.pop();
            continue;
        }
        current.push(part);
        let last = index + 1 == parts.len();
        if !last
            && !fs::symlink_metadata(dest.join(current.join("/")))
                .is_ok_and(|metadata| metadata.is_dir())
        {
            return Err(Error::Refused {
                entry: path.to_string(),
                reason: format!(
                    "link target `{target}` passes through `{}`, which is not a directory",
                    current.join("/")
                ),
            });
        }
    }
    Ok(())
}

#[cfg(unix)]
fn set_mode(file: &File, executable: bool) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    file.set_permissions(fs::Permissions::from_mode(if executable {
        0o755
    } else {
        0o644
    }))
}

#[cfg(not(unix))]
fn set_mode(_file: &File, _executable: bool) -> io::Result<()> {
    Ok(())
}

#[cfg(unix)]
fn make_symlink(target: &str, path: &Path) -> io::Result<()> {
    std::os::unix::fs::symlink(target, path)
}

#[cfg(not(unix))]
fn make_symlink(_target: &str, _path: &Path) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "symlinks are only extracted on unix",
    ))
}

fn corrupt(entry: impl Into<String>, reason: &str) -> Error {
    Error::Corrupt {
        entry: entry.into(),
        reason: reason.into(),
    }
}

/// Reads tar entries from a decompressed stream, counting every byte against the limits.
struct TarReader<R> {
    inner: R,
    limits: Limits,
    /// Decompressed bytes read so far.
    consumed: u64,
    entries: usize,
    /// Path of the last entry, to name positions before the next path is known.
    previous: Option<String>,
    /// Data bytes of the current entry not yet read, and the padding after them.
    unread: u64,
    padding: u64,
}

impl TarReader<zstd::Decoder<'static, io::BufReader<File>>> {
    fn open(path: &Path, limits: Limits) -> Result<Self, Error> {
        let read_error = |source| Error::Read {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(read_error)?;
        let mut decoder = zstd::Decoder::new(file).map_err(read_error)?.single_frame();
        decoder.window_log_max(WINDOW_LOG_MAX).map_err(read_error)?;
        Ok(Self::new(decoder, limits))
    }
}

impl<R: Read> TarReader<R> {
    fn new(inner: R, limits: Limits) -> Self {
        Self {
            inner,
            limits,
            consumed: 0,
            entries: 0,
            previous: None,
            unread: 0,
            padding: 0,
        }
    }

    /// Names the current position for errors before an entry's path is known.
    fn position(&self) -> String {
        match &self.previous {
            Some(previous) => format!("<header after {previous}>"),
            None => "<first header>".into(),
        }
    }

    fn read_error(entry: &str, source: io::Error) -> Error {
        if source.kind() == io::ErrorKind::UnexpectedEof {
            Error::Truncated {
                entry: entry.into(),
            }
        } else {
            Error::Decompress {
                entry: entry.into(),
                source,
            }
        }
    }

    fn read_exact(&mut self, buffer: &mut [u8], entry: &str) -> Result<(), Error> {
        let length = buffer.len() as u64;
        if self.consumed.saturating_add(length) > self.limits.max_size {
            return Err(Error::TooLarge {
                entry: entry.into(),
                limit: self.limits.max_size,
            });
        }
        self.inner
            .read_exact(buffer)
            .map_err(|source| Self::read_error(entry, source))?;
        self.consumed += length;
        Ok(())
    }

    /// Reads the rest of the current entry's data, handing it to `sink`, then its padding.
    fn read_content(
        &mut self,
        entry: &str,
        mut sink: impl FnMut(&[u8]) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let mut buffer = vec![0; CHUNK];
        while self.unread > 0 {
            let length = usize::try_from(self.unread).unwrap_or(CHUNK).min(CHUNK);
            self.read_exact(&mut buffer[..length], entry)?;
            self.unread -= length as u64;
            sink(&buffer[..length])?;
        }
        let padding = std::mem::take(&mut self.padding) as usize;
        self.read_exact(&mut buffer[..padding], entry)
    }

    /// Reads the data of an extended header.
    fn read_metadata(&mut self, size: u64, position: &str) -> Result<Vec<u8>, Error> {
        if size > MAX_METADATA_SIZE {
            return Err(corrupt(position, "extended header too large"));
        }
        self.unread = size;
        self.padding = padded(size) - size;
        let mut data = Vec::new();
        self.read_content(position, |chunk| {
            data.extend_from_slice(chunk);
            Ok(())
        })?;
        Ok(data)
    }

    /// Reads to the end of the zstd frame (which checks its checksum), within the size limit.
    fn finish(&mut self) -> Result<(), Error> {
        let position = "<end of archive>";
        let mut buffer = vec![0; CHUNK];
        loop {
            let read = match self.inner.read(&mut buffer) {
                Ok(0) => return Ok(()),
                Ok(read) => read,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(Self::read_error(position, error)),
            };
            self.consumed += read as u64;
            if self.consumed > self.limits.max_size {
                return Err(Error::TooLarge {
                    entry: position.into(),
                    limit: self.limits.max_size,
                });
            }
        }
    }

    /// The next entry with a checked path, or `None` at the end of the archive. The previous
    /// entry's unread data is skipped.
    fn next_entry(&mut self) -> Result<Option<ArchiveEntry>, Error> {
        if self.unread > 0 || self.padding > 0 {
            let previous = self.previous.clone().unwrap_or_default();
            self.read_content(&previous, |_| Ok(()))?;
        }
        let mut long_path = None;
        let mut long_link = None;
        let mut pax_size = None;
        loop {
            let position = self.position();
            let mut block = [0; BLOCK];
            self.read_exact(&mut block, &position)?;
            if block.iter().all(|&byte| byte == 0) {
                if long_path.is_some() || long_link.is_some() || pax_size.is_some() {
                    return Err(corrupt(position, "an extended header without an entry"));
                }
                self.finish()?;
                return Ok(None);
            }
            if !checksum_matches(&block) {
                return Err(corrupt(position, "bad header checksum"));
            }
            let field_size = parse_number(&block[124..136])
                .ok_or_else(|| corrupt(position.clone(), "bad size field"))?;
            let typeflag = block[156];
            match typeflag {
                b'x' => {
                    let data = self.read_metadata(field_size, &position)?;
                    let records =
                        parse_pax(&data).map_err(|reason| corrupt(position.clone(), reason))?;
                    for (key, value) in records {
                        match key {
                            b"path" => long_path = Some(value.to_vec()),
                            b"linkpath" => long_link = Some(value.to_vec()),
                            b"size" => {
                                let size = std::str::from_utf8(value)
                                    .ok()
                                    .and_then(|size| size.parse().ok())
                                    .ok_or_else(|| corrupt(position.clone(), "bad PAX size"))?;
                                pax_size = Some(size);
                            }
                            _ => {}
                        }
                    }
                }
                b'L' => {
                    long_path =
                        Some(until_nul(&self.read_metadata(field_size, &position)?).to_vec())
                }
                b'K' => {
                    long_link =
                        Some(until_nul(&self.read_metadata(field_size, &position)?).to_vec())
                }
                // Nothing in a global header applies to extraction.
                b'g' => {
                    self.read_metadata(field_size, &position)?;
                }
                _ => {
                    let path = long_path.take().unwrap_or_else(|| ustar_path(&block));
                    let link = long_link
                        .take()
                        .unwrap_or_else(|| until_nul(&block[157..257]).to_vec());
                    let size = pax_size.take().unwrap_or(field_size);
                    let root = !path.starts_with(b"/")
                        && path
                            .split(|&byte| byte == b'/')
                            .all(|part| part.is_empty() || part == b".");
                    if typeflag == b'5' && root {
                        // The destination itself (`./`): nothing to create.
                        self.unread = size;
                        self.padding = padded(size) - size;
                        self.read_content(&position, |_| Ok(()))?;
                        continue;
                    }
                    return self.entry(&block, &path, link, size).map(Some);
                }
            }
        }
    }

    /// Checks one entry's path, type and link, and its size against the limits.
    fn entry(
        &mut self,
        block: &[u8; BLOCK],
        path: &[u8],
        link: Vec<u8>,
        size: u64,
    ) -> Result<ArchiveEntry, Error> {
        let shown = String::from_utf8_lossy(path).into_owned();
        let refused = |reason: String| Error::Refused {
            entry: shown.clone(),
            reason,
        };
        let path =
            std::str::from_utf8(path).map_err(|_| refused("the path is not UTF-8".into()))?;
        let path = normalize(path).map_err(|reason| refused(reason.into()))?;
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(Error::TooManyEntries {
                entry: path,
                limit: self.limits.max_entries,
            });
        }
        let link =
            || String::from_utf8(link).map_err(|_| refused("the link target is not UTF-8".into()));
        let kind = match block[156] {
            b'0' | b'\0' | b'7' => EntryKind::File {
                executable: parse_number(&block[100..108]).is_some_and(|mode| mode & 0o111 != 0),
            },
            b'5' => EntryKind::Directory,
            b'2' => {
                let target = link()?;
                check_link_target(&path, &target).map_err(refused)?;
                EntryKind::Symlink { target }
            }
            b'1' => {
                let target = link()?;
                let normalized = normalize(&target).map_err(|_| {
                    refused(format!(
                        "hard link target `{target}` leaves the destination"
                    ))
                })?;
                EntryKind::Hardlink { target: normalized }
            }
            b'3' => return Err(refused("character device entries are not allowed".into())),
            b'4' => return Err(refused("block device entries are not allowed".into())),
            b'6' => return Err(refused("fifo entries are not allowed".into())),
            other => {
                return Err(refused(format!(
                    "unsupported entry type `{}`",
                    other.escape_ascii()
                )));
            }
        };
        if self.consumed.saturating_add(padded(size)) > self.limits.max_size {
            return Err(Error::TooLarge {
                entry: path,
                limit: self.limits.max_size,
            });
        }
        self.unread = size;
        self.padding = padded(size) - size;
        self.previous = Some(path.clone());
        Ok(ArchiveEntry { path, kind, size })
    }
}

/// `size` rounded up to whole blocks (saturating: such sizes fail the size limit anyway).
fn padded(size: u64) -> u64 {
    size.checked_next_multiple_of(BLOCK as u64)
        .unwrap_or(u64::MAX - u64::MAX % BLOCK as u64)
}

/// The ustar path: `prefix/name` when the header has a prefix.
fn ustar_path(block: &[u8; BLOCK]) -> Vec<u8> {
    let name = until_nul(&block[..100]);
    if &block[257..263] == b"ustar\0" {
        let prefix = until_nul(&block[345..500]);
        if !prefix.is_empty() {
            return [prefix, b"/", name].concat();
        }
    }
    name.to_vec()
}

fn until_nul(field: &[u8]) -> &[u8] {
    field.split(|&byte| byte == 0).next().unwrap_or_default()
}

/// An octal field (space or NUL terminated) or a GNU base-256 one.
fn parse_number(field: &[u8]) -> Option<u64> {
    if field[0] & 0x80 != 0 {
        if field[0] == 0xff {
            return None; // negative
        }
        return field[1..]
            .iter()
            .try_fold(u64::from(field[0] & 0x7f), |value, &byte| {
                value.checked_mul(256)?.checked_add(u64::from(byte))
            });
    }
    let text = std::str::from_utf8(until_nul(field))
        .ok()?
        .trim_matches(' ');
    if text.is_empty() {
        return Some(0);
    }
    if !text.bytes().all(|byte| (b'0'..=b'7').contains(&byte)) {
        return None;
    }
    u64::from_str_radix(text, 8).ok()
}

/// Whether the stored checksum matches the header (summed unsigned, or signed as some old
/// writers did).
fn checksum_matches(block: &[u8; BLOCK]) -> bool {
    let Some(stored) = parse_number(&block[148..156]) else {
        return false;
    };
    let (mut unsigned, mut signed) = (0_u64, 0_i64);
    for (index, &byte) in block.iter().enumerate() {
        let byte = if (148..156).contains(&index) {
            b' '
        } else {
            byte
        };
        unsigned += u64::from(byte);
        signed += i64::from(byte as i8);
    }
    stored == unsigned || i64::try_from(stored) == Ok(signed)
}

/// A PAX record's key and value.
type PaxRecord<'a> = (&'a [u8], &'a [u8]);

/// The records of a PAX header.
fn parse_pax(mut data: &[u8]) -> Result<Vec<PaxRecord<'_>>, &'static str> {
    let malformed = "malformed PAX header";
    let mut records = Vec::new();
    while !data.is_empty() {
        let space = data
            .iter()
            .position(|&byte| byte == b' ')
            .ok_or(malformed)?;
        let length: usize = std::str::from_utf8(&data[..space])
            .ok()
            .and_then(|length| length.parse().ok())
            .ok_or(malformed)?;
        if length <= space + 1 || length > data.len() || data[length - 1] != b'\n' {
            return Err(malformed);
        }
        let record = &data[space + 1..length - 1];
        let equals = record
            .iter()
            .position(|&byte| byte == b'=')
            .ok_or(malformed)?;
        records.push((&record[..equals], &record[equals + 1..]));
        data = &data[length..];
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::os::unix::fs::{PermissionsExt, symlink};
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::release::select::select_files;
    use crate::release::select::tests::{config, write_tree};

    /// A path longer than ustar's 100 bytes.
    const LONG_PATH: &str = "demo/a_rather_long_directory_name/another_long_directory_name/\
                             yet_another_directory/module_with_a_long_name.py";

    /// The fixture of the fixed-hash test: files, an executable, a symlink, a long path and a
    /// non-ASCII one.
    fn fixture(root: &Path) {
        write_tree(
            root,
            &[
                (
                    "pyproject.toml",
                    "[project]\nname = \"demo\"\nversion = \"0.1.0\"\n",
                ),
                ("demo/__init__.py", "from demo.tasks import Hello\n"),
                (
                    "demo/tasks.py",
                    "class Hello:\n    def execute(self, context): ...\n",
                ),
                ("demo/données.csv", "a,b\n1,2\n"),
                ("bin/run.sh", "#!/bin/sh\nexec python -m demo\n"),
                (LONG_PATH, "VALUE = 1\n"),
                ("notes.txt", "left out\n"),
            ],
        );
        set_mode(root, "bin/run.sh", 0o755);
        symlink("demo/données.csv", root.join("data.csv")).unwrap();
    }

    fn set_mode(root: &Path, path: &str, mode: u32) {
        fs::set_permissions(root.join(path), fs::Permissions::from_mode(mode)).unwrap();
    }

    fn build(root: &Path, out: &Path) -> ArchiveInfo {
        let configuration = config(root, &["pyproject.toml", "demo/**", "bin/*", "*.csv"], &[]);
        let files = select_files(&configuration).unwrap();
        write_archive(root, &files, out).unwrap()
    }

    fn decompress(path: &Path) -> Vec<u8> {
        zstd::decode_all(File::open(path).unwrap()).unwrap()
    }

    #[test]
    fn the_archive_format_is_pinned_by_its_hash() {
        let directory = tempfile::tempdir().unwrap();
        fixture(directory.path());
        let out = directory.path().join("demo.tar.zst");
        let info = build(directory.path(), &out);
        assert_eq!(
            info.files,
            [
                "bin/run.sh",
                "data.csv",
                "demo/__init__.py",
                LONG_PATH,
                "demo/données.csv",
                "demo/tasks.py",
                "pyproject.toml"
            ]
        );
        assert_eq!(info.size, fs::metadata(&out).unwrap().len());
        assert_eq!(info.sha256, hex(&Sha256::digest(fs::read(&out).unwrap())));
        assert_eq!(
            info.sha256,
            "b9fe7f31e88e4ec717895a38796f874eeb8c97f5ea63daf3b9b09546e781152b"
        );
        assert_eq!(
            info.fingerprint,
            "22d5536b363e59713f9079e081c4395f137b49902233faf214dbfe8528915707"
        );

        // The layout behind the hash.
        let tar = decompress(&out);
        let first = &tar[..BLOCK];
        assert_eq!(&first[..11], b"bin/run.sh\0");
        assert_eq!(&first[100..108], b"0000755\0");
        assert_eq!(&first[108..124], b"0000000\x000000000\x00");
        assert_eq!(&first[136..148], b"00000000000\0");
        assert_eq!(&first[257..265], b"ustar\x0000");
        assert!(first[265..329].iter().all(|&byte| byte == 0), "names");
        // PAX headers for the non-ASCII link target, the long path and the non-ASCII path.
        let pax = tar
            .chunks(BLOCK)
            .filter(|block| block.starts_with(b"././@PaxHeader\0"))
            .count();
        assert_eq!(pax, 3);
        assert!(tar.ends_with(&[0; 2 * BLOCK]));
        assert_eq!(tar.len() % BLOCK, 0);
        // No partial file is left behind.
        assert!(!directory.path().join(".demo.tar.zst.partial").exists());
    }

    #[test]
    fn the_same_files_give_identical_bytes_whatever_mtimes_and_permissions() {
        let first = tempfile::tempdir().unwrap();
        let second = tempfile::tempdir().unwrap();
        fixture(first.path());
        fixture(second.path());
        // Permissions that do not matter (group and other bits, which execute bit is set).
        set_mode(second.path(), "bin/run.sh", 0o700);
        set_mode(second.path(), "pyproject.toml", 0o600);
        set_mode(second.path(), "demo/tasks.py", 0o664);
        fs::set_permissions(
            second.path().join("demo"),
            fs::Permissions::from_mode(0o700),
        )
        .unwrap();
        let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        for path in ["pyproject.toml", "demo/tasks.py", "bin/run.sh", LONG_PATH] {
            File::options()
                .write(true)
                .open(first.path().join(path))
                .unwrap()
                .set_modified(old)
                .unwrap();
        }

        let outputs = tempfile::tempdir().unwrap();
        let one = build(first.path(), &outputs.path().join("one.tar.zst"));
        let two = build(second.path(), &outputs.path().join("two.tar.zst"));
        assert_eq!(
            fs::read(&one.path).unwrap(),
            fs::read(&two.path).unwrap(),
            "archives differ"
        );
        assert_eq!(one.sha256, two.sha256);
        assert_eq!(one.fingerprint, two.fingerprint);

        // An execute bit does matter.
        set_mode(second.path(), "pyproject.toml", 0o700);
        let three = build(second.path(), &outputs.path().join("three.tar.zst"));
        assert_ne!(one.sha256, three.sha256);
        assert_ne!(one.fingerprint, three.fingerprint);
    }

    #[test]
    fn the_fingerprint_covers_paths_modes_and_contents_in_any_order() {
        let file = |path: &str, mode, content: &str| FileDigest {
            path: path.into(),
            mode,
            sha256: hex(&Sha256::digest(content)),
        };
        let files = [
            file("b.py", FILE_MODE, "b"),
            file("a.py", EXECUTABLE_MODE, "a"),
        ];
        let mut listing = Sha256::new();
        listing.update("tilebox-files-v1\n");
        listing.update(format!("100755 {} a.py\0", files[1].sha256));
        listing.update(format!("100644 {} b.py\0", files[0].sha256));
        assert_eq!(fingerprint(&files), hex(&listing.finalize()));
        let reversed = [files[1].clone(), files[0].clone()];
        assert_eq!(fingerprint(&files), fingerprint(&reversed));
        let changes = [
            [file("b.py", FILE_MODE, "b"), file("a.py", FILE_MODE, "a")],
            [
                file("b.py", FILE_MODE, "B"),
                file("a.py", EXECUTABLE_MODE, "a"),
            ],
            [
                file("c.py", FILE_MODE, "b"),
                file("a.py", EXECUTABLE_MODE, "a"),
            ],
        ];
        for changed in changes {
            assert_ne!(fingerprint(&files), fingerprint(&changed), "{changed:?}");
        }
    }

    #[test]
    fn an_archive_round_trips_through_extraction() {
        let directory = tempfile::tempdir().unwrap();
        fixture(directory.path());
        let out = directory.path().join("demo.tar.zst");
        let info = build(directory.path(), &out);

        let listed = read_archive(&out, Limits::default()).unwrap();
        assert_eq!(
            listed.iter().map(|entry| &entry.path).collect::<Vec<_>>(),
            info.files.iter().collect::<Vec<_>>()
        );
        assert_eq!(
            listed[1].kind,
            EntryKind::Symlink {
                target: "demo/données.csv".into()
            }
        );
        assert_eq!(listed[0].kind, EntryKind::File { executable: true });

        let dest = tempfile::tempdir().unwrap();
        let extracted = extract_archive(&out, dest.path(), Limits::default()).unwrap();
        assert_eq!(extracted, info.files);
        for path in &info.files {
            assert_eq!(
                fs::read(dest.path().join(path)).unwrap(),
                fs::read(directory.path().join(path)).unwrap(),
                "{path}"
            );
        }
        let mode = |path: &str| {
            fs::metadata(dest.path().join(path))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode("bin/run.sh"), 0o755);
        assert_eq!(mode("demo/tasks.py"), 0o644);
        assert_eq!(
            fs::read_link(dest.path().join("data.csv")).unwrap(),
            Path::new("demo/données.csv")
        );
        // Extracting again over the same tree is refused, not merged.
        let again = extract_archive(&out, dest.path(), Limits::default()).unwrap_err();
        assert!(again.to_string().contains("already exists"), "{again}");
    }

    /// One hand-made tar entry: header fields and data.
    struct Raw<'a> {
        path: &'a str,
        link: &'a str,
        typeflag: u8,
        data: &'a [u8],
    }

    fn raw(path: &str, typeflag: u8, link: &str, data: &'static [u8]) -> Raw<'static> {
        // Leaked for brevity: tests only.
        Raw {
            path: Box::leak(path.to_string().into_boxed_str()),
            link: Box::leak(link.to_string().into_boxed_str()),
            typeflag,
            data,
        }
    }

    /// A compressed tar of `entries` with correct headers (sizes from the data) and an end.
    fn hostile_archive(directory: &Path, entries: &[Raw]) -> PathBuf {
        let mut tar = Vec::new();
        for entry in entries {
            tar.extend_from_slice(&header(
                entry.path.as_bytes(),
                entry.link.as_bytes(),
                0o644,
                entry.data.len() as u64,
                entry.typeflag,
            ));
            tar.extend_from_slice(entry.data);
            write_padding(&mut tar, entry.data.len() as u64).unwrap();
        }
        tar.extend_from_slice(&[0; 2 * BLOCK]);
        compressed(directory, &tar)
    }

    fn compressed(directory: &Path, tar: &[u8]) -> PathBuf {
        let path = directory.join("hostile.tar.zst");
        fs::write(&path, zstd::encode_all(tar, 3).unwrap()).unwrap();
        path
    }

    /// Extracts into `<base>/dest`, next to `<base>/outside/secret`; returns the error and
    /// checks nothing changed outside `dest`.
    fn refused(archive: &Path, prepare: impl Fn(&Path, &Path), limits: Limits) -> String {
        let base = tempfile::tempdir().unwrap();
        let dest = base.path().join("dest");
        let outside = base.path().join("outside");
        write_tree(&outside, &[("secret", "secret")]);
        fs::create_dir(&dest).unwrap();
        prepare(&dest, &outside);
        let error = extract_archive(archive, &dest, limits)
            .unwrap_err()
            .to_string();
        let names = |path: &Path| -> BTreeSet<String> {
            fs::read_dir(path)
                .unwrap()
                .map(|entry| entry.unwrap().file_name().into_string().unwrap())
                .collect()
        };
        assert_eq!(
            names(base.path()),
            BTreeSet::from(["dest".into(), "outside".into()])
        );
        assert_eq!(
            names(&outside),
            BTreeSet::from(["secret".into()]),
            "{error}"
        );
        assert_eq!(
            fs::read_to_string(outside.join("secret")).unwrap(),
            "secret"
        );
        error
    }

    #[test]
    fn hostile_archives_are_refused_naming_the_entry() {
        let directory = tempfile::tempdir().unwrap();
        let no_setup = |_: &Path, _: &Path| {};
        let cases: Vec<(Vec<Raw>, &str)> = vec![
            (
                vec![raw("../outside/pwned", b'0', "", b"pwned")],
                "archive entry `../outside/pwned`: the path contains `..`",
            ),
            (
                vec![raw("ok/../../outside/pwned", b'0', "", b"pwned")],
                "archive entry `ok/../../outside/pwned`: the path contains `..`",
            ),
            (
                vec![raw("/tmp/pwned", b'0', "", b"pwned")],
                "archive entry `/tmp/pwned`: absolute path",
            ),
            (
                vec![raw("link", b'2', "../outside/secret", b"")],
                "archive entry `link`: link target `../outside/secret` leaves the destination",
            ),
            (
                vec![raw("sub/link", b'2', "../../outside", b"")],
                "archive entry `sub/link`: link target `../../outside` leaves the destination",
            ),
            (
                vec![raw("link", b'2', "/etc/passwd", b"")],
                "archive entry `link`: link target `/etc/passwd` is absolute",
            ),
            (
                // Each link stays inside on paper; through `d/up` the second one leaves.
                vec![
                    raw("d/keep", b'0', "", b""),
                    raw("d/up", b'2', "..", b""),
                    raw("escape", b'2', "d/up/../outside/secret", b""),
                ],
                "archive entry `escape`: link target `d/up/../outside/secret` passes through \
                 `d/up`, which is not a directory",
            ),
            (
                vec![raw("hard", b'1', "../outside/secret", b"")],
                "archive entry `hard`: hard link target `../outside/secret` leaves the destination",
            ),
            (
                vec![raw("hard", b'1', "missing", b"")],
                "archive entry `hard`: hard link target `missing` is not a file extracted before it",
            ),
            (
                vec![raw("dev", b'3', "", b"")],
                "archive entry `dev`: character device entries are not allowed",
            ),
            (
                vec![raw("disk", b'4', "", b"")],
                "archive entry `disk`: block device entries are not allowed",
            ),
            (
                vec![raw("pipe", b'6', "", b"")],
                "archive entry `pipe`: fifo entries are not allowed",
            ),
            (
                vec![raw("twice", b'0', "", b"1"), raw("twice", b'0', "", b"2")],
                "archive entry `twice`: ",
            ),
        ];
        for (entries, expected) in cases {
            let archive = hostile_archive(directory.path(), &entries);
            let error = refused(&archive, no_setup, Limits::default());
            assert!(error.starts_with(expected), "{error}\nexpected: {expected}");
        }
        // Listing applies the same path checks.
        let archive = hostile_archive(directory.path(), &[raw("../x", b'0', "", b"")]);
        let error = read_archive(&archive, Limits::default()).unwrap_err();
        assert_eq!(
            error.to_string(),
            "archive entry `../x`: the path contains `..`"
        );
    }

    #[test]
    fn existing_symlinks_in_the_destination_are_never_followed() {
        let directory = tempfile::tempdir().unwrap();
        let plant = |dest: &Path, outside: &Path| {
            symlink(outside, dest.join("planted")).unwrap();
            symlink(outside.join("secret"), dest.join("file")).unwrap();
        };
        let through = hostile_archive(directory.path(), &[raw("planted/pwned", b'0', "", b"x")]);
        let error = refused(&through, plant, Limits::default());
        assert_eq!(
            error,
            "archive entry `planted/pwned`: `planted` is not a directory in the destination"
        );
        let over = hostile_archive(directory.path(), &[raw("file", b'0', "", b"x")]);
        let error = refused(&over, plant, Limits::default());
        assert!(
            error.starts_with("archive entry `file`: ") && error.ends_with("already exists"),
            "{error}"
        );
        let hard = hostile_archive(directory.path(), &[raw("hard", b'1', "file", b"")]);
        let error = refused(&hard, plant, Limits::default());
        assert_eq!(
            error,
            "archive entry `hard`: hard link target `file` is not a file extracted before it"
        );
    }

    #[test]
    fn a_decompression_bomb_stops_at_the_limit() {
        static ZEROS: [u8; 1 << 20] = [0; 1 << 20];
        let directory = tempfile::tempdir().unwrap();
        let archive = hostile_archive(directory.path(), &[raw("bomb.bin", b'0', "", &ZEROS)]);
        assert!(
            fs::metadata(&archive).unwrap().len() < 1024,
            "it compresses well"
        );
        let limits = Limits {
            max_size: 64 << 10,
            ..Limits::default()
        };
        let error = refused(&archive, |_, _| {}, limits);
        assert_eq!(
            error,
            "archive entry `bomb.bin`: the archive unpacks to more than 65536 bytes"
        );
        let error = read_archive(&archive, limits).unwrap_err();
        assert!(matches!(error, Error::TooLarge { .. }), "{error}");

        // A header that lies about its size is caught by counting the bytes too.
        let few = Limits {
            max_entries: 2,
            ..Limits::default()
        };
        let many = hostile_archive(
            directory.path(),
            &[
                raw("a", b'0', "", b""),
                raw("b", b'0', "", b""),
                raw("c", b'0', "", b""),
            ],
        );
        let error = refused(&many, |_, _| {}, few);
        assert_eq!(
            error,
            "archive entry `c`: the archive has more than 2 entries"
        );
    }

    #[test]
    fn truncated_archives_are_errors() {
        let directory = tempfile::tempdir().unwrap();
        // The tar stream ends inside an entry's data.
        let mut tar = header(b"big.txt", b"", 0o644, 1000, b'0').to_vec();
        tar.extend_from_slice(&[b'x'; 100]);
        let archive = compressed(directory.path(), &tar);
        let error = refused(&archive, |_, _| {}, Limits::default());
        assert_eq!(error, "archive entry `big.txt`: the archive is truncated");

        // The tar stream ends without its end-of-archive blocks.
        let mut tar = header(b"small.txt", b"", 0o644, 2, b'0').to_vec();
        tar.extend_from_slice(b"ok");
        write_padding(&mut tar, 2).unwrap();
        let archive = compressed(directory.path(), &tar);
        let error = refused(&archive, |_, _| {}, Limits::default());
        assert_eq!(
            error,
            "archive entry `<header after small.txt>`: the archive is truncated"
        );

        // The compressed file is cut short.
        let source = tempfile::tempdir().unwrap();
        fixture(source.path());
        let info = build(source.path(), &source.path().join("demo.tar.zst"));
        let bytes = fs::read(&info.path).unwrap();
        let cut = directory.path().join("cut.tar.zst");
        fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
        let error = refused(&cut, |_, _| {}, Limits::default());
        assert!(
            error.starts_with("archive entry `") && error.ends_with("the archive is truncated"),
            "{error}"
        );

        // A corrupted header.
        let mut tar = header(b"bad.txt", b"", 0o644, 0, b'0').to_vec();
        tar[0] = b'B';
        tar.extend_from_slice(&[0; 2 * BLOCK]);
        let archive = compressed(directory.path(), &tar);
        let error = refused(&archive, |_, _| {}, Limits::default());
        assert_eq!(error, "archive entry `<first header>`: bad header checksum");
    }

    #[test]
    fn invalid_input_paths_are_not_archived() {
        let directory = tempfile::tempdir().unwrap();
        let out = directory.path().join("x.tar.zst");
        let file = |path: &str| SelectedFile {
            path: path.into(),
            kind: FileKind::File { executable: false },
        };
        let error = write_archive(directory.path(), &[file("a/../b")], &out).unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid release path `a/../b`: the path contains `..`"
        );
        let error = write_archive(directory.path(), &[file("a"), file("a")], &out).unwrap_err();
        assert_eq!(error.to_string(), "invalid release path `a`: listed twice");
        let link = SelectedFile {
            path: "link".into(),
            kind: FileKind::Symlink {
                target: "../elsewhere".into(),
            },
        };
        let error = write_archive(directory.path(), &[link], &out).unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid release path `link`: link target `../elsewhere` leaves the destination"
        );
        let error = write_archive(directory.path(), &[file("missing")], &out).unwrap_err();
        assert!(error.to_string().starts_with("cannot read "), "{error}");
        assert!(!out.exists() && !directory.path().join(".x.tar.zst.partial").exists());
    }

    #[test]
    fn layouts_of_other_tar_writers_are_read() {
        let directory = tempfile::tempdir().unwrap();
        let mut tar = Vec::new();
        // `./` and directory entries, a GNU long name, a ustar prefix.
        tar.extend_from_slice(&header(b"./", b"", 0o755, 0, b'5'));
        tar.extend_from_slice(&header(b"./pkg/", b"", 0o755, 0, b'5'));
        let long = format!("pkg/{}.py", "n".repeat(120));
        let name = format!("{long}\0");
        tar.extend_from_slice(&header(
            b"././@LongLink",
            b"",
            0o644,
            name.len() as u64,
            b'L',
        ));
        tar.extend_from_slice(name.as_bytes());
        write_padding(&mut tar, name.len() as u64).unwrap();
        tar.extend_from_slice(&header(&long.as_bytes()[..100], b"", 0o755, 1, b'0'));
        tar.extend_from_slice(b"1");
        write_padding(&mut tar, 1).unwrap();
        let mut prefixed = header(b"inner.py", b"", 0o644, 0, b'0');
        prefixed[345..352].copy_from_slice(b"pkg/sub");
        prefixed[148..156].fill(b' ');
        let checksum: u32 = prefixed.iter().map(|&byte| u32::from(byte)).sum();
        prefixed[148..156].copy_from_slice(format!("{checksum:06o}\0 ").as_bytes());
        tar.extend_from_slice(&prefixed);
        tar.extend_from_slice(&[0; 2 * BLOCK]);
        let archive = compressed(directory.path(), &tar);

        let dest = directory.path().join("dest");
        let extracted = extract_archive(&archive, &dest, Limits::default()).unwrap();
        assert_eq!(extracted, [long.clone(), "pkg/sub/inner.py".to_string()]);
        assert_eq!(fs::read_to_string(dest.join(&long)).unwrap(), "1");
        let mode = fs::metadata(dest.join(&long)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
    }
}
