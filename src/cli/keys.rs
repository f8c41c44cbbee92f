//! `tilebox server keys`: creates, lists, rotates and revokes the scoped API keys of a keys
//! file. A running server picks the change up within a second or so, without a restart.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::{UserError, output};
use crate::server::keys::{self, Key, Scope};

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key and print its secret (shown this once; the file keeps only its hash).
    Create(CreateArgs),
    /// List the keys: name, scope, clusters, creation time (never secrets).
    List(FileArgs),
    /// Give a key a new secret, keeping its name, scope and clusters; the old one stops
    /// working.
    Rotate(NameArgs),
    /// Remove a key; the server refuses it from its next reading of the file.
    Revoke(NameArgs),
}

#[derive(Debug, Args)]
pub struct FileArgs {
    /// The keys file (JSON), the one the server reads.
    #[arg(long, env = crate::env::SERVER_KEYS_FILE)]
    keys_file: PathBuf,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    #[command(flatten)]
    file: FileArgs,
    /// The key's name (letters, digits, `-`, `_`, `.`), unique in the file.
    #[arg(long)]
    name: String,
    /// What the key may do.
    #[arg(long, value_enum)]
    scope: Scope,
    /// For runner keys: a cluster slug it may serve (repeatable; `*` for every cluster).
    #[arg(long = "cluster")]
    clusters: Vec<String>,
}

#[derive(Debug, Args)]
pub struct NameArgs {
    #[command(flatten)]
    file: FileArgs,
    /// The key's name.
    #[arg(long)]
    name: String,
}

fn user_error(error: keys::Error) -> UserError {
    let hint = match &error {
        keys::Error::RunnerWithoutClusters { .. } => {
            Some("add --cluster SLUG (repeatable), or --cluster '*' for every cluster")
        }
        keys::Error::NotFound { .. } => Some("`tilebox server keys list` shows the keys"),
        _ => None,
    };
    UserError::caused_by(error, hint)
}

fn key_json(key: &Key) -> Value {
    json!({
        "name": key.name,
        "scope": key.scope.to_string(),
        "clusters": key.clusters,
        "created_at": key.created_at,
    })
}

pub fn run(command: KeysCommand, json: bool) -> anyhow::Result<ExitCode> {
    match command {
        KeysCommand::Create(arguments) => {
            let (key, secret) = keys::create(
                &arguments.file.keys_file,
                &arguments.name,
                arguments.scope,
                arguments.clusters,
            )
            .map_err(user_error)?;
            print_secret(&key, &secret, json)?;
        }
        KeysCommand::Rotate(arguments) => {
            let (key, secret) =
                keys::rotate(&arguments.file.keys_file, &arguments.name).map_err(user_error)?;
            print_secret(&key, &secret, json)?;
        }
        KeysCommand::List(arguments) => {
            let file = keys::load_or_empty(&arguments.keys_file).map_err(user_error)?;
            if json {
                output::print_json(&Value::Array(file.keys.iter().map(key_json).collect()))?;
            } else {
                let mut table = output::Table::new(&["NAME", "SCOPE", "CLUSTERS", "CREATED"]);
                for key in &file.keys {
                    table.push(vec![
                        key.name.clone(),
                        key.scope.to_string(),
                        key.clusters.join(","),
                        key.created_at.clone(),
                    ]);
                }
                output::print_text(&table.render())?;
            }
        }
        KeysCommand::Revoke(arguments) => {
            let key =
                keys::revoke(&arguments.file.keys_file, &arguments.name).map_err(user_error)?;
            if json {
                output::print_json(&json!({ "name": key.name, "revoked": true }))?;
            } else {
                output::print_text(&format!("revoked key `{}`", key.name))?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_secret(key: &Key, secret: &str, json: bool) -> anyhow::Result<()> {
    if json {
        let mut document = key_json(key);
        document["secret"] = Value::String(secret.to_string());
        return output::print_json(&document);
    }
    output::print_text(secret)?;
    eprintln!(
        "key `{}` ({}) saved; the secret above is shown only now: give it to the client as TILEBOX_API_KEY",
        key.name, key.scope
    );
    Ok(())
}
