//! `tilebox`: a self-hostable Tilebox workflows stack in one binary.
//!
//! The command tree lives in `cli`; this file only parses arguments, runs the command and
//! maps its outcome to an exit code (0 ok, 1 user or input error, 2 internal error).

use std::process::ExitCode;

use clap::Parser;
use tilebox::cli;

fn main() -> ExitCode {
    let arguments = cli::Cli::parse();
    match cli::run(arguments) {
        Ok(code) => code,
        Err(error) => {
            let code = cli::exit_code_of(&error);
            eprintln!("error: {error:#}");
            if let Some(hint) = cli::hint_of(&error) {
                eprintln!("hint: {hint}");
            }
            code
        }
    }
}
