//! What the binary tells a shell about itself: `tilebox --version` (the crate version and the
//! git commit it was built from) and `tilebox completions bash|zsh|fish`.

use crate::common::{stderr_of, tilebox};

#[test]
fn version_names_the_crate_version_and_the_commit() {
    let output = tilebox(&["--version"]);
    assert!(output.status.success(), "{}", stderr_of(&output));
    let text = String::from_utf8(output.stdout).expect("utf-8 version");
    let expected_start = format!("tilebox {} (commit ", env!("CARGO_PKG_VERSION"));
    assert!(text.starts_with(&expected_start), "{text:?}");
    let commit = text[expected_start.len()..]
        .trim_end()
        .strip_suffix(')')
        .unwrap_or_else(|| panic!("no closing parenthesis in {text:?}"));
    let hash = commit.strip_suffix("-dirty").unwrap_or(commit);
    // The tests run from the crate's git work tree, so the commit is known here; `unknown`
    // is only for builds outside git.
    assert!(
        hash.len() >= 7 && hash.chars().all(|character| character.is_ascii_hexdigit()),
        "not a short commit hash: {commit:?} in {text:?}"
    );
    let head = std::process::Command::new("git")
        .args(["-C", env!("CARGO_MANIFEST_DIR"), "rev-parse", "HEAD"])
        .output()
        .expect("git runs");
    let head = String::from_utf8_lossy(&head.stdout);
    assert!(
        head.starts_with(hash),
        "the binary's commit {hash} is not HEAD {head}"
    );
}

#[test]
fn completions_are_printed_for_each_shell() {
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef tilebox"),
        ("fish", "complete -c tilebox"),
    ] {
        let output = tilebox(&["completions", shell]);
        assert!(output.status.success(), "{shell}: {}", stderr_of(&output));
        let script = String::from_utf8(output.stdout).expect("utf-8 script");
        assert!(script.contains(marker), "{shell} script lacks {marker:?}");
        for subcommand in ["server", "job", "workflow", "runner", "completions"] {
            assert!(
                script.contains(subcommand),
                "{shell} script does not mention `{subcommand}`"
            );
        }
        // The subcommands of a family, too: `tilebox job <TAB>` offers `submit`.
        assert!(script.contains("submit"), "{shell} script lacks `submit`");
        // Global options, and no hidden command.
        assert!(
            script.contains("api-url"),
            "{shell} script lacks `--api-url`"
        );
        assert!(
            !script.contains("python-host"),
            "{shell} script offers the hidden `python-host`"
        );
    }
    let unknown = tilebox(&["completions", "tcsh"]);
    assert_eq!(unknown.status.code(), Some(2), "{}", stderr_of(&unknown));
    assert!(stderr_of(&unknown).contains("tcsh"));
}

#[test]
fn a_completion_script_piped_into_a_reader_that_stops_early_ends_quietly() {
    // The bash script is over 100 KB, more than a pipe holds, so the write meets the closed
    // pipe once `head` has gone.
    let output = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "set -o pipefail; '{}' completions bash | head -c 10 >/dev/null",
            crate::common::tilebox_binary().display()
        ))
        .output()
        .expect("bash runs");
    let stderr = stderr_of(&output);
    assert!(stderr.is_empty(), "{stderr}");
    assert!(output.status.success(), "{:?}", output.status);
}
