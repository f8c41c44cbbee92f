//! Which files of the project go into a release.
//!
//! A file is selected when it matches an `include` glob, matches no `exclude` glob and (with
//! `use_gitignore`) is not ignored by git's rules. Globs are relative to the root; `*` stays
//! within one path component and `**` crosses them; a glob that matches a directory matches
//! everything under it (`exclude = ["build"]` drops the whole tree). Hidden files are selected
//! like any other file when a glob matches them. Always left out: the artifact
//! `<slug>.tar.zst` at the root (and its `.partial` file while it is written), and anything inside a `.git`, `.venv` or `.tilebox` directory (`.tilebox` holds
//! what `tilebox dev` keeps of a project: its server's database and artifacts).
//!
//! Git's rules, when the root is inside a git repository (a `.git` in the root or a parent):
//! every `.gitignore` from the repository's top down to each file. Outside a repository: the
//! `.gitignore` files inside the root. Never a clone's `.git/info/exclude` nor the user's
//! global excludes (`core.excludesFile`): they belong to one clone or one machine, not to the
//! commit, so two clones of the same commit would build different artifacts.
//!
//! Symlinks are kept as symlinks when they point to a selected file inside the root; their
//! target is stored relative to the link. Any other selected symlink (leaving the root, to a
//! directory, broken, or to a file the release leaves out) is an error.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

use super::config::Config;

/// Directory names whose contents are never part of a release.
const ALWAYS_EXCLUDED: [&str; 3] = [".git", ".venv", ".tilebox"];

/// A file chosen for the release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelectedFile {
    /// Relative to the root, `/`-separated, UTF-8.
    pub path: String,
    pub kind: FileKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileKind {
    /// A regular file; `executable` when any execute bit is set.
    File { executable: bool },
    /// A symlink to a selected file; `target` is relative to the link's directory.
    Symlink { target: String },
}

/// Why the files of a release cannot be selected.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid glob `{pattern}`")]
    Glob {
        pattern: String,
        #[source]
        source: globset::Error,
    },
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot walk the project tree at {path}")]
    Walk {
        path: PathBuf,
        #[source]
        source: ignore::Error,
    },
    #[error("{path} is not valid UTF-8; release paths must be UTF-8")]
    NotUtf8 { path: PathBuf },
    #[error("`{path}` is neither a regular file nor a symlink")]
    Unsupported { path: String },
    #[error("symlink `{path}` cannot be resolved")]
    BrokenSymlink {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("symlink `{path}` points to {target}, outside the project root")]
    SymlinkLeavesRoot { path: String, target: PathBuf },
    #[error("symlink `{path}` points to a directory; include the directory's files instead")]
    SymlinkToDirectory { path: String },
    #[error("symlink `{path}` points to `{target}`, which is not part of the release")]
    SymlinkTargetNotSelected { path: String, target: String },
}

/// Selects the release's files under `config.root`, sorted bytewise by path.
pub fn select_files(config: &Config) -> Result<Vec<SelectedFile>, Error> {
    select(config, false)
}

/// The files `tilebox dev` watches: [`select_files`] without editors' temporary files
/// ([`is_editor_temporary`]) and without broken symlinks (an Emacs lock `.#app.py` is one
/// while a buffer has unsaved changes), which come and go as the user types and are never
/// the project's content. A release still packs them (or refuses the broken symlink): what
/// it holds is what the globs say, so the same commit builds the same artifact everywhere.
pub fn select_watched_files(config: &Config) -> Result<Vec<SelectedFile>, Error> {
    select(config, true)
}

/// Whether `name` (a file name, not a path) is a temporary file an editor writes next to
/// the file it edits: Emacs locks (`.#*`), auto-saves (`#*#`) and backups (`*~`), Vim swap
/// files (`*.swp`, `*.swo`, `.*.sw?`) and its write probe `4913`, JetBrains' safe-write
/// copies (`*___jb_tmp___`, `*___jb_old___`).
pub fn is_editor_temporary(name: &str) -> bool {
    let vim_swap = name.starts_with('.')
        && name.len() > 4
        && name
            .get(..name.len() - 1)
            .is_some_and(|stem| stem.ends_with(".sw"));
    name.starts_with(".#")
        || (name.len() > 1 && name.starts_with('#') && name.ends_with('#'))
        || name.ends_with('~')
        || name.ends_with(".swp")
        || name.ends_with(".swo")
        || vim_swap
        || name == "4913"
        || name.ends_with("___jb_tmp___")
        || name.ends_with("___jb_old___")
}

/// [`select_files`]; `watch` leaves out what [`select_watched_files`] leaves out.
fn select(config: &Config, watch: bool) -> Result<Vec<SelectedFile>, Error> {
    let root = fs_err::canonicalize(&config.root).map_err(|source| Error::Read {
        path: config.root.clone(),
        source,
    })?;
    let include = glob_set(&config.include)?;
    let exclude = glob_set(&config.exclude)?;
    let artifact = format!("{}.tar.zst", config.slug);
    // What an interrupted build may have left behind (see `build::partial_archive_path`).
    let partial = format!("{artifact}.partial");

    let mut walker = ignore::WalkBuilder::new(&root);
    walker
        .standard_filters(false)
        .follow_links(false)
        .git_ignore(config.use_gitignore)
        .git_exclude(false);
    if config.use_gitignore {
        // Inside a repository the crate follows git (ignore files from the repository's top
        // down); outside one, only the root's own `.gitignore` files count.
        let in_repository = root
            .ancestors()
            .any(|directory| directory.join(".git").exists());
        walker.parents(in_repository).require_git(in_repository);
    }
    let filter_root = root.clone();
    let filter_exclude = exclude.clone();
    walker.filter_entry(move |entry| {
        // Prune excluded directories (and drop excluded files) before reading them.
        let Ok(relative) = entry.path().strip_prefix(&filter_root) else {
            return true;
        };
        let name = relative.file_name().and_then(|name| name.to_str());
        !(name.is_some_and(|name| ALWAYS_EXCLUDED.contains(&name))
            || filter_exclude.is_match(relative))
    });

    let mut selected = Vec::new();
    let mut links = Vec::new();
    for entry in walker.build() {
        let entry = entry.map_err(|source| Error::Walk {
            path: error_path(&source).unwrap_or(&root).to_path_buf(),
            source,
        })?;
        if entry.depth() == 0 {
            continue;
        }
        let relative = entry
            .path()
            .strip_prefix(&root)
            .expect("the walk yields paths under its root");
        let Some(path) = release_path(relative) else {
            return Err(Error::NotUtf8 {
                path: entry.path().to_path_buf(),
            });
        };
        let file_type = entry.file_type().expect("only stdin has no file type");
        if file_type.is_dir()
            || path == artifact
            || path == partial
            || !matches_here_or_above(&include, &path)
        {
            continue;
        }
        if watch
            && relative
                .file_name()
                .and_then(|name| name.to_str())
                .is_some_and(is_editor_temporary)
        {
            continue;
        }
        if file_type.is_symlink() {
            links.push(path);
        } else if file_type.is_file() {
            let metadata = entry.metadata().map_err(|source| Error::Walk {
                path: entry.path().to_path_buf(),
                source,
            })?;
            let executable = is_executable(&metadata);
            selected.push(SelectedFile {
                path,
                kind: FileKind::File { executable },
            });
        } else {
            return Err(Error::Unsupported { path });
        }
    }

    let files: BTreeSet<&str> = selected.iter().map(|file| file.path.as_str()).collect();
    let mut symlinks = Vec::new();
    for path in links {
        let target = match link_target(&root, &path, &files) {
            Ok(target) => target,
            Err(Error::BrokenSymlink { .. }) if watch => continue,
            Err(error) => return Err(error),
        };
        symlinks.push(SelectedFile {
            path,
            kind: FileKind::Symlink { target },
        });
    }
    selected.extend(symlinks);
    selected.sort_by(|left, right| left.path.cmp(&right.path));
    Ok(selected)
}

fn glob_set(patterns: &[String]) -> Result<GlobSet, Error> {
    let mut builder = GlobSetBuilder::new();
    for pattern in patterns {
        let normalized = pattern.trim_start_matches("./").trim_end_matches('/');
        let glob = GlobBuilder::new(normalized)
            .literal_separator(true)
            .build()
            .map_err(|source| Error::Glob {
                pattern: pattern.clone(),
                source,
            })?;
        builder.add(glob);
    }
    builder.build().map_err(|source| Error::Glob {
        pattern: patterns.join(", "),
        source,
    })
}

/// Whether `path` or one of its parent directories matches.
fn matches_here_or_above(globs: &GlobSet, path: &str) -> bool {
    let mut prefix = path;
    loop {
        if globs.is_match(prefix) {
            return true;
        }
        match prefix.rfind('/') {
            Some(slash) => prefix = &prefix[..slash],
            None => return false,
        }
    }
}

/// A relative path as a `/`-separated UTF-8 string.
fn release_path(relative: &Path) -> Option<String> {
    let parts: Option<Vec<&str>> = relative
        .components()
        .map(|component| component.as_os_str().to_str())
        .collect();
    Some(parts?.join("/"))
}

#[cfg(unix)]
fn is_executable(metadata: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    metadata.permissions().mode() & 0o111 != 0
}

#[cfg(not(unix))]
fn is_executable(_metadata: &std::fs::Metadata) -> bool {
    false
}

/// The path of the file or ignore file a walk error is about.
fn error_path(error: &ignore::Error) -> Option<&Path> {
    match error {
        ignore::Error::WithPath { path, .. } => Some(path),
        ignore::Error::WithLineNumber { err, .. } | ignore::Error::WithDepth { err, .. } => {
            error_path(err)
        }
        ignore::Error::Partial(errors) => errors.iter().find_map(error_path),
        ignore::Error::Loop { child, .. } => Some(child),
        _ => None,
    }
}

/// Checks the symlink at `path` and returns its target relative to the link's directory.
fn link_target(root: &Path, path: &str, files: &BTreeSet<&str>) -> Result<String, Error> {
    let resolved =
        fs_err::canonicalize(root.join(path)).map_err(|source| Error::BrokenSymlink {
            path: path.to_string(),
            source,
        })?;
    let Ok(relative) = resolved.strip_prefix(root) else {
        return Err(Error::SymlinkLeavesRoot {
            path: path.to_string(),
            target: resolved,
        });
    };
    if resolved.is_dir() {
        return Err(Error::SymlinkToDirectory {
            path: path.to_string(),
        });
    }
    let Some(target) = release_path(relative) else {
        return Err(Error::NotUtf8 { path: resolved });
    };
    if !files.contains(target.as_str()) {
        return Err(Error::SymlinkTargetNotSelected {
            path: path.to_string(),
            target,
        });
    }
    Ok(relative_to_link(path, &target))
}

/// `target` (relative to the root) as seen from the directory of the link at `link`.
fn relative_to_link(link: &str, target: &str) -> String {
    let directory: Vec<&str> = link.split('/').collect::<Vec<_>>();
    let directory = &directory[..directory.len() - 1];
    let target: Vec<&str> = target.split('/').collect();
    let common = directory
        .iter()
        .zip(&target)
        .take_while(|(left, right)| left == right)
        .count();
    let mut parts = vec![".."; directory.len() - common];
    parts.extend(&target[common..]);
    parts.join("/")
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::release::config::Entry;

    /// Writes `files` (path → content) under `root`, creating directories.
    pub(crate) fn write_tree(root: &Path, files: &[(&str, &str)]) {
        for (path, content) in files {
            let path = root.join(path);
            fs_err::create_dir_all(path.parent().unwrap()).unwrap();
            fs_err::write(path, content).unwrap();
        }
    }

    pub(crate) fn config(root: &Path, include: &[&str], exclude: &[&str]) -> Config {
        Config {
            path: root.join("tilebox.workflow.toml"),
            slug: "demo".into(),
            root: root.to_path_buf(),
            entry: Entry::Runner("demo:runner".into()),
            include: include.iter().map(|glob| glob.to_string()).collect(),
            exclude: exclude.iter().map(|glob| glob.to_string()).collect(),
            use_gitignore: true,
            targets: BTreeMap::new(),
        }
    }

    fn paths(config: &Config) -> Vec<String> {
        select_files(config)
            .unwrap()
            .into_iter()
            .map(|file| file.path)
            .collect()
    }

    #[test]
    fn include_and_exclude_globs_select_sorted_paths() {
        let directory = tempfile::tempdir().unwrap();
        write_tree(
            directory.path(),
            &[
                ("pyproject.toml", ""),
                ("README.md", ""),
                ("demo/b.py", ""),
                ("demo/a.py", ""),
                ("demo/sub/c.py", ""),
                ("demo/__pycache__/a.cpython-313.pyc", ""),
                ("demo/notes.txt", ""),
                ("build/out.py", ""),
                ("top.py", ""),
            ],
        );
        let selected = paths(&config(
            directory.path(),
            &["pyproject.toml", "demo/**", "**/*.py"],
            &["**/__pycache__", "demo/*.txt", "build"],
        ));
        assert_eq!(
            selected,
            [
                "demo/a.py",
                "demo/b.py",
                "demo/sub/c.py",
                "pyproject.toml",
                "top.py"
            ]
        );
        // `*` stays within one component; a directory glob takes everything under it.
        assert_eq!(paths(&config(directory.path(), &["*.py"], &[])), ["top.py"]);
        assert_eq!(
            paths(&config(directory.path(), &["demo/sub"], &[])),
            ["demo/sub/c.py"]
        );
    }

    #[test]
    fn gitignore_files_apply_at_every_level_in_and_outside_a_repository() {
        for in_repository in [false, true] {
            let directory = tempfile::tempdir().unwrap();
            let root = directory.path();
            write_tree(
                root,
                &[
                    (".gitignore", "*.log\n/generated/\n"),
                    ("app.py", ""),
                    ("debug.log", ""),
                    ("generated/x.py", ""),
                    ("pkg/.gitignore", "secret.py\n!keep.log\n"),
                    ("pkg/secret.py", ""),
                    ("pkg/keep.log", ""),
                    ("pkg/mod.py", ""),
                    ("pkg/deep/secret.py", ""),
                    ("local.py", ""),
                ],
            );
            if in_repository {
                write_tree(
                    root,
                    &[(".git/info/exclude", "local.py\n"), (".git/HEAD", "")],
                );
            }
            let selected = paths(&config(root, &["**"], &[]));
            // `.git/info/exclude` is the clone's, not the commit's: it does not count.
            let expected = [
                ".gitignore",
                "app.py",
                "local.py",
                "pkg/.gitignore",
                "pkg/keep.log",
                "pkg/mod.py",
            ];
            assert_eq!(selected, expected, "in a repository: {in_repository}");

            let mut everything = config(root, &["**"], &[]);
            everything.use_gitignore = false;
            assert_eq!(
                paths(&everything).len(),
                10,
                "in a repository: {in_repository}"
            );
        }
    }

    /// Runs git in `directory` with no user or system configuration.
    fn git(directory: &Path, arguments: &[&str]) {
        let output = std::process::Command::new("git")
            .current_dir(directory)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .args([
                "-c",
                "user.name=tilebox",
                "-c",
                "user.email=tilebox@example.invalid",
            ])
            .args(["-c", "init.defaultBranch=main"])
            .args(arguments)
            .output()
            .expect("git runs");
        assert!(
            output.status.success(),
            "git {arguments:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    #[test]
    fn clones_of_one_commit_build_the_same_archive_whatever_their_info_exclude() {
        let base = tempfile::tempdir().unwrap();
        let origin = base.path().join("origin");
        write_tree(
            &origin,
            &[
                (".gitignore", "*.log\n"),
                ("app.py", "print('app')\n"),
                ("local.py", "print('local')\n"),
                ("pkg/.gitignore", "generated.py\n"),
                ("pkg/mod.py", "print('mod')\n"),
            ],
        );
        git(&origin, &["init", "--quiet"]);
        git(&origin, &["add", "."]);
        git(&origin, &["commit", "--quiet", "--message", "the project"]);

        let mut archives = Vec::new();
        for (name, exclude) in [("one", ""), ("two", "local.py\npkg/\n*.py\n")] {
            let clone = base.path().join(name);
            git(
                base.path(),
                &["clone", "--quiet", origin.to_str().unwrap(), name],
            );
            fs_err::write(clone.join(".git/info/exclude"), exclude).unwrap();
            // Files the commit's `.gitignore` files leave out, in both clones.
            write_tree(&clone, &[("debug.log", ""), ("pkg/generated.py", "")]);
            let files = select_files(&config(&clone, &["**"], &[])).unwrap();
            let out = base.path().join(format!("{name}.tar.zst"));
            archives.push(crate::release::archive::write_archive(&clone, &files, &out).unwrap());
        }
        assert_eq!(
            archives[0].files,
            [
                ".gitignore",
                "app.py",
                "local.py",
                "pkg/.gitignore",
                "pkg/mod.py"
            ]
        );
        assert_eq!(archives[0].files, archives[1].files);
        assert_eq!(archives[0].sha256, archives[1].sha256);
        assert_eq!(archives[0].fingerprint, archives[1].fingerprint);
    }

    #[test]
    fn a_parent_repository_gitignore_applies_to_a_nested_root() {
        let directory = tempfile::tempdir().unwrap();
        write_tree(
            directory.path(),
            &[
                (".git/HEAD", ""),
                (".gitignore", "*.secret\n"),
                ("workflow/app.py", ""),
                ("workflow/key.secret", ""),
            ],
        );
        let root = directory.path().join("workflow");
        assert_eq!(paths(&config(&root, &["**"], &[])), ["app.py"]);
    }

    #[test]
    fn hidden_files_are_selected_only_when_a_glob_matches() {
        let directory = tempfile::tempdir().unwrap();
        write_tree(
            directory.path(),
            &[
                (".env.example", ""),
                ("pkg/.config/settings.toml", ""),
                ("pkg/main.py", ""),
            ],
        );
        assert_eq!(
            paths(&config(directory.path(), &["pkg/**", ".env.example"], &[])),
            [".env.example", "pkg/.config/settings.toml", "pkg/main.py"]
        );
        assert_eq!(
            paths(&config(directory.path(), &["pkg/*.py"], &[])),
            ["pkg/main.py"]
        );
    }

    #[test]
    fn the_artifact_git_venv_and_dev_data_are_always_excluded() {
        let directory = tempfile::tempdir().unwrap();
        write_tree(
            directory.path(),
            &[
                ("demo.tar.zst", "old artifact"),
                ("other.tar.zst", ""),
                (".venv/lib/site.py", ""),
                ("pkg/.venv/lib/site.py", ""),
                (".git/config", ""),
                (".tilebox/data/tilebox.db", ""),
                ("main.py", ""),
            ],
        );
        assert_eq!(
            paths(&config(directory.path(), &["**"], &[])),
            ["main.py", "other.tar.zst"]
        );
    }

    #[cfg(unix)]
    #[test]
    fn symlinks_inside_the_root_are_kept_and_others_are_errors() {
        use std::os::unix::fs::PermissionsExt;

        use fs_err::os::unix::fs::symlink;

        let outside = tempfile::tempdir().unwrap();
        write_tree(outside.path(), &[("secret.txt", "")]);
        let directory = tempfile::tempdir().unwrap();
        let root = directory.path();
        write_tree(root, &[("data/table.csv", ""), ("bin/run.sh", "")]);
        fs_err::set_permissions(root.join("bin/run.sh"), PermissionsExt::from_mode(0o750)).unwrap();
        symlink("../data/table.csv", root.join("bin/table.csv")).unwrap();
        symlink("data/./table.csv", root.join("table.csv")).unwrap();
        let selected = select_files(&config(root, &["**"], &[])).unwrap();
        assert_eq!(
            selected,
            [
                SelectedFile {
                    path: "bin/run.sh".into(),
                    kind: FileKind::File { executable: true }
                },
                SelectedFile {
                    path: "bin/table.csv".into(),
                    kind: FileKind::Symlink {
                        target: "../data/table.csv".into()
                    }
                },
                SelectedFile {
                    path: "data/table.csv".into(),
                    kind: FileKind::File { executable: false }
                },
                SelectedFile {
                    path: "table.csv".into(),
                    kind: FileKind::Symlink {
                        target: "data/table.csv".into()
                    }
                },
            ]
        );

        let error = |link: &str, target: &Path, include: &[&str]| {
            let directory = tempfile::tempdir().unwrap();
            write_tree(directory.path(), &[("data/table.csv", "")]);
            symlink(target, directory.path().join(link)).unwrap();
            select_files(&config(directory.path(), include, &[]))
                .unwrap_err()
                .to_string()
        };
        let leaving = error("leak.txt", &outside.path().join("secret.txt"), &["**"]);
        assert!(
            leaving.starts_with("symlink `leak.txt` points to ")
                && leaving.ends_with("outside the project root"),
            "{leaving}"
        );
        let leaving_relative = error(
            "up.txt",
            Path::new("../../../../../../etc/hostname"),
            &["**"],
        );
        assert!(leaving_relative.contains("`up.txt`"), "{leaving_relative}");
        let directory_link = error("data-link", Path::new("data"), &["**"]);
        assert_eq!(
            directory_link,
            "symlink `data-link` points to a directory; include the directory's files instead"
        );
        let broken = error("broken", Path::new("missing.txt"), &["**"]);
        assert_eq!(broken, "symlink `broken` cannot be resolved");
        let unselected = error("table-link", Path::new("data/table.csv"), &["table-link"]);
        assert_eq!(
            unselected,
            "symlink `table-link` points to `data/table.csv`, which is not part of the release"
        );
        // A symlink no glob selects is no error.
        let directory = tempfile::tempdir().unwrap();
        write_tree(directory.path(), &[("main.py", "")]);
        symlink(outside.path(), directory.path().join("elsewhere")).unwrap();
        assert_eq!(
            paths(&config(directory.path(), &["*.py"], &[])),
            ["main.py"]
        );
    }

    #[test]
    fn the_watch_leaves_out_editor_temporaries_and_broken_symlinks_a_release_keeps() {
        use fs_err::os::unix::fs::symlink;

        let directory = tempfile::tempdir().unwrap();
        let root = directory.path();
        let temporaries = [
            ".app.py.swp",
            ".app.py.swx",
            "app.py.swo",
            "app.py~",
            "#app.py#",
            "pkg/4913",
            "pkg/mod.py___jb_tmp___",
        ];
        let mut tree = vec![("app.py", ""), ("pkg/mod.py", ""), (".env.example", "")];
        tree.extend(temporaries.iter().map(|path| (*path, "")));
        write_tree(root, &tree);
        // An Emacs lock: a symlink to `user@host.pid:time`, which does not exist.
        symlink("ada@laptop.4242:1700000000", root.join(".#app.py")).unwrap();
        let configuration = config(root, &["**"], &[]);
        let watched: Vec<String> = select_watched_files(&configuration)
            .unwrap()
            .into_iter()
            .map(|file| file.path)
            .collect();
        assert_eq!(watched, [".env.example", "app.py", "pkg/mod.py"]);
        // The release is unchanged: the temporaries are packed, the broken lock refused.
        let error = select_files(&configuration).unwrap_err().to_string();
        assert_eq!(error, "symlink `.#app.py` cannot be resolved");
        fs_err::remove_file(root.join(".#app.py")).unwrap();
        let released = paths(&configuration);
        for temporary in temporaries {
            assert!(
                released.iter().any(|path| path == temporary),
                "{released:?}"
            );
        }
        for name in [
            "app.py",
            ".env",
            "notes.swap",
            "4914",
            ".sw",
            "#",
            "data.sw",
        ] {
            assert!(!is_editor_temporary(name), "{name}");
        }
    }

    #[test]
    fn an_invalid_glob_is_named() {
        let directory = tempfile::tempdir().unwrap();
        let error = select_files(&config(directory.path(), &["src/[a"], &[])).unwrap_err();
        assert_eq!(error.to_string(), "invalid glob `src/[a`");
    }

    #[test]
    fn link_targets_are_relative_to_the_link() {
        assert_eq!(relative_to_link("a.txt", "b/c.txt"), "b/c.txt");
        assert_eq!(relative_to_link("x/y/l", "x/z/t"), "../z/t");
        assert_eq!(relative_to_link("x/l", "t"), "../t");
        assert_eq!(relative_to_link("x/l", "x/t"), "t");
    }
}
