//! A keys file in its own temp dir, written by the real `tilebox server keys` commands.

use std::path::PathBuf;

use super::{json_of, tilebox};

/// A keys file (`--keys-file`) in a temp dir that lives as long as this.
pub struct KeysFile {
    _directory: tempfile::TempDir,
    path: PathBuf,
}

impl KeysFile {
    pub fn new() -> Self {
        let directory = tempfile::tempdir().expect("temp dir");
        let path = directory.path().join("keys.json");
        Self {
            _directory: directory,
            path,
        }
    }

    /// The file, for `--keys-file`.
    pub fn path(&self) -> &str {
        self.path.to_str().expect("utf-8 temp path")
    }

    /// `tilebox server keys create` (runner keys serve `clusters`); returns the secret.
    pub fn create(&self, name: &str, scope: &str, clusters: &[&str]) -> String {
        let mut args = vec![
            "server",
            "keys",
            "create",
            "--json",
            "--keys-file",
            self.path(),
            "--name",
            name,
            "--scope",
            scope,
        ];
        for cluster in clusters {
            args.extend(["--cluster", cluster]);
        }
        let document = json_of(&tilebox(&args));
        assert_eq!(document["name"], name, "{document}");
        assert_eq!(document["scope"], scope, "{document}");
        document["secret"]
            .as_str()
            .expect("the secret is printed")
            .to_string()
    }

    /// `tilebox server keys COMMAND --name NAME` (`revoke`, `rotate`), its JSON answer.
    pub fn run(&self, command: &str, name: &str) -> serde_json::Value {
        json_of(&tilebox(&[
            "server",
            "keys",
            command,
            "--json",
            "--keys-file",
            self.path(),
            "--name",
            name,
        ]))
    }

    /// `tilebox server keys revoke`, checked.
    pub fn revoke(&self, name: &str) {
        let revoked = self.run("revoke", name);
        assert_eq!(revoked["revoked"], true, "{revoked}");
    }

    /// `tilebox server keys list`, its JSON answer.
    pub fn list(&self) -> serde_json::Value {
        json_of(&tilebox(&[
            "server",
            "keys",
            "list",
            "--json",
            "--keys-file",
            self.path(),
        ]))
    }
}
