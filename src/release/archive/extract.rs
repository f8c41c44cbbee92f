//! Extraction of untrusted archives: never writes outside the destination.

use std::io::{self, Write};
use std::path::Path;

use fs_err as fs;

use super::Error;
use super::read::{EntryKind, Limits, TarReader};

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
                let mut file = fs::OpenOptions::new()
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
/// the lexical check of `check_link_target` is also where the link leads.
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
fn set_mode(file: &fs::File, executable: bool) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    file.set_permissions(std::fs::Permissions::from_mode(if executable {
        0o755
    } else {
        0o644
    }))
}

#[cfg(not(unix))]
fn set_mode(_file: &fs::File, _executable: bool) -> io::Result<()> {
    Ok(())
}

#[cfg(unix)]
fn make_symlink(target: &str, path: &Path) -> io::Result<()> {
    fs::os::unix::fs::symlink(target, path)
}

#[cfg(not(unix))]
fn make_symlink(_target: &str, _path: &Path) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "symlinks are only extracted on unix",
    ))
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeSet;
    use std::os::unix::fs::PermissionsExt;

    use fs_err::os::unix::fs::symlink;
    use std::path::PathBuf;

    use super::*;
    use crate::release::archive::BLOCK;
    use crate::release::archive::read::read_archive;
    use crate::release::archive::write::tests::{build, fixture};
    use crate::release::archive::write::tests::{header, write_padding};
    use crate::release::select::tests::write_tree;

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

    pub(crate) fn compressed(directory: &Path, tar: &[u8]) -> PathBuf {
        let path = directory.join("hostile.tar.zst");
        fs::write(&path, zstd::encode_all(tar, 3).unwrap()).unwrap();
        path
    }

    /// Extracts into `<base>/dest`, next to `<base>/outside/secret`; returns the error and
    /// checks nothing changed outside `dest`.
    pub(crate) fn refused(
        archive: &Path,
        prepare: impl Fn(&Path, &Path),
        limits: Limits,
    ) -> String {
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
}
