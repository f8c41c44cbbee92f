//! The deterministic writer: selected files to a `.tar.zst`, written next to its final path
//! and renamed into place.

use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tar::EntryType;

use super::fingerprint::{EXECUTABLE_MODE, FILE_MODE, FileDigest, SYMLINK_MODE, fingerprint};
use super::{CHUNK, Error, check_link_target, normalize};
use crate::release::select::{FileKind, SelectedFile};

/// zstd level of release archives; changing it changes every archive's digest.
pub const COMPRESSION_LEVEL: i32 = 19;
/// Largest size the 11 octal digits of a ustar size field hold.
const MAX_USTAR_SIZE: u64 = 0o777_7777_7777;
const PAX_HEADER_NAME: &str = "././@PaxHeader";

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

/// Writes the files (relative to `root`) as a deterministic archive at `out_path`.
///
/// The archive is written next to `out_path` and renamed into place when complete.
pub fn write_archive(
    root: &Path,
    files: &[SelectedFile],
    out_path: &Path,
) -> Result<ArchiveInfo, Error> {
    write_archive_reporting(root, files, out_path, &mut |_| {})
}

/// [`write_archive`], calling `archived` with the number of files written so far after each
/// file.
pub fn write_archive_reporting(
    root: &Path,
    files: &[SelectedFile],
    out_path: &Path,
    archived: &mut dyn FnMut(usize),
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
    let written = write_tar_zst(root, &sorted, &partial, out_path, archived).and_then(|written| {
        fs_err::rename(&partial, out_path).map_err(|source| Error::Write {
            path: out_path.to_path_buf(),
            source,
        })?;
        Ok(written)
    });
    let (size, sha256, digests) = match written {
        Ok(written) => written,
        Err(error) => {
            let _ = fs_err::remove_file(&partial);
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
    archived: &mut dyn FnMut(usize),
) -> Result<(u64, String, Vec<FileDigest>), Error> {
    let write_error = |source| Error::Write {
        path: out_path.to_path_buf(),
        source,
    };
    let file = fs_err::File::create(partial).map_err(write_error)?;
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
    let mut tar = tar::Builder::new(Chunked {
        inner: encoder,
        buffer: Vec::with_capacity(CHUNK),
    });

    let mut digests = Vec::with_capacity(files.len());
    for file in files {
        match &file.kind {
            FileKind::File { executable } => {
                let source_path = root.join(&file.path);
                let read_error = |source| Error::Read {
                    path: source_path.clone(),
                    source,
                };
                let source = fs_err::File::open(&source_path).map_err(read_error)?;
                let metadata = source.metadata().map_err(read_error)?;
                if !metadata.is_file() {
                    return Err(Error::Changed { path: source_path });
                }
                let size = metadata.len();
                let mode = if *executable { 0o755 } else { 0o644 };
                let header = entry_header(&mut tar, &file.path, "", mode, size, EntryType::Regular)
                    .map_err(write_error)?;
                let mut content = Exact::new(source, size);
                tar.append(&header, &mut content)
                    .map_err(|source| match content.failure {
                        Some(Failure::Changed) => Error::Changed {
                            path: source_path.clone(),
                        },
                        Some(Failure::Read) => read_error(source),
                        None => write_error(source),
                    })?;
                digests.push(FileDigest {
                    path: file.path.clone(),
                    mode: if *executable {
                        EXECUTABLE_MODE
                    } else {
                        FILE_MODE
                    },
                    sha256: hex::encode(content.hasher.finalize()),
                });
            }
            FileKind::Symlink { target } => {
                let header =
                    entry_header(&mut tar, &file.path, target, 0o777, 0, EntryType::Symlink)
                        .map_err(write_error)?;
                tar.append(&header, io::empty()).map_err(write_error)?;
                digests.push(FileDigest {
                    path: file.path.clone(),
                    mode: SYMLINK_MODE,
                    sha256: hex::encode(Sha256::digest(target.as_bytes())),
                });
            }
        }
        archived(digests.len());
    }

    // `into_inner` writes the two zero blocks that end the archive.
    let chunked = tar.into_inner().map_err(write_error)?;
    let encoder = chunked.finish().map_err(write_error)?;
    let hashing = encoder.finish().map_err(write_error)?;
    let file = hashing
        .inner
        .into_inner()
        .map_err(|error| write_error(error.into_error()))?;
    file.sync_all().map_err(write_error)?;
    Ok((
        hashing.size,
        hex::encode(hashing.hasher.finalize()),
        digests,
    ))
}

/// The header of one entry, after appending a PAX header for what ustar cannot hold: a path
/// or link target longer than 100 bytes or not ASCII, a size of 8 GiB or more.
fn entry_header(
    tar: &mut tar::Builder<impl Write>,
    path: &str,
    link: &str,
    mode: u32,
    size: u64,
    kind: EntryType,
) -> io::Result<tar::Header> {
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
        let pax = header(
            PAX_HEADER_NAME.as_bytes(),
            b"",
            0o644,
            records.len() as u64,
            EntryType::XHeader,
        );
        tar.append(&pax, records.as_slice())?;
    }
    Ok(header(
        path.as_bytes(),
        link.as_bytes(),
        mode,
        ustar_size,
        kind,
    ))
}

/// A ustar header with every field the developer's machine could leak set to zero: mtime,
/// uid, gid, user and group names, device numbers. `path` and `link` are cut at 100 bytes
/// (a PAX header carries them whole).
///
/// Two fields are written by hand to keep the layout the fixed-hash test pins: the name,
/// because `Header::set_path` rewrites `././@PaxHeader` to `@PaxHeader` and moves the start
/// of a long path into the ustar prefix field; and the checksum, which the crate writes as
/// seven digits and a NUL where tar (and every archive built so far) has six, a NUL and a
/// space. Both forms are valid; only the bytes, and so the digests, would change.
pub(super) fn header(
    path: &[u8],
    link: &[u8],
    mode: u32,
    size: u64,
    kind: EntryType,
) -> tar::Header {
    let mut header = tar::Header::new_ustar(); // magic, version and mtime 0
    let name = &path[..path.len().min(100)];
    header.as_old_mut().name[..name.len()].copy_from_slice(name);
    header
        .set_link_name_literal(&link[..link.len().min(100)])
        .expect("a link target has no NUL and is cut to the field's 100 bytes");
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_size(size);
    header.set_entry_type(kind);
    header
        .set_device_major(0)
        .expect("a ustar header has device fields");
    header
        .set_device_minor(0)
        .expect("a ustar header has device fields");
    header.set_cksum();
    let checksum = header
        .cksum()
        .expect("set_cksum has just written a valid checksum");
    header
        .as_old_mut()
        .cksum
        .copy_from_slice(format!("{checksum:06o}\0 ").as_bytes());
    header
}

/// Appends `<length> <key>=<value>\n`, where the length counts the whole record. (The tar
/// crate formats records only inside `Builder::append_pax_extensions`, which writes a header
/// of its own, without the name and mode above.)
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

/// Why reading a file's content for the archive failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// The file is shorter or longer than the size its header already holds.
    Changed,
    /// Reading the file failed.
    Read,
}

/// Reads exactly `size` bytes of a file being archived, hashing them. The tar builder copies
/// until the end of its reader, so a file that grew or shrank since its size went into the
/// header would make a corrupt archive: this reader fails instead, and says why.
struct Exact<R> {
    inner: R,
    remaining: u64,
    hasher: Sha256,
    failure: Option<Failure>,
}

impl<R: Read> Exact<R> {
    fn new(inner: R, size: u64) -> Self {
        Self {
            inner,
            remaining: size,
            hasher: Sha256::new(),
            failure: None,
        }
    }

    fn fail(&mut self, failure: Failure, error: io::Error) -> io::Error {
        self.failure = Some(failure);
        error
    }
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        if buffer.is_empty() {
            return Ok(0);
        }
        // At the end, one more byte is asked for: the file must end where its header says.
        let wanted = usize::try_from(self.remaining)
            .unwrap_or(usize::MAX)
            .min(buffer.len())
            .max(1);
        match self.inner.read(&mut buffer[..wanted]) {
            Ok(0) if self.remaining == 0 => Ok(0),
            Ok(0) => Err(self.fail(Failure::Changed, io::Error::other("the file shrank"))),
            Ok(_) if self.remaining == 0 => {
                Err(self.fail(Failure::Changed, io::Error::other("the file grew")))
            }
            Ok(read) => {
                self.hasher.update(&buffer[..read]);
                self.remaining -= read as u64;
                Ok(read)
            }
            // The copy retries an interrupted read.
            Err(error) if error.kind() == io::ErrorKind::Interrupted => Err(error),
            Err(error) => Err(self.fail(Failure::Read, error)),
        }
    }
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

#[cfg(test)]
pub(crate) mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::time::{Duration, SystemTime};

    use fs_err as fs;
    use fs_err::os::unix::fs::symlink;

    use super::*;
    use crate::release::archive::BLOCK;
    use crate::release::select::select_files;
    use crate::release::select::tests::{config, write_tree};

    /// A path longer than ustar's 100 bytes.
    pub(crate) const LONG_PATH: &str = "demo/a_rather_long_directory_name/another_long_directory_name/\
                             yet_another_directory/module_with_a_long_name.py";

    /// The fixture of the fixed-hash test: files, an executable, a symlink, a long path and a
    /// non-ASCII one.
    pub(crate) fn fixture(root: &Path) {
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
        fs::set_permissions(root.join(path), std::fs::Permissions::from_mode(mode)).unwrap();
    }

    pub(crate) fn build(root: &Path, out: &Path) -> ArchiveInfo {
        let configuration = config(root, &["pyproject.toml", "demo/**", "bin/*", "*.csv"], &[]);
        let files = select_files(&configuration).unwrap();
        write_archive(root, &files, out).unwrap()
    }

    /// A hand-made header block, for archives the writer would never make.
    pub(crate) fn header(
        path: &[u8],
        link: &[u8],
        mode: u32,
        size: u64,
        typeflag: u8,
    ) -> [u8; BLOCK] {
        *super::header(path, link, mode, size, EntryType::new(typeflag)).as_bytes()
    }

    /// Zeros from the end of `size` bytes of data to the end of their last block.
    pub(crate) fn write_padding(out: &mut impl Write, size: u64) -> io::Result<()> {
        let partial = (size % BLOCK as u64) as usize;
        if partial != 0 {
            out.write_all(&[0; BLOCK][partial..])?;
        }
        Ok(())
    }

    fn decompress(path: &Path) -> Vec<u8> {
        zstd::decode_all(fs::File::open(path).unwrap()).unwrap()
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
        assert_eq!(
            info.sha256,
            hex::encode(Sha256::digest(fs::read(&out).unwrap()))
        );
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
    fn digests_of_files_on_disk_give_the_fingerprint_their_archive_records() {
        let directory = tempfile::tempdir().unwrap();
        fixture(directory.path());
        let files = select_files(&config(directory.path(), &["**"], &[])).unwrap();
        let out = tempfile::tempdir().unwrap();
        let info = write_archive(directory.path(), &files, &out.path().join("demo.tar.zst"));
        let digests = super::super::digest_files(directory.path(), &files).unwrap();
        assert_eq!(fingerprint(&digests), info.unwrap().fingerprint);
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
            std::fs::Permissions::from_mode(0o700),
        )
        .unwrap();
        let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        for path in ["pyproject.toml", "demo/tasks.py", "bin/run.sh", LONG_PATH] {
            fs::File::options()
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
    fn a_file_whose_size_changed_is_refused_not_archived_short_or_long() {
        for size in [2, 4] {
            let mut tar = tar::Builder::new(Vec::new());
            let mut content = Exact::new(&b"abc"[..], size);
            let header = super::header(b"f", b"", 0o644, size, EntryType::Regular);
            assert!(tar.append(&header, &mut content).is_err(), "{size}");
            assert_eq!(content.failure, Some(Failure::Changed), "{size}");
        }
        let mut tar = tar::Builder::new(Vec::new());
        let mut content = Exact::new(&b"abc"[..], 3);
        let header = super::header(b"f", b"", 0o644, 3, EntryType::Regular);
        tar.append(&header, &mut content).unwrap();
        assert_eq!(content.failure, None);
        assert_eq!(content.hasher.finalize(), Sha256::digest(b"abc"));
        let tar = tar.into_inner().unwrap();
        assert_eq!(tar.len(), 4 * BLOCK, "header, data block, end");
        assert_eq!(&tar[BLOCK..BLOCK + 4], b"abc\0");
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
}
