//! What the archive targets share: extract untrusted bytes and check that nothing lands
//! outside the destination, whatever the outcome.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use tilebox::release::archive::{self, EntryKind, Limits};

/// Small limits, so an input cannot make one run slow or fill the disk.
pub const LIMITS: Limits = Limits {
    max_size: 8 << 20,
    max_entries: 256,
};

/// Where scratch directories go: memory when the machine has a tmpfs at /dev/shm.
fn scratch() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    let builder = tempfile::Builder::new().prefix("tilebox-fuzz-").to_owned();
    if shm.is_dir()
        && let Ok(directory) = builder.tempdir_in(shm)
    {
        return directory;
    }
    builder.tempdir().expect("a scratch directory")
}

fn names(directory: &Path) -> BTreeSet<String> {
    fs::read_dir(directory)
        .expect("read the scratch directory")
        .map(|entry| {
            entry
                .expect("a directory entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

/// Lists and extracts `compressed` (the bytes of a `.tar.zst` file) and checks the
/// extraction's promises: nothing is written next to the destination, every reported path
/// exists inside it, and every symlink it created resolves inside it.
pub fn check_archive(compressed: &[u8]) {
    let base = scratch();
    let archive_path = base.path().join("archive.tar.zst");
    fs::write(&archive_path, compressed).expect("write the archive");
    // A decoy next to the destination: an escaping entry would have to touch this level.
    fs::write(base.path().join("secret"), b"secret").expect("write the decoy");

    let listed = archive::read_archive(&archive_path, LIMITS);
    if let Ok(entries) = &listed {
        assert!(entries.len() <= LIMITS.max_entries);
        for entry in entries {
            assert!(!entry.path.is_empty());
            assert!(!entry.path.starts_with('/'), "{entry:?}");
            assert!(
                entry
                    .path
                    .split('/')
                    .all(|part| !matches!(part, "" | "." | "..")),
                "{entry:?}"
            );
            if let EntryKind::Symlink { target } = &entry.kind {
                assert!(!target.starts_with('/'), "{entry:?}");
            }
        }
    }

    let dest = base.path().join("dest");
    let extracted = archive::extract_archive(&archive_path, &dest, LIMITS);
    assert_eq!(
        names(base.path()),
        BTreeSet::from(["archive.tar.zst".into(), "dest".into(), "secret".into()]),
        "extraction wrote next to its destination"
    );
    assert_eq!(
        fs::read(base.path().join("secret")).expect("decoy"),
        b"secret"
    );
    if let Ok(paths) = extracted {
        // What extracts also lists, and every listed file or link was extracted.
        let entries = listed.expect("an archive that extracts also lists");
        let written: BTreeSet<&str> = entries
            .iter()
            .filter(|entry| !matches!(entry.kind, EntryKind::Directory))
            .map(|entry| entry.path.as_str())
            .collect();
        let reported: BTreeSet<&str> = paths.iter().map(String::as_str).collect();
        assert_eq!(written, reported);
        let root = dest.canonicalize().expect("the destination exists");
        for path in &paths {
            let full = dest.join(path);
            let metadata = fs::symlink_metadata(&full).expect("a reported path exists");
            if metadata.file_type().is_symlink() {
                // A dangling link is fine; one that resolves must stay inside.
                if let Ok(resolved) = full.canonicalize() {
                    assert!(
                        resolved.starts_with(&root),
                        "{path} resolves to {} outside {}",
                        resolved.display(),
                        root.display()
                    );
                }
            } else {
                let parent = full
                    .parent()
                    .expect("a parent")
                    .canonicalize()
                    .expect("parent");
                assert!(parent.starts_with(&root), "{path} is outside");
            }
        }
    }
}
