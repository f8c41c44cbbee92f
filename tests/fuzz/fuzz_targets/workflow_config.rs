//! Arbitrary text as `tilebox.workflow.toml`: every refusal names a real position, and an
//! accepted configuration never points outside its project.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use tilebox::release::config::{self, Error};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("/fuzz/project/tilebox.workflow.toml");
    match config::parse(path, text) {
        Ok(config) => {
            assert!(config.root.starts_with("/fuzz/project"), "{config:?}");
            assert!(!config.include.is_empty());
            assert!(!config.slug.is_empty());
        }
        Err(Error::Invalid {
            line,
            column,
            message,
            ..
        }) => {
            let lines = text.split('\n').count();
            assert!(
                line >= 1 && line <= lines,
                "line {line} of {lines}: {message}"
            );
            let width = text
                .split('\n')
                .nth(line - 1)
                .map_or(0, |line| line.chars().count());
            assert!(
                column >= 1 && column <= width + 1,
                "column {column} of {width}: {message}"
            );
            assert!(!message.is_empty());
        }
        Err(other) => panic!("parse only reports positions: {other}"),
    }
});
