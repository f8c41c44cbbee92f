//! `tilebox.workflow.toml`: found by searching upward from a directory; unknown keys and
//! invalid values are errors that name the file, line and column.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

/// The project configuration's file name.
pub const FILE_NAME: &str = "tilebox.workflow.toml";
/// Longest workflow slug accepted (the API's limit).
const MAX_SLUG_LENGTH: usize = 100;

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no {FILE_NAME} in {start} or any parent directory")]
    NotFound { start: PathBuf },
    /// The file could not be read; the error (from `fs_err`) names the file and the cause.
    #[error(transparent)]
    Read(std::io::Error),
    #[error("{path}:{line}:{column}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    workflow: Option<Spanned<RawWorkflow>>,
    build: Option<Spanned<RawBuild>>,
    #[serde(default)]
    targets: BTreeMap<String, RawTarget>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorkflow {
    slug: Option<Spanned<String>>,
    root: Option<Spanned<String>>,
    runner: Option<Spanned<String>>,
    command: Option<Spanned<Vec<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBuild {
    include: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    exclude: Vec<String>,
    use_gitignore: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    #[serde(default)]
    clusters: Vec<String>,
}

/// How the release's worker is started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A `module:object` runner object.
    Runner(String),
    /// A custom worker command.
    Command(Vec<String>),
}

/// A valid project configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The file it came from.
    pub path: PathBuf,
    pub slug: String,
    /// The project root, absolute.
    pub root: PathBuf,
    pub entry: Entry,
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    pub use_gitignore: bool,
    /// Named groups of clusters.
    pub targets: BTreeMap<String, Vec<String>>,
}

/// Finds `tilebox.workflow.toml` in `start` or the nearest parent that has one.
pub fn find(start: &Path) -> Result<PathBuf, Error> {
    let absolute = std::path::absolute(start).unwrap_or_else(|_| start.to_path_buf());
    for directory in absolute.ancestors() {
        let candidate = directory.join(FILE_NAME);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err(Error::NotFound { start: absolute })
}

/// Reads and validates a configuration file.
pub fn load(path: &Path) -> Result<Config, Error> {
    let text = fs_err::read_to_string(path).map_err(Error::Read)?;
    parse(path, &text)
}

/// 1-based (line, column) of a byte offset.
fn position(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit('\n')
        .next()
        .map_or(0, |last| last.chars().count())
        + 1;
    (line, column)
}

/// Validates configuration text; `path` is used for messages and to resolve the root.
pub fn parse(path: &Path, text: &str) -> Result<Config, Error> {
    let invalid = |span: Range<usize>, message: String| {
        let (line, column) = position(text, span.start);
        Error::Invalid {
            path: path.to_path_buf(),
            line,
            column,
            message,
        }
    };
    let raw: RawConfig = toml::from_str(text).map_err(|error| {
        let span = error.span().unwrap_or(0..0);
        invalid(span, error.message().trim().to_string())
    })?;
    let Some(workflow) = raw.workflow else {
        return Err(invalid(0..0, "missing the [workflow] table".into()));
    };
    let workflow_span = workflow.span();
    let workflow = workflow.into_inner();
    let slug = workflow
        .slug
        .ok_or_else(|| invalid(workflow_span.clone(), "[workflow] needs a `slug`".into()))?;
    let slug_valid = !slug.get_ref().is_empty()
        && slug.get_ref().len() <= MAX_SLUG_LENGTH
        && slug
            .get_ref()
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-');
    if !slug_valid {
        return Err(invalid(
            slug.span(),
            format!(
                "invalid slug `{}`: use 1 to {MAX_SLUG_LENGTH} letters, digits and dashes",
                slug.get_ref()
            ),
        ));
    }
    let entry = match (workflow.runner, workflow.command) {
        (Some(_), Some(command)) => {
            return Err(invalid(
                command.span(),
                "set exactly one of `runner` and `command`, not both".into(),
            ));
        }
        (None, None) => {
            return Err(invalid(
                workflow_span,
                "[workflow] needs `runner = \"module:object\"` or `command = [...]`".into(),
            ));
        }
        (Some(runner), None) => {
            let valid = runner
                .get_ref()
                .split_once(':')
                .is_some_and(|(module, object)| !module.is_empty() && !object.is_empty());
            if !valid {
                return Err(invalid(
                    runner.span(),
                    format!(
                        "invalid runner `{}`: expected `module:object`",
                        runner.get_ref()
                    ),
                ));
            }
            Entry::Runner(runner.into_inner())
        }
        (None, Some(command)) => {
            if command.get_ref().is_empty() {
                return Err(invalid(
                    command.span(),
                    "`command` must not be empty".into(),
                ));
            }
            Entry::Command(command.into_inner())
        }
    };
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let base = std::path::absolute(&base).unwrap_or(base);
    let root = match &workflow.root {
        None => base.clone(),
        Some(root) => {
            inside(root.get_ref()).map_err(|message| {
                invalid(root.span(), format!("root `{}` {message}", root.get_ref()))
            })?;
            base.join(root.get_ref())
        }
    };
    let Some(build) = raw.build else {
        return Err(invalid(
            0..0,
            "missing the [build] table (with `include`)".into(),
        ));
    };
    let build_span = build.span();
    let build = build.into_inner();
    let include = build.include.ok_or_else(|| {
        invalid(
            build_span.clone(),
            "[build] needs `include`, a list of at least one glob".into(),
        )
    })?;
    if include.get_ref().is_empty() {
        return Err(invalid(
            include.span(),
            "`include` needs at least one glob".into(),
        ));
    }
    for pattern in include.get_ref().iter().chain(&build.exclude) {
        inside(pattern)
            .map_err(|message| invalid(include.span(), format!("pattern `{pattern}` {message}")))?;
    }
    Ok(Config {
        path: path.to_path_buf(),
        slug: slug.into_inner(),
        root,
        entry,
        include: include.into_inner(),
        exclude: build.exclude,
        use_gitignore: build.use_gitignore.unwrap_or(true),
        targets: raw
            .targets
            .into_iter()
            .map(|(name, target)| (name, target.clusters))
            .collect(),
    })
}

/// Checks a relative path or glob stays inside the root.
fn inside(path: &str) -> Result<(), &'static str> {
    let path = Path::new(path);
    if path.is_absolute() {
        return Err("must be relative to the project root");
    }
    let mut depth: i64 = 0;
    for component in path.components() {
        match component {
            Component::ParentDir => depth -= 1,
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => {
                return Err("must be relative to the project root");
            }
        }
        if depth < 0 {
            return Err("leaves the project root");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = r#"
[workflow]
slug = "my-workflow"
runner = "my_workflow.runner:runner"

[build]
include = ["pyproject.toml", "uv.lock", "my_workflow/**"]
exclude = ["**/__pycache__/**"]

[targets.dev]
clusters = ["dev-cluster"]
"#;

    fn error_of(text: &str) -> String {
        parse(Path::new("/p/tilebox.workflow.toml"), text)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn a_valid_file_parses_with_defaults() {
        let config = parse(Path::new("/p/tilebox.workflow.toml"), VALID).unwrap();
        assert_eq!(config.slug, "my-workflow");
        assert_eq!(config.root, PathBuf::from("/p"));
        assert_eq!(
            config.entry,
            Entry::Runner("my_workflow.runner:runner".into())
        );
        assert!(config.use_gitignore);
        assert_eq!(config.targets["dev"], vec!["dev-cluster".to_string()]);
    }

    #[test]
    fn unknown_keys_are_errors_with_line_and_column() {
        let error = error_of(&VALID.replace("exclude", "excludes"));
        assert!(
            error.starts_with("/p/tilebox.workflow.toml:8:1: "),
            "{error}"
        );
        assert!(error.contains("excludes"), "{error}");
    }

    #[test]
    fn each_rule_is_checked_with_a_position() {
        let missing_slug = error_of(&VALID.replace("slug = \"my-workflow\"\n", ""));
        assert!(
            missing_slug.contains(":2:1: [workflow] needs a `slug`"),
            "{missing_slug}"
        );
        let both = error_of(&VALID.replace("runner = ", "command = [\"python\"]\nrunner = "));
        assert!(both.contains(":4:11: set exactly one"), "{both}");
        let neither = error_of(&VALID.replace("runner = \"my_workflow.runner:runner\"\n", ""));
        assert!(neither.contains("needs `runner"), "{neither}");
        let empty = error_of(&VALID.replace(
            "include = [\"pyproject.toml\", \"uv.lock\", \"my_workflow/**\"]",
            "include = []",
        ));
        assert!(
            empty.contains(":7:11: `include` needs at least one glob"),
            "{empty}"
        );
        let escaping = error_of(&VALID.replace("\"uv.lock\"", "\"../secrets\""));
        assert!(
            escaping.contains("pattern `../secrets` leaves the project root"),
            "{escaping}"
        );
        let root = error_of(&VALID.replace("runner = ", "root = \"/etc\"\nrunner = "));
        assert!(
            root.contains(":4:8: root `/etc` must be relative"),
            "{root}"
        );
        let bad_runner =
            error_of(&VALID.replace("my_workflow.runner:runner", "my_workflow.runner"));
        assert!(
            bad_runner.contains("expected `module:object`"),
            "{bad_runner}"
        );
        let malformed = error_of("[workflow\nslug = 1");
        assert!(
            malformed.starts_with("/p/tilebox.workflow.toml:1:"),
            "{malformed}"
        );
    }

    #[test]
    fn the_file_is_found_in_a_parent_directory() {
        let directory = tempfile::tempdir().unwrap();
        fs_err::write(directory.path().join(FILE_NAME), VALID).unwrap();
        let nested = directory.path().join("a/b");
        fs_err::create_dir_all(&nested).unwrap();
        assert_eq!(find(&nested).unwrap(), directory.path().join(FILE_NAME));
        let elsewhere = tempfile::tempdir().unwrap();
        assert!(matches!(
            find(elsewhere.path()),
            Err(Error::NotFound { .. })
        ));
    }
}

/// Longest slug `workflow_slug` derives.
pub const MAX_DERIVED_SLUG_LENGTH: usize = 40;

/// The slug of a workflow named `name`: lowercase ASCII words joined by dashes, cut to at
/// most 40 characters on a word boundary (`Scene QA!` -> `scene-qa`).
pub fn workflow_slug(name: &str) -> String {
    let mut slug = String::new();
    for word in name
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|word| !word.is_empty())
    {
        let word = word.to_ascii_lowercase();
        let extra = if slug.is_empty() {
            word.len()
        } else {
            word.len() + 1
        };
        if slug.len() + extra > MAX_DERIVED_SLUG_LENGTH {
            if slug.is_empty() {
                slug = word.chars().take(MAX_DERIVED_SLUG_LENGTH).collect();
            }
            break;
        }
        if !slug.is_empty() {
            slug.push('-');
        }
        slug.push_str(&word);
    }
    slug
}

#[cfg(test)]
mod slug_tests {
    use super::*;

    #[test]
    fn workflow_slugs_are_dashed_lowercase_words_of_at_most_40_characters() {
        assert_eq!(workflow_slug("Scene QA"), "scene-qa");
        assert_eq!(workflow_slug("  my_workflow v2!"), "my-workflow-v2");
        let long = workflow_slug("Sentinel two level one C atmospheric correction pipeline");
        assert_eq!(long, "sentinel-two-level-one-c-atmospheric");
        assert!(long.len() <= 40);
        assert_eq!(workflow_slug(&"x".repeat(50)).len(), 40);
        assert_eq!(workflow_slug("!!!"), "");
    }
}
