//! The embedded CPython itself: initialised once per process from a `PyConfig`, after which
//! the main interpreter imports `_datetime` and `threading` and releases its GIL for good.
//! (Every sub-interpreter creation and extension import briefly switches to the main
//! interpreter; a held main GIL deadlocks it, and concurrent first imports of `_datetime`
//! crash CPython 3.13.0.)

use std::sync::OnceLock;

use pyo3::ffi;

use super::Error;

/// Oldest CPython whose own-GIL sub-interpreters are usable (3.12 crashes at interpreter
/// end after common imports).
pub const MINIMUM_VERSION: (u32, u32) = (3, 13);

static INITIALIZED: OnceLock<Result<(), String>> = OnceLock::new();

/// The CPython version this binary embeds, as (major, minor, micro).
pub fn embedded_version() -> (u32, u32, u32) {
    // SAFETY: Py_GetVersion returns a static string and may be called before initialisation.
    let text = unsafe { std::ffi::CStr::from_ptr(ffi::Py_GetVersion()) }.to_string_lossy();
    let mut parts = text
        .split(|c: char| !c.is_ascii_digit())
        .filter(|part| !part.is_empty())
        .map(|part| part.parse::<u32>().unwrap_or(0));
    (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    )
}

/// Initialises CPython for this process (idempotent). The main interpreter stays idle
/// afterwards: only the thread that attaches it explicitly (the child-process host) uses it.
pub fn initialize() -> Result<(), Error> {
    INITIALIZED
        .get_or_init(|| {
            let (major, minor, micro) = embedded_version();
            if (major, minor) < MINIMUM_VERSION {
                return Err(format!(
                    "tilebox embeds CPython {major}.{minor}.{micro}, but needs {}.{} or newer for isolated sub-interpreters",
                    MINIMUM_VERSION.0, MINIMUM_VERSION.1
                ));
            }
            // SAFETY: runs once per process (OnceLock), before any other Python call.
            unsafe { initialize_interpreter() }
        })
        .clone()
        .map_err(Error::Initialize)
}

unsafe fn initialize_interpreter() -> Result<(), String> {
    // SAFETY: the config is initialised by CPython before use and cleared afterwards.
    unsafe {
        let mut config = std::mem::MaybeUninit::<ffi::PyConfig>::zeroed();
        ffi::PyConfig_InitIsolatedConfig(config.as_mut_ptr());
        let mut config = config.assume_init();
        config.site_import = 0;
        config.install_signal_handlers = 0;
        config.user_site_directory = 0;
        config.parse_argv = 0;
        let status = ffi::Py_InitializeFromConfig(&config);
        ffi::PyConfig_Clear(&mut config);
        if ffi::PyStatus_Exception(status) != 0 {
            let message = if status.err_msg.is_null() {
                "unknown error".to_string()
            } else {
                std::ffi::CStr::from_ptr(status.err_msg)
                    .to_string_lossy()
                    .into_owned()
            };
            return Err(format!("cannot initialise CPython: {message}"));
        }
        let code = c"import threading, _datetime";
        if ffi::PyRun_SimpleString(code.as_ptr()) != 0 {
            return Err("cannot import threading and _datetime in the main interpreter".into());
        }
        // Release the main GIL; this thread state is never attached again by this thread
        // unless it is the child-process host, which re-attaches it on purpose.
        let _main = ffi::PyEval_SaveThread();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_python_is_the_pinned_3_13() {
        let (major, minor, micro) = embedded_version();
        let pinned = include_str!("../../.python-version").trim();
        assert_eq!(
            format!("{major}.{minor}.{micro}"),
            pinned,
            "the binary embeds the CPython .python-version pins"
        );
        assert!((major, minor) >= MINIMUM_VERSION);
    }
}
