//! The venv with the official Python SDK that the interop tests run against.

use fs_err as fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

/// The official Python SDK release the interop tests run against.
pub const SDK_VERSION: &str = "0.66.0";
/// The Python version of the SDK venv.
pub const SDK_PYTHON_VERSION: &str = "3.13";

/// The Python interpreter of a venv with the official SDK (`tilebox-workflows==SDK_VERSION`).
///
/// Created once with `uv` under `target/tmp/interop-venv-<version>` and shared by all tests and
/// test runs. Concurrent test processes each build in a private directory and rename it into
/// place; the first rename wins and the others remove their copy, so a half-built venv is never
/// visible.
pub fn sdk_python() -> PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(create_sdk_venv).clone()
}

fn create_sdk_venv() -> PathBuf {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let venv = root.join(format!("interop-venv-{SDK_VERSION}"));
    let python = venv.join("bin").join("python");
    let ready = venv.join(".tilebox-interop-ready");
    if ready.exists() {
        return python;
    }
    assert!(
        !venv.exists(),
        "{} exists but is incomplete (no {}); delete it and run the tests again",
        venv.display(),
        ready.display()
    );

    let uv = find_uv();
    fs::create_dir_all(root).expect("cannot create CARGO_TARGET_TMPDIR");
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|time| time.as_nanos())
        .unwrap_or(0);
    let building = root.join(format!(
        "interop-venv-{SDK_VERSION}.building-{}-{nanos}",
        std::process::id()
    ));
    let cleanup = RemoveOnDrop(building.clone());

    run_uv(
        Command::new(&uv)
            .args(["venv", "--quiet", "--python", SDK_PYTHON_VERSION])
            .arg(&building),
        "create the SDK venv",
    );
    run_uv(
        Command::new(&uv)
            .args(["pip", "install", "--quiet", "--python"])
            .arg(building.join("bin").join("python"))
            .arg(format!("tilebox-workflows=={SDK_VERSION}")),
        "install the official SDK",
    );
    fs::write(building.join(".tilebox-interop-ready"), SDK_VERSION)
        .expect("cannot mark the SDK venv ready");

    if let Err(error) = fs::rename(&building, &venv) {
        // Another test process won the race (`cleanup` removes our copy); use its venv.
        assert!(
            ready.exists(),
            "cannot move the SDK venv into {}: {error}",
            venv.display()
        );
    }
    drop(cleanup);
    python
}

/// Removes a directory when dropped, also when a panic unwinds past it.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        // After a successful rename the directory is gone, which is fine.
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// `uv` from PATH, or a panic that says how to install it.
fn find_uv() -> PathBuf {
    let hint = "the interop tests need `uv` to create the SDK venv; install it with `python3 -m pip install uv`";
    match Command::new("uv").arg("--version").output() {
        Ok(output) if output.status.success() => PathBuf::from("uv"),
        Ok(output) => panic!(
            "`uv --version` failed ({}): {}\n{hint}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ),
        Err(error) => panic!("cannot run `uv`: {error}\n{hint}"),
    }
}

fn run_uv(command: &mut Command, what: &str) {
    let output = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|error| panic!("cannot run uv to {what}: {error}"));
    assert!(
        output.status.success(),
        "uv failed to {what} ({}): {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status,
        command,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
