//! Running a release inside one interpreter: path set-up, loading the runner object,
//! executing tasks and turning Python results and exceptions into plain Rust values.
//!
//! `SubInterpreter` owns one own-GIL sub-interpreter on its own OS thread; the functions
//! at the top work in whatever interpreter is attached (the child-process host uses them in
//! its main interpreter). Only pyo3 APIs that are sound inside sub-interpreters are used:
//! no `#[pyclass]`, no `intern!`, no statics holding Python objects. The only Python objects
//! kept across a detach are an [`Entry`]'s (the runtime's `execute` and the dict keys every
//! call uses): it lives on its interpreter's thread and is dropped while attached.
//!
//! A call hands the interpreter thread a whole batch of tasks: it attaches once, runs them
//! one after the other (each with its own event sender), detaches and replies once, so the
//! two thread wake-ups of a handoff are paid once per batch instead of once per task.

use std::ffi::CString;
use std::mem::ManuallyDrop;
use std::sync::{Arc, Mutex, mpsc};

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyCFunction, PyDict, PyList, PyString, PyTuple};
use tokio::sync::{mpsc as async_mpsc, oneshot};

use super::protocol::{
    Event, Exception, Progress, SubmissionGroup, Submissions, TaskOutcome, TaskRequest,
};
use super::{Error, Release};
use crate::api::convert::failure_display;

/// Where events of the running task go.
pub type EventSender = async_mpsc::UnboundedSender<Event>;
/// The current receiver of events; set for the duration of each execution.
pub type SinkSlot = Arc<Mutex<Option<Box<dyn Fn(Event) + Send>>>>;

const HOST_MODULE: &str = "tilebox.workflows._host";

/// A Python exception as plain values, with its formatted traceback.
pub fn python_error(py: Python<'_>, error: &PyErr) -> Exception {
    let value = error.value(py);
    let kind = value
        .get_type()
        .getattr("__name__")
        .and_then(|name| name.extract::<String>())
        .unwrap_or_else(|_| "Exception".to_string());
    let message = value.str().map(|text| text.to_string()).unwrap_or_default();
    let traceback = py
        .import("traceback")
        .and_then(|module| module.call_method1("format_exception", (value,)))
        .and_then(|lines| lines.extract::<Vec<String>>())
        .map(|lines| lines.concat())
        .unwrap_or_default();
    Exception {
        kind,
        message,
        traceback,
    }
}

/// Sets up `sys.path` for a release: the runtime first, then the release root, then the
/// venv's site-packages through `site.addsitedir` (so `.pth` files, e.g. uv's editable
/// install of the project, are honoured); the interpreter's own site-packages are dropped.
pub fn set_up_paths(py: Python<'_>, release: &Release) -> PyResult<()> {
    let globals = PyDict::new(py);
    globals.set_item("runtime", release.runtime.to_string_lossy().as_ref())?;
    globals.set_item("root", release.root.to_string_lossy().as_ref())?;
    let sites: Vec<String> = release
        .site_packages
        .iter()
        .map(|path| path.to_string_lossy().into_owned())
        .collect();
    globals.set_item("sites", sites)?;
    globals.set_item(
        "venv",
        release
            .venv
            .as_ref()
            .map(|path| path.to_string_lossy().into_owned()),
    )?;
    let code = CString::new(
        "import sys, site\n\
         sys.path[:] = [p for p in sys.path if 'site-packages' not in p]\n\
         sys.path.insert(0, root)\n\
         sys.path.insert(0, runtime)\n\
         for s in sites:\n    site.addsitedir(s)\n\
         if venv:\n    sys.prefix = sys.exec_prefix = venv\n    sys.executable = venv + '/bin/python'\n\
         for name in [n for n in sys.modules if n == 'tilebox' or n.startswith('tilebox.')]:\n    del sys.modules[name]\n",
    )
    .expect("the set-up code has no NUL byte");
    py.run(&code, Some(&globals), None)
}

/// In a sub-interpreter, `os._exit` (and `posix._exit`, the same function) would end the
/// whole runner process, every slot and release with it: here they raise instead, so a task
/// that calls them fails with its own (workflow) error. The `os` module is the
/// interpreter's own, so nothing else is touched. A task can still end the process by
/// other means (`os.abort`, `os.kill(os.getpid(), ...)`, a segfault): a sub-interpreter
/// shares the process; releases that must be contained run in a child process.
pub fn refuse_process_exit(py: Python<'_>) -> PyResult<()> {
    let code = c"import os, posix
def _exit(status, /):
    raise RuntimeError(f'os._exit({status!r}) would end the runner process hosting this sub-interpreter; raise an exception to fail the task instead')
os._exit = posix._exit = _exit
del _exit
";
    py.run(code, None, None)
}

/// Installs the event sink callback into the runtime's host module.
pub fn install_sink(py: Python<'_>, slot: SinkSlot) -> PyResult<()> {
    let sink = PyCFunction::new_closure(
        py,
        Some(c"tilebox_sink"),
        None,
        move |args: &Bound<'_, PyTuple>, _| {
            let kind: String = args.get_item(0)?.extract()?;
            let payload: String = args.get_item(1)?.extract()?;
            if let Ok(guard) = slot.lock()
                && let Some(deliver) = guard.as_ref()
            {
                deliver(Event { kind, payload });
            }
            Ok::<(), PyErr>(())
        },
    )?;
    py.import(HOST_MODULE)?.setattr("sink", sink)
}

/// Imports the release's runner object; answers its task identifiers and, in the same
/// order, the classes that registered them.
pub fn load_runner(py: Python<'_>, runner: &str) -> PyResult<Registered> {
    let registered: Vec<(String, String, String)> = py
        .import(HOST_MODULE)?
        .call_method1("load", (runner,))?
        .extract()?;
    Ok(registered
        .into_iter()
        .map(|(name, version, class)| ((name, version), class))
        .unzip())
}

/// Sets the runtime's `post_mortem` switch (`tilebox task run --pdb`): a task that raises
/// stops in `pdb.post_mortem` before its failure is reported.
pub fn set_post_mortem(py: Python<'_>, post_mortem: bool) -> PyResult<()> {
    py.import(HOST_MODULE)?.setattr("post_mortem", post_mortem)
}

/// The input bytes the SDK would submit for task `(name, version)` given by hand as JSON
/// (`text`: an object of its fields, or a one-field task's wire form); the runtime's
/// `InputError` says what does not fit.
pub fn encode_input(
    py: Python<'_>,
    name: &str,
    version: &str,
    text: &str,
) -> Result<Vec<u8>, Exception> {
    py.import(HOST_MODULE)
        .and_then(|module| module.call_method1("encode_input", (name, version, text)))
        .and_then(|encoded| encoded.extract::<Vec<u8>>())
        .map_err(|error| python_error(py, &error))
}

/// A runner object's task identifiers and, in the same order, the classes that registered
/// them (`module.QualName`).
pub type Registered = (Vec<(String, String)>, Vec<String>);

/// The runtime's `execute` in one interpreter, with the dict keys every call uses, looked up
/// once instead of per call. Made after the runner loaded; used and dropped only while
/// attached, on the thread of the interpreter that made it (held in a `ManuallyDrop` and
/// dropped explicitly, so a panic unwinding past it leaks it instead of aborting).
pub struct Entry {
    execute: Py<PyAny>,
    keys: Keys,
}

/// Keys of the request and outcome dicts (see `_host.py`).
struct Keys {
    id: Py<PyString>,
    display: Py<PyString>,
    retry_count: Py<PyString>,
    parent_id: Py<PyString>,
    depends_on: Py<PyString>,
    job: Py<PyString>,
    name: Py<PyString>,
    trace_parent: Py<PyString>,
    cluster: Py<PyString>,
    computed: Py<PyString>,
    progress: Py<PyString>,
    subtasks: Py<PyString>,
    workflow_error: Py<PyString>,
    error: Py<PyString>,
}

impl Keys {
    fn new(py: Python<'_>) -> Self {
        let key = |name: &str| PyString::intern(py, name).unbind();
        Self {
            id: key("id"),
            display: key("display"),
            retry_count: key("retry_count"),
            parent_id: key("parent_id"),
            depends_on: key("depends_on"),
            job: key("job"),
            name: key("name"),
            trace_parent: key("trace_parent"),
            cluster: key("cluster"),
            computed: key("computed"),
            progress: key("progress"),
            subtasks: key("subtasks"),
            workflow_error: key("workflow_error"),
            error: key("error"),
        }
    }
}

impl Entry {
    /// Looks up the runtime's `execute` in the attached interpreter.
    pub fn new(py: Python<'_>) -> PyResult<Self> {
        Ok(Self {
            execute: py.import(HOST_MODULE)?.getattr("execute")?.unbind(),
            keys: Keys::new(py),
        })
    }

    /// Executes one task in the attached interpreter. Whatever the task does ends as an
    /// outcome: the runtime reports the task's exceptions (`BaseException`s too) and invalid
    /// displays or progress as workflow errors, and should the runtime itself raise, or
    /// answer something that cannot be read (e.g. a lone surrogate in a string), that is a
    /// workflow error as well, with a display saying what was wrong: the task caused it, so
    /// it counts against its retries instead of running again forever.
    pub fn execute(&self, py: Python<'_>, request: &TaskRequest) -> TaskOutcome {
        let task = match self.request_dict(py, request) {
            Ok(task) => task,
            Err(error) => {
                let error = python_error(py, &error);
                return TaskOutcome::Failed {
                    display: failure_display(
                        &request.display,
                        &format!("RuntimeError({:?})", error.to_string()),
                    ),
                    workflow_error: false,
                    progress: Vec::new(),
                    error: Some(error),
                };
            }
        };
        let input = PyBytes::new(py, &request.input);
        let outcome = self
            .execute
            .call1(py, (&request.name, &request.version, input, task))
            .map_err(|error| ("the runtime failed running the task", error))
            .and_then(|result| {
                self.outcome_of(result.bind(py))
                    .map_err(|error| ("the task's outcome cannot be read", error))
            });
        outcome.unwrap_or_else(|(what, error)| {
            let error = python_error(py, &error);
            TaskOutcome::Failed {
                display: failure_display(
                    &request.display,
                    &format!("InvalidOutcome({:?})", format!("{what}: {error}")),
                ),
                workflow_error: true,
                progress: Vec::new(),
                error: Some(error),
            }
        })
    }

    fn request_dict<'py>(
        &self,
        py: Python<'py>,
        request: &TaskRequest,
    ) -> PyResult<Bound<'py, PyDict>> {
        let keys = &self.keys;
        let job = PyDict::new(py);
        job.set_item(keys.id.bind(py), &request.job.id)?;
        job.set_item(keys.name.bind(py), &request.job.name)?;
        job.set_item(keys.trace_parent.bind(py), &request.job.trace_parent)?;
        let task = PyDict::new(py);
        task.set_item(keys.id.bind(py), &request.id)?;
        task.set_item(keys.display.bind(py), &request.display)?;
        task.set_item(keys.retry_count.bind(py), request.retry_count)?;
        task.set_item(keys.parent_id.bind(py), request.parent_id.as_deref())?;
        task.set_item(
            keys.depends_on.bind(py),
            PyList::new(py, &request.depends_on)?,
        )?;
        task.set_item(keys.job.bind(py), job)?;
        task.set_item(keys.cluster.bind(py), &request.cluster)?;
        Ok(task)
    }

    fn outcome_of(&self, result: &Bound<'_, PyAny>) -> PyResult<TaskOutcome> {
        let py = result.py();
        let keys = &self.keys;
        let result = result.cast::<PyDict>()?;
        let item = |key: &Py<PyString>| -> PyResult<Bound<'_, PyAny>> {
            result
                .get_item(key.bind(py))?
                .ok_or_else(|| pyo3::exceptions::PyKeyError::new_err(key.bind(py).to_string()))
        };
        let display: String = item(&keys.display)?.extract().map_err(|error| {
            pyo3::exceptions::PyValueError::new_err(format!(
                "the task's display is not valid UTF-8 text: {}",
                python_error(py, &error)
            ))
        })?;
        let progress = progress_of(&item(&keys.progress)?)?;
        if item(&keys.computed)?.extract::<bool>()? {
            return Ok(TaskOutcome::Computed {
                display,
                progress,
                subtasks: submissions_of(&item(&keys.subtasks)?)?,
            });
        }
        let error = item(&keys.error)?;
        let error = if error.is_none() {
            None
        } else {
            Some(Exception {
                kind: error.get_item("type")?.extract()?,
                message: error.get_item("message")?.extract()?,
                traceback: error.get_item("traceback")?.extract()?,
            })
        };
        Ok(TaskOutcome::Failed {
            display,
            workflow_error: item(&keys.workflow_error)?.extract()?,
            progress,
            error,
        })
    }
}

/// The progress entries `(label, total, done)`; an entry the server cannot store is an
/// error saying which and why.
fn progress_of(value: &Bound<'_, PyAny>) -> PyResult<Vec<Progress>> {
    if value.cast::<PyList>().is_ok_and(|list| list.is_empty()) {
        return Ok(Vec::new());
    }
    let invalid = |message: String| pyo3::exceptions::PyValueError::new_err(message);
    let mut progress = Vec::new();
    for entry in value.try_iter()? {
        let (label, total, done): (Bound<'_, PyAny>, Bound<'_, PyAny>, Bound<'_, PyAny>) =
            entry?.extract()?;
        let label: Option<String> = label.extract().map_err(|error| {
            invalid(format!(
                "a progress label is not valid UTF-8 text or None: {}",
                python_error(value.py(), &error)
            ))
        })?;
        let name = match &label {
            Some(label) => format!("progress {label:?}"),
            None => "progress (no label)".to_string(),
        };
        let amount = |what: &str, amount: Bound<'_, PyAny>| {
            amount.extract::<u64>().map_err(|_| {
                invalid(format!(
                    "{name}: the {what} is not an integer from 0 to 2**64 - 1"
                ))
            })
        };
        progress.push(Progress {
            total: amount("total", total)?,
            done: amount("done amount", done)?,
            label,
        });
    }
    Ok(progress)
}

fn submissions_of(value: &Bound<'_, PyAny>) -> PyResult<Option<Submissions>> {
    if value.is_none() {
        return Ok(None);
    }
    let mut groups = Vec::new();
    for group in value.get_item("task_groups")?.try_iter()? {
        let group = group?;
        groups.push(SubmissionGroup {
            dependencies_on_other_groups: group
                .get_item("dependencies_on_other_groups")?
                .extract()?,
            inputs: group.get_item("inputs")?.extract()?,
            identifier_pointers: group.get_item("identifier_pointers")?.extract()?,
            cluster_slug_pointers: group.get_item("cluster_slug_pointers")?.extract()?,
            display_pointers: group.get_item("display_pointers")?.extract()?,
            max_retries_values: group.get_item("max_retries_values")?.extract()?,
            optional_values: group.get_item("optional_values")?.extract()?,
        });
    }
    Ok(Some(Submissions {
        task_groups: groups,
        cluster_slug_lookup: value.get_item("cluster_slug_lookup")?.extract()?,
        identifier_lookup: value.get_item("identifier_lookup")?.extract()?,
        display_lookup: value.get_item("display_lookup")?.extract()?,
    }))
}

/// Tasks handed to an interpreter in one handoff, each with the sender its events go to.
pub type Batch = Vec<(TaskRequest, EventSender)>;

enum Command {
    /// Run the tasks in order; reply with their outcomes, in the same order.
    Execute {
        batch: Batch,
        reply: oneshot::Sender<Vec<TaskOutcome>>,
    },
    /// Encode a task input given by hand ([`encode_input`]).
    EncodeInput {
        name: String,
        version: String,
        text: String,
        reply: oneshot::Sender<Result<Vec<u8>, Exception>>,
    },
}

/// One release loaded into an own-GIL sub-interpreter, driven from its own OS thread.
pub struct SubInterpreter {
    commands: Option<mpsc::Sender<Command>>,
    thread: Option<std::thread::JoinHandle<()>>,
    identifiers: Vec<(String, String)>,
    classes: Vec<String>,
}

impl SubInterpreter {
    /// Starts the interpreter thread, sets up the release and loads its runner.
    pub fn start(release: &Release) -> Result<Self, Error> {
        super::host::initialize()?;
        let (commands, receiver) = mpsc::channel::<Command>();
        let (loaded, loaded_receiver) = mpsc::channel::<Result<Registered, Error>>();
        let release = release.clone();
        let thread = std::thread::Builder::new()
            .name(format!("python-{}", release.label))
            .spawn(move || run_interpreter(release, receiver, loaded))
            .map_err(Error::Thread)?;
        let (identifiers, classes) = loaded_receiver
            .recv()
            .map_err(|_| Error::InterpreterGone)??;
        Ok(Self {
            commands: Some(commands),
            thread: Some(thread),
            identifiers,
            classes,
        })
    }

    pub fn identifiers(&self) -> &[(String, String)] {
        &self.identifiers
    }

    /// The classes that registered [`Self::identifiers`], in the same order.
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// Executes the tasks one after the other in one handoff; each task's events go to its
    /// own sender while it runs. Answers one outcome per task, in order.
    pub async fn execute_batch(&self, batch: Batch) -> Vec<Result<TaskOutcome, Error>> {
        let count = batch.len();
        let gone = || (0..count).map(|_| Err(Error::InterpreterGone)).collect();
        let Some(commands) = &self.commands else {
            return gone();
        };
        if count == 0 {
            return Vec::new();
        }
        let (reply, answer) = oneshot::channel();
        // A failed send drops `reply`, so the answer is an error.
        let _ = commands.send(Command::Execute { batch, reply });
        match answer.await {
            Ok(outcomes) => outcomes.into_iter().map(Ok).collect(),
            Err(_) => gone(),
        }
    }

    /// The input bytes for a task input given by hand (see [`encode_input`]).
    pub async fn encode_input(
        &self,
        name: &str,
        version: &str,
        text: &str,
    ) -> Result<Result<Vec<u8>, Exception>, Error> {
        let commands = self.commands.as_ref().ok_or(Error::InterpreterGone)?;
        let (reply, answer) = oneshot::channel();
        let _ = commands.send(Command::EncodeInput {
            name: name.to_string(),
            version: version.to_string(),
            text: text.to_string(),
            reply,
        });
        answer.await.map_err(|_| Error::InterpreterGone)
    }

    /// Ends the interpreter after the task it runs (if any) finished.
    pub fn stop(mut self) {
        self.shut_down();
    }

    fn shut_down(&mut self) {
        self.commands.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for SubInterpreter {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// Runs the tasks of a batch in order in the attached interpreter, pointing the event sink
/// at each task's sender while it runs.
fn run_batch(py: Python<'_>, entry: &Entry, slot: &SinkSlot, batch: Batch) -> Vec<TaskOutcome> {
    batch
        .into_iter()
        .map(|(request, events)| {
            if let Ok(mut guard) = slot.lock() {
                *guard = Some(Box::new(move |event| {
                    let _ = events.send(event);
                }));
            }
            let outcome = entry.execute(py, &request);
            if let Ok(mut guard) = slot.lock() {
                *guard = None;
            }
            outcome
        })
        .collect()
}

/// The interpreter thread: create, set up, load, serve commands, end.
fn run_interpreter(
    release: Release,
    commands: mpsc::Receiver<Command>,
    loaded: mpsc::Sender<Result<Registered, Error>>,
) {
    let config = ffi::PyInterpreterConfig {
        use_main_obmalloc: 0,
        allow_fork: 0,
        allow_exec: 0,
        allow_threads: 1,
        allow_daemon_threads: 0,
        check_multi_interp_extensions: 1,
        gil: ffi::PyInterpreterConfig_OWN_GIL,
    };
    let mut thread_state: *mut ffi::PyThreadState = std::ptr::null_mut();
    // SAFETY: called with no thread state attached on this fresh thread; on success the new
    // interpreter's thread state is attached and its GIL held.
    let status = unsafe { ffi::Py_NewInterpreterFromConfig(&mut thread_state, &config) };
    // SAFETY: reading the status CPython returned.
    if unsafe { ffi::PyStatus_Exception(status) } != 0 || thread_state.is_null() {
        let _ = loaded.send(Err(Error::Initialize(
            "cannot create a sub-interpreter".into(),
        )));
        return;
    }
    let slot: SinkSlot = Arc::new(Mutex::new(None));
    let setup = Python::attach(|py| -> Result<(Registered, Entry), Error> {
        let fail = |error: PyErr| Error::Load {
            release: release.label.clone(),
            runner: release.runner.clone(),
            error: python_error(py, &error),
        };
        set_up_paths(py, &release).map_err(fail)?;
        refuse_process_exit(py).map_err(fail)?;
        install_sink(py, slot.clone()).map_err(fail)?;
        if super::post_mortem() {
            set_post_mortem(py, true).map_err(fail)?;
        }
        let identifiers = load_runner(py, &release.runner).map_err(fail)?;
        Ok((identifiers, Entry::new(py).map_err(fail)?))
    });
    let (setup, entry) = match setup {
        // Dropped explicitly while attached at the end; if this thread unwinds instead, the
        // entry leaks (dropping its objects detached would abort the process).
        Ok((identifiers, entry)) => (Ok(identifiers), Some(ManuallyDrop::new(entry))),
        Err(error) => (Err(error), None),
    };
    let _ = loaded.send(setup);
    if let Some(entry) = entry {
        // SAFETY: detaches this thread's (the sub-interpreter's) thread state. `entry` stays
        // on this thread and is only used and dropped while attached again.
        let mut saved = unsafe { ffi::PyEval_SaveThread() };
        while let Ok(command) = commands.recv() {
            match command {
                Command::Execute { batch, reply } => {
                    // SAFETY: re-attaches the thread state this thread created and saved.
                    unsafe { ffi::PyEval_RestoreThread(saved) };
                    let outcomes = Python::attach(|py| run_batch(py, &entry, &slot, batch));
                    // SAFETY: detaches again; only `entry` outlives the attachment.
                    saved = unsafe { ffi::PyEval_SaveThread() };
                    let _ = reply.send(outcomes);
                }
                Command::EncodeInput {
                    name,
                    version,
                    text,
                    reply,
                } => {
                    // SAFETY: as above.
                    unsafe { ffi::PyEval_RestoreThread(saved) };
                    let encoded = Python::attach(|py| encode_input(py, &name, &version, &text));
                    // SAFETY: as above.
                    saved = unsafe { ffi::PyEval_SaveThread() };
                    let _ = reply.send(encoded);
                }
            }
        }
        // SAFETY: re-attach to end the interpreter on the thread that created it.
        unsafe { ffi::PyEval_RestoreThread(saved) };
        Python::attach(|_| drop(ManuallyDrop::into_inner(entry)));
    }
    Python::attach(|py| {
        // Let non-daemon threads the release started finish, so the interpreter can end, and
        // drop the dummy Thread object threading made for this (non-Python) thread while the
        // interpreter is alive: its finaliser fails noisily during interpreter end.
        let _ = py.run(
            c"import threading\ntry:\n    threading._shutdown()\nexcept Exception:\n    pass\n\
              info = getattr(threading, '_thread_local_info', None)\n\
              if info is not None and hasattr(info, '_track_dummy_thread_ref'):\n    del info._track_dummy_thread_ref\n",
            None,
            None,
        );
    });
    // SAFETY: this thread's state is attached and is the interpreter's only one; every
    // Python object of the interpreter was dropped inside the attachments above.
    unsafe { ffi::Py_EndInterpreter(thread_state) };
}
