//! The reader of untrusted archives: every header checked, every decompressed byte counted
//! against [`Limits`].
//!
//! `tar::Header` decodes each header block. The loop around it is ours, not `tar::Archive`'s,
//! because the policy sits between its steps: bytes are counted against the limit before they
//! are read, an extended header is capped before it is buffered (`Archive` reads GNU long
//! names and PAX data whole), errors name the entry or the header position, and a stream that
//! stops where a header should be is truncated, where `Archive` sees a clean end.

use std::borrow::Cow;
use std::io::{self, Read};
use std::path::Path;

use tar::EntryType;

use super::{BLOCK, CHUNK, Error, check_link_target, normalize};

/// Largest back-reference window accepted when decompressing (128 MiB, zstd's default limit).
const WINDOW_LOG_MAX: u32 = 27;
/// Largest PAX or GNU long-name header accepted when reading.
const MAX_METADATA_SIZE: u64 = 1 << 20;

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

fn corrupt(entry: impl Into<String>, reason: &str) -> Error {
    Error::Corrupt {
        entry: entry.into(),
        reason: reason.into(),
    }
}

/// Reads tar entries from a decompressed stream, counting every byte against the limits.
pub(super) struct TarReader<R> {
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

impl TarReader<zstd::Decoder<'static, io::BufReader<fs_err::File>>> {
    pub(super) fn open(path: &Path, limits: Limits) -> Result<Self, Error> {
        let read_error = |source| Error::Read {
            path: path.to_path_buf(),
            source,
        };
        let file = fs_err::File::open(path).map_err(read_error)?;
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
    pub(super) fn read_content(
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
    pub(super) fn next_entry(&mut self) -> Result<Option<ArchiveEntry>, Error> {
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
            let header = tar::Header::from_byte_slice(&block);
            if !checksum_matches(header) {
                return Err(corrupt(position, "bad header checksum"));
            }
            let field_size = header
                .entry_size()
                .map_err(|_| corrupt(position.clone(), "bad size field"))?;
            match header.entry_type() {
                EntryType::XHeader => {
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
                EntryType::GNULongName => {
                    long_path =
                        Some(until_nul(&self.read_metadata(field_size, &position)?).to_vec())
                }
                EntryType::GNULongLink => {
                    long_link =
                        Some(until_nul(&self.read_metadata(field_size, &position)?).to_vec())
                }
                // Nothing in a global header applies to extraction.
                EntryType::XGlobalHeader => {
                    self.read_metadata(field_size, &position)?;
                }
                kind => {
                    // `path_bytes` joins a ustar prefix and name.
                    let path = long_path
                        .take()
                        .unwrap_or_else(|| header.path_bytes().into_owned());
                    let link = long_link.take().unwrap_or_else(|| {
                        header
                            .link_name_bytes()
                            .map(Cow::into_owned)
                            .unwrap_or_default()
                    });
                    let size = pax_size.take().unwrap_or(field_size);
                    let root = !path.starts_with(b"/")
                        && path
                            .split(|&byte| byte == b'/')
                            .all(|part| part.is_empty() || part == b".");
                    if kind == EntryType::Directory && root {
                        // The destination itself (`./`): nothing to create.
                        self.unread = size;
                        self.padding = padded(size) - size;
                        self.read_content(&position, |_| Ok(()))?;
                        continue;
                    }
                    let executable = header.mode().is_ok_and(|mode| mode & 0o111 != 0);
                    return self.entry(kind, executable, &path, link, size).map(Some);
                }
            }
        }
    }

    /// Checks one entry's path, type and link, and its size against the limits.
    fn entry(
        &mut self,
        kind: EntryType,
        executable: bool,
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
        let kind = match kind {
            EntryType::Regular | EntryType::Continuous => EntryKind::File { executable },
            EntryType::Directory => EntryKind::Directory,
            EntryType::Symlink => {
                let target = link()?;
                check_link_target(&path, &target).map_err(refused)?;
                EntryKind::Symlink { target }
            }
            EntryType::Link => {
                let target = link()?;
                let normalized = normalize(&target).map_err(|_| {
                    refused(format!(
                        "hard link target `{target}` leaves the destination"
                    ))
                })?;
                EntryKind::Hardlink { target: normalized }
            }
            EntryType::Char => {
                return Err(refused("character device entries are not allowed".into()));
            }
            EntryType::Block => return Err(refused("block device entries are not allowed".into())),
            EntryType::Fifo => return Err(refused("fifo entries are not allowed".into())),
            other => {
                return Err(refused(format!(
                    "unsupported entry type `{}`",
                    other.as_byte().escape_ascii()
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

/// The data of a GNU long name or link, which ends with a NUL.
fn until_nul(data: &[u8]) -> &[u8] {
    data.split(|&byte| byte == 0).next().unwrap_or_default()
}

/// Whether the stored checksum matches the header: summed unsigned, as the tar crate computes
/// it, or signed, as some old writers did (which the crate does not accept).
fn checksum_matches(header: &tar::Header) -> bool {
    let Ok(stored) = header.cksum() else {
        return false;
    };
    let mut unsigned = header.clone();
    unsigned.set_cksum();
    if unsigned.cksum().is_ok_and(|sum| sum == stored) {
        return true;
    }
    let signed: i64 = header
        .as_bytes()
        .iter()
        .enumerate()
        .map(|(index, &byte)| {
            if (148..156).contains(&index) {
                i64::from(b' ')
            } else {
                i64::from(byte as i8)
            }
        })
        .sum();
    i64::from(stored) == signed
}

/// A PAX record's key and value.
type PaxRecord<'a> = (&'a [u8], &'a [u8]);

/// The records of a PAX header. (Not `tar::PaxExtensions`: it splits records at newlines
/// instead of reading their lengths, so a path with a newline, which a file name may have,
/// would not read back.)
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
    use std::os::unix::fs::PermissionsExt;

    use fs_err as fs;

    use super::*;
    use crate::release::archive::extract::tests::{compressed, refused};
    use crate::release::archive::extract_archive;
    use crate::release::archive::write::tests::{build, fixture};
    use crate::release::archive::write::tests::{header, write_padding};
    use crate::release::archive::write_archive;
    use crate::release::select::{FileKind, SelectedFile};

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

    #[test]
    fn a_signed_header_checksum_from_an_old_writer_is_accepted() {
        let directory = tempfile::tempdir().unwrap();
        // Bytes above 0x7f sum differently signed and unsigned.
        let mut tar = header("é.txt".as_bytes(), b"", 0o644, 0, b'0').to_vec();
        tar[148..156].fill(b' ');
        let signed: i64 = tar.iter().map(|&byte| i64::from(byte as i8)).sum();
        tar[148..156].copy_from_slice(format!("{signed:06o}\0 ").as_bytes());
        tar.extend_from_slice(&[0; 2 * BLOCK]);
        let archive = compressed(directory.path(), &tar);
        let listed = read_archive(&archive, Limits::default()).unwrap();
        assert_eq!(listed[0].path, "é.txt");
    }

    #[test]
    fn a_long_path_with_a_newline_reads_back() {
        let directory = tempfile::tempdir().unwrap();
        let path = format!("{}\nname.py", "n".repeat(120));
        fs::write(directory.path().join(&path), "x").unwrap();
        let file = SelectedFile {
            path: path.clone(),
            kind: FileKind::File { executable: false },
        };
        let out = directory.path().join("out.tar.zst");
        write_archive(directory.path(), &[file], &out).unwrap();
        let listed = read_archive(&out, Limits::default()).unwrap();
        assert_eq!(listed[0].path, path);

        // Why the PAX records are parsed here: the crate's parser splits at the newline.
        let tar = zstd::decode_all(fs::File::open(&out).unwrap()).unwrap();
        let pax = tar::Header::from_byte_slice(&tar[..BLOCK]);
        assert_eq!(pax.entry_type(), EntryType::XHeader);
        let length = pax.entry_size().unwrap() as usize;
        let records = &tar[BLOCK..BLOCK + length];
        assert!(parse_pax(records).is_ok());
        assert!(tar::PaxExtensions::new(records).any(|record| record.is_err()));
    }
}
