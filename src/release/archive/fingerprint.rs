//! The content fingerprint: what a release's files are, independent of how they were archived.

use std::path::Path;

use sha2::{Digest, Sha256};

use super::Error;
use crate::release::select::{FileKind, SelectedFile};

/// Mode of a regular file, an executable and a symlink in the fingerprint (git's).
pub(super) const FILE_MODE: u32 = 0o100_644;
pub(super) const EXECUTABLE_MODE: u32 = 0o100_755;
pub(super) const SYMLINK_MODE: u32 = 0o120_000;
/// First line of the fingerprint's canonical listing; bump it when the listing changes.
const FINGERPRINT_VERSION: &str = "tilebox-files-v1\n";

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
    hex::encode(hasher.finalize())
}

/// The digests of `files` (relative to `root`) as they are on disk now: what an archive of
/// them would record for [`fingerprint`], without writing one (`tilebox dev` compares them to
/// see that the project changed). Blocking.
pub fn digest_files(root: &Path, files: &[SelectedFile]) -> Result<Vec<FileDigest>, Error> {
    files.iter().map(|file| digest_file(root, file)).collect()
}

/// The digest of one selected file (relative to `root`) as it is on disk now, the content
/// read through a fixed buffer, so a large file costs no memory. Blocking.
pub fn digest_file(root: &Path, file: &SelectedFile) -> Result<FileDigest, Error> {
    let (mode, sha256) = match &file.kind {
        FileKind::File { executable } => {
            let path = root.join(&file.path);
            let read = |source| Error::Read {
                path: path.clone(),
                source,
            };
            let mut content = fs_err::File::open(&path).map_err(read)?;
            let mut hasher = Sha256::new();
            let mut buffer = vec![0; 64 * 1024];
            loop {
                match std::io::Read::read(&mut content, &mut buffer) {
                    Ok(0) => break,
                    Ok(count) => hasher.update(&buffer[..count]),
                    Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(error) => return Err(read(error)),
                }
            }
            let mode = if *executable {
                EXECUTABLE_MODE
            } else {
                FILE_MODE
            };
            (mode, hex::encode(hasher.finalize()))
        }
        FileKind::Symlink { target } => {
            (SYMLINK_MODE, hex::encode(Sha256::digest(target.as_bytes())))
        }
    };
    Ok(FileDigest {
        path: file.path.clone(),
        mode,
        sha256,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_digested_through_a_buffer_as_a_whole() {
        let directory = tempfile::tempdir().unwrap();
        // Several buffers' worth, not a multiple of the buffer.
        let content: Vec<u8> = (0..200_001u32).map(|index| (index % 251) as u8).collect();
        fs_err::write(directory.path().join("data.bin"), &content).unwrap();
        let file = SelectedFile {
            path: "data.bin".into(),
            kind: FileKind::File { executable: false },
        };
        let digest = digest_file(directory.path(), &file).unwrap();
        assert_eq!(digest.sha256, hex::encode(Sha256::digest(&content)));
        assert_eq!(digest.mode, FILE_MODE);
    }

    #[test]
    fn the_fingerprint_covers_paths_modes_and_contents_in_any_order() {
        let file = |path: &str, mode, content: &str| FileDigest {
            path: path.into(),
            mode,
            sha256: hex::encode(Sha256::digest(content)),
        };
        let files = [
            file("b.py", FILE_MODE, "b"),
            file("a.py", EXECUTABLE_MODE, "a"),
        ];
        let mut listing = Sha256::new();
        listing.update("tilebox-files-v1\n");
        listing.update(format!("100755 {} a.py\0", files[1].sha256));
        listing.update(format!("100644 {} b.py\0", files[0].sha256));
        assert_eq!(fingerprint(&files), hex::encode(listing.finalize()));
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
}
