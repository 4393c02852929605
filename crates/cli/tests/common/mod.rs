//! Shared by the CLI tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use jina_engine::fixture::{write_fixture, FixtureShape};

/// The small formula checkpoint in `target/tmp/<name>`. The target folder is shared (other test
/// runs may write the same folder at the same time), so the files are generated in a private
/// folder and renamed into place: a reader always sees complete files (the content is the same
/// formula every time).
pub fn small_fixture(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let staging = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("{name}.staging-{}", std::process::id()));
    write_fixture(&staging, FixtureShape::SMALL, 1).expect("write the small fixture");
    std::fs::create_dir_all(&dir).expect("create the fixture folder");
    for file in std::fs::read_dir(&staging).expect("list the staging folder") {
        let file = file.expect("entry");
        std::fs::rename(file.path(), dir.join(file.file_name()))
            .expect("move a fixture file into place");
    }
    let _ = std::fs::remove_dir_all(&staging);
    dir
}
