//! [`Browser`]: a real headless Chromium driven over the Chrome DevTools Protocol, for the
//! console's browser tests.
//!
//! Chromium runs with `--remote-debugging-pipe`: it reads commands on fd 3 and writes
//! replies and events on fd 4, each a JSON document followed by a NUL byte. That needs no
//! WebSocket (so no new crate) and no port. A reader thread routes replies to their callers
//! by `id` and keeps what counts as a page error: uncaught exceptions
//! (`Runtime.exceptionThrown`), browser log entries at level error (`Log.entryAdded`, where
//! CSP violations and failed loads show), `console.error` calls, and a crashed page.
//!
//! One browser has one page (a tab made with `Target.createTarget`, attached with
//! `flatten`, so commands name its `sessionId`). The binary is `TILEBOX_CHROMIUM`, else
//! `chromium` on `PATH`; `.ci/chromium.sh` installs Debian's package. The browser's process
//! group is killed when the `Browser` drops, and it gets `SIGKILL` when the thread that
//! launched it dies (`PR_SET_PDEATHSIG`), so a killed test leaves no browser behind: launch
//! it on the test's own thread.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use fs_err as fs;
use serde_json::{Value, json};

use super::{tail_of_file, wait_until};

/// The environment variable naming the Chromium binary (`.ci/chromium.sh` exports it).
pub const CHROMIUM_VARIABLE: &str = "TILEBOX_CHROMIUM";
/// How long one protocol command may take to be answered.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a command waiting for its reply checks whether Chromium still runs.
const EXIT_CHECK_INTERVAL: Duration = Duration::from_millis(200);
/// How long a navigation may take until the page's `load` event.
const LOAD_TIMEOUT: Duration = Duration::from_secs(30);
/// The page's size in CSS pixels (and the screenshots' in pixels: the scale factor is 1).
const VIEWPORT: (u32, u32) = (1280, 860);
/// How much of Chromium's stderr goes into panic messages.
const STDERR_TAIL_BYTES: u64 = 4 * 1024;
/// How much of the page's text goes into a [`Browser::wait_for`] timeout message.
const BODY_SNIPPET_CHARS: usize = 1500;
/// Where the pipe's ends are parked in the child before they become fds 3 and 4: above any
/// fd the child may already have, so `dup2` clobbers neither of them.
const PARKED_FD_MINIMUM: RawFd = 10;

/// A headless Chromium with one page. See the module documentation.
pub struct Browser {
    child: Mutex<Child>,
    pid: u32,
    /// Our end of the pipe Chromium reads commands from (its fd 3).
    commands: Mutex<fs::File>,
    shared: Arc<Shared>,
    /// The page's session, named by every page command.
    session: String,
    next_id: AtomicU64,
    stderr_path: PathBuf,
    reader: Option<std::thread::JoinHandle<()>>,
    // Last, so the directory outlives the browser in `Drop`.
    profile: tempfile::TempDir,
}

/// What the reader thread shares with the callers.
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
struct State {
    /// Replies not yet taken by their caller, by command id.
    replies: HashMap<u64, Value>,
    /// Uncaught exceptions, error log entries and `console.error` calls, in order.
    page_errors: Vec<String>,
    /// How many `load` events the page fired.
    loads: u64,
    /// Why the reader stopped (Chromium closed its pipe, or wrote something unreadable).
    closed: Option<String>,
}

impl Browser {
    /// Starts a headless Chromium with a fresh profile in a temp dir and opens one blank
    /// page. Panics when Chromium is not installed, with how to install it.
    pub fn launch() -> Self {
        Self::launch_with(&[])
    }

    /// [`Browser::launch`] with more command-line switches (`--ignore-certificate-errors`
    /// for a server with a test CA).
    pub fn launch_with(switches: &[&str]) -> Self {
        let binary = chromium_binary();
        let profile = tempfile::Builder::new()
            .prefix("tilebox-chromium-")
            .tempdir()
            .expect("cannot create a temp dir for Chromium's profile");
        let stderr_path = profile.path().join("chromium.stderr");
        let stderr = fs::File::create(&stderr_path).expect("cannot create Chromium's stderr file");

        // Both pipes close on exec in this process; the child gets its ends as fds 3 and 4.
        let (child_reads, commands) = pipe();
        let (events, child_writes) = pipe();
        let (child_reads_fd, child_writes_fd) = (child_reads.as_raw_fd(), child_writes.as_raw_fd());

        let mut command = Command::new(&binary);
        command
            .args([
                "--headless",
                "--remote-debugging-pipe",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-extensions",
                "--disable-sync",
                "--force-device-scale-factor=1",
                "--hide-scrollbars",
            ])
            .arg(format!("--window-size={},{}", VIEWPORT.0, VIEWPORT.1))
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(switches);
        // SAFETY: `geteuid` is async-signal-safe; called before the fork.
        if unsafe { libc::geteuid() } == 0 {
            // Chromium refuses to run as root with its sandbox on.
            command.arg("--no-sandbox");
        }
        command
            .arg("about:blank")
            .env("TZ", "UTC")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr.into_file())
            // Its own process group, so `Drop` reaches the renderers too.
            .process_group(0);
        // SAFETY: between fork and exec this calls only async-signal-safe functions (fcntl,
        // dup2, close, prctl, getppid) and touches no memory of the parent.
        unsafe {
            command.pre_exec(move || {
                // Park both ends above fd 10 first: an end that already is fd 3 or 4 would
                // otherwise keep its close-on-exec flag (dup2 onto itself) or be clobbered.
                let reads = cvt(libc::fcntl(
                    child_reads_fd,
                    libc::F_DUPFD,
                    PARKED_FD_MINIMUM,
                ))?;
                let writes = cvt(libc::fcntl(
                    child_writes_fd,
                    libc::F_DUPFD,
                    PARKED_FD_MINIMUM,
                ))?;
                cvt(libc::dup2(reads, 3))?;
                cvt(libc::dup2(writes, 4))?;
                cvt(libc::close(reads))?;
                cvt(libc::close(writes))?;
                cvt(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL))?;
                // The launching thread may have died before prctl: then nobody kills us.
                if libc::getppid() == 1 {
                    return Err(std::io::Error::other("the launching process is gone"));
                }
                Ok(())
            });
        }
        let child = command.spawn().unwrap_or_else(|error| {
            panic!(
                "cannot start Chromium `{}`: {error}\nhint: run `.ci/chromium.sh` (it installs \
                 Debian's chromium package), or set {CHROMIUM_VARIABLE}",
                binary.display()
            )
        });
        // Our copies of the child's ends: closed, so the reader sees EOF when Chromium exits.
        drop(child_reads);
        drop(child_writes);

        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        });
        let reader = {
            let shared = shared.clone();
            let events = fs::File::from_parts(std::fs::File::from(events), "<chromium fd 4>");
            std::thread::Builder::new()
                .name("chromium-reader".to_owned())
                .spawn(move || read_messages(events, &shared))
                .expect("cannot spawn the Chromium reader thread")
        };
        let mut browser = Self {
            pid: child.id(),
            child: Mutex::new(child),
            commands: Mutex::new(fs::File::from_parts(
                std::fs::File::from(commands),
                "<chromium fd 3>",
            )),
            shared,
            session: String::new(),
            next_id: AtomicU64::new(1),
            stderr_path,
            reader: Some(reader),
            profile,
        };

        let target = browser.call(None, "Target.createTarget", json!({"url": "about:blank"}));
        let target_id = target["targetId"]
            .as_str()
            .expect("Target.createTarget answers a targetId")
            .to_owned();
        let attached = browser.call(
            None,
            "Target.attachToTarget",
            json!({"targetId": target_id, "flatten": true}),
        );
        browser.session = attached["sessionId"]
            .as_str()
            .expect("Target.attachToTarget answers a sessionId")
            .to_owned();
        for domain in ["Page.enable", "Runtime.enable", "Log.enable"] {
            browser.command(domain, json!({}));
        }
        // The window's size less its frame would leave a shorter viewport: the page gets
        // exactly the window's size, so screenshots are 1280×860.
        browser.command(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": VIEWPORT.0, "height": VIEWPORT.1, "deviceScaleFactor": 1, "mobile": false}),
        );
        browser
    }

    /// Sends a command to the page's session and answers its result; panics with the
    /// protocol's error.
    pub fn command(&self, method: &str, params: Value) -> Value {
        self.call(Some(&self.session), method, params)
    }

    /// Opens `url` and waits for its `load` event (after redirects). Panics when the
    /// navigation fails (a refused connection, a bad URL).
    pub fn goto(&self, url: &str) {
        let loads_before = self.state().loads;
        let navigated = self.command("Page.navigate", json!({"url": url}));
        if let Some(error) = navigated.get("errorText").and_then(Value::as_str) {
            let hint = if error == "net::ERR_ABORTED" {
                " (the answer was no page to show: a download, or the gRPC router's answer to \
                 a path no console route serves)"
            } else {
                ""
            };
            panic!("navigating to {url} failed: {error}{hint}");
        }
        self.wait_for_load(url, loads_before);
    }

    /// Runs `action` (a click on a link or a form's button) and waits for the page it loads.
    pub fn navigating(&self, what: &str, action: impl FnOnce(&Self)) {
        let loads_before = self.state().loads;
        action(self);
        self.wait_for_load(what, loads_before);
    }

    fn wait_for_load(&self, what: &str, loads_before: u64) {
        let deadline = Instant::now() + LOAD_TIMEOUT;
        let mut state = self.state();
        while state.loads == loads_before {
            if let Some(reason) = &state.closed {
                let reason = reason.clone();
                drop(state);
                self.died(&format!("while loading {what}: {reason}"));
            }
            let now = Instant::now();
            if now >= deadline {
                drop(state);
                panic!(
                    "{what} did not finish loading within {LOAD_TIMEOUT:?}; the page is at {}",
                    self.url()
                );
            }
            state = self
                .shared
                .changed
                .wait_timeout(state, deadline - now)
                .expect("the browser state lock is poisoned")
                .0;
        }
    }

    /// Evaluates the JavaScript expression `js` in the page (a promise is awaited) and
    /// answers its value as JSON (`undefined` is null). Panics with the exception's text
    /// when it throws.
    pub fn eval(&self, js: &str) -> Value {
        self.try_eval(js)
            .unwrap_or_else(|error| panic!("evaluating `{js}` in {} threw: {error}", self.url()))
    }

    /// [`eval`](Self::eval), answering the exception's text instead of panicking (also when
    /// the page navigated away while it ran).
    pub fn try_eval(&self, js: &str) -> Result<Value, String> {
        let result = self.try_command(
            "Runtime.evaluate",
            json!({
                "expression": js,
                "awaitPromise": true,
                "returnByValue": true,
                "userGesture": true,
            }),
        )?;
        if let Some(details) = result.get("exceptionDetails") {
            return Err(exception_text(details));
        }
        Ok(result["result"]
            .get("value")
            .cloned()
            .unwrap_or(Value::Null))
    }

    /// Waits until the JavaScript expression `js` is truthy in the page, evaluating it every
    /// 20 ms (a throw counts as not yet: the element may not exist yet, or the page is
    /// navigating). After `timeout` panics with `description` (phrased to follow "waiting
    /// for"), the page's URL, the start of its text, and the last exception.
    pub fn wait_for(&self, description: &str, js: &str, timeout: Duration) {
        let predicate = format!("Promise.resolve(({js})).then(Boolean)");
        let mut last_error = None;
        let waited = wait_until(description, timeout, || {
            if let Some(reason) = &self.state().closed {
                let reason = reason.clone();
                self.died(&format!("while waiting for {description}: {reason}"));
            }
            match self.try_eval(&predicate) {
                Ok(value) => value == Value::Bool(true),
                Err(error) => {
                    last_error = Some(error);
                    false
                }
            }
        });
        if let Err(timed_out) = waited {
            let text = self
                .try_eval("document.body ? document.body.innerText : '(no body)'")
                .ok()
                .and_then(|value| value.as_str().map(str::to_owned))
                .unwrap_or_default();
            let snippet: String = text.chars().take(BODY_SNIPPET_CHARS).collect();
            let error = last_error
                .map(|error| format!("\nthe last check threw: {error}"))
                .unwrap_or_default();
            panic!(
                "{timed_out} (`{js}`)\npage: {}{error}\npage errors: {:?}\n--- page text ---\n{snippet}",
                self.url(),
                self.page_errors()
            );
        }
    }

    /// Clicks the first element that matches the CSS `selector`, with real mouse events at
    /// its centre (after scrolling it into view). Panics when nothing matches, when it has no
    /// size, or when another element (a modal dialog, an overlay) covers its centre.
    pub fn click(&self, selector: &str) {
        let selector_js = serde_json::to_string(selector).expect("a string serializes");
        let point = self.eval(&format!(
            r#"(() => {{
                const element = document.querySelector({selector_js});
                if (!element) throw new Error("no element matches " + {selector_js});
                element.scrollIntoView({{block: "center", inline: "center"}});
                const box = element.getBoundingClientRect();
                if (box.width === 0 || box.height === 0) throw new Error({selector_js} + " has no size (hidden?)");
                const x = box.left + box.width / 2, y = box.top + box.height / 2;
                const top = document.elementFromPoint(x, y);
                if (!top || !(top === element || element.contains(top) || top.contains(element) && top.tagName === "LABEL")) {{
                    throw new Error({selector_js} + " is covered by " + (top ? top.outerHTML.slice(0, 200) : "nothing"));
                }}
                return [x, y];
            }})()"#
        ));
        let x = point[0].as_f64().expect("x");
        let y = point[1].as_f64().expect("y");
        self.command(
            "Input.dispatchMouseEvent",
            json!({"type": "mouseMoved", "x": x, "y": y}),
        );
        for kind in ["mousePressed", "mouseReleased"] {
            self.command(
                "Input.dispatchMouseEvent",
                json!({"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1}),
            );
        }
    }

    /// Replaces the value of the input that matches `selector` with `text`, typed as text
    /// input (`input` events fire), then fires `change`.
    pub fn fill(&self, selector: &str, text: &str) {
        let selector_js = serde_json::to_string(selector).expect("a string serializes");
        self.eval(&format!(
            r#"(() => {{
                const element = document.querySelector({selector_js});
                if (!element) throw new Error("no element matches " + {selector_js});
                element.focus();
                element.value = "";
            }})()"#
        ));
        self.command("Input.insertText", json!({"text": text}));
        self.eval(&format!(
            r#"document.querySelector({selector_js}).dispatchEvent(new Event("change", {{bubbles: true}}))"#
        ));
    }

    /// Saves the visible part of the page (1280×860 pixels) as a PNG at `path`, making its
    /// directory.
    pub fn screenshot(&self, path: &Path) {
        let shot = self.command("Page.captureScreenshot", json!({"format": "png"}));
        let png = base64::engine::general_purpose::STANDARD
            .decode(
                shot["data"]
                    .as_str()
                    .expect("Page.captureScreenshot answers data"),
            )
            .expect("the screenshot is base64");
        assert!(png.starts_with(b"\x89PNG"), "the screenshot is not a PNG");
        if let Some(directory) = path.parent() {
            fs::create_dir_all(directory).expect("cannot create the screenshot's directory");
        }
        fs::write(path, png).expect("cannot write the screenshot");
    }

    /// The page's URL now (empty when it cannot be read).
    pub fn url(&self) -> String {
        self.try_eval("location.href")
            .ok()
            .and_then(|value| value.as_str().map(str::to_owned))
            .unwrap_or_default()
    }

    /// The page errors so far: uncaught exceptions, error log entries (CSP violations,
    /// failed loads) and `console.error` calls.
    pub fn page_errors(&self) -> Vec<String> {
        self.state().page_errors.clone()
    }

    /// The page errors so far, forgetting them (for a test that provoked one on purpose).
    pub fn take_page_errors(&self) -> Vec<String> {
        std::mem::take(&mut self.state().page_errors)
    }

    /// Panics listing the page errors, if there were any. Every browser test ends with it.
    pub fn assert_no_page_errors(&self) {
        let errors = self.page_errors();
        assert!(
            errors.is_empty(),
            "the page reported {} error(s):\n{}",
            errors.len(),
            errors.join("\n")
        );
    }

    /// Chromium's process id, which is also its process group's.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The last few KiB of Chromium's stderr.
    pub fn stderr_tail(&self) -> String {
        tail_of_file(&self.stderr_path, STDERR_TAIL_BYTES)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared
            .state
            .lock()
            .expect("the browser state lock is poisoned")
    }

    fn try_command(&self, method: &str, params: Value) -> Result<Value, String> {
        self.send(Some(&self.session), method, params)
    }

    fn call(&self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.send(session, method, params)
            .unwrap_or_else(|error| panic!("{method} failed: {error}"))
    }

    /// Sends one command and waits for its reply: `Err` with the protocol's error message;
    /// panics (naming Chromium's stderr) when the browser died or did not answer.
    fn send(&self, session: Option<&str>, method: &str, params: Value) -> Result<Value, String> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(session) = session {
            message["sessionId"] = json!(session);
        }
        let mut bytes = serde_json::to_vec(&message).expect("a command serializes");
        bytes.push(0);
        {
            let mut commands = self
                .commands
                .lock()
                .expect("the command pipe lock is poisoned");
            if let Err(error) = commands.write_all(&bytes).and_then(|()| commands.flush()) {
                drop(commands);
                self.died(&format!("sending {method}: {error}"));
            }
        }
        let deadline = Instant::now() + REPLY_TIMEOUT;
        let mut state = self.state();
        loop {
            if let Some(reply) = state.replies.remove(&id) {
                return match reply.get("error") {
                    Some(error) => Err(error["message"]
                        .as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| error.to_string())),
                    None => Ok(reply.get("result").cloned().unwrap_or(Value::Null)),
                };
            }
            if let Some(reason) = &state.closed {
                let reason = reason.clone();
                drop(state);
                self.died(&format!("waiting for the reply to {method}: {reason}"));
            }
            let now = Instant::now();
            if now >= deadline {
                drop(state);
                self.died(&format!(
                    "no reply to {method} within {REPLY_TIMEOUT:?} (is Chromium hung?)"
                ));
            }
            // Its children may hold the pipe open a while after Chromium died: look at it.
            if let Some(status) = self.exited() {
                drop(state);
                self.died(&format!(
                    "waiting for the reply to {method}: it exited ({status})"
                ));
            }
            state = self
                .shared
                .changed
                .wait_timeout(state, (deadline - now).min(EXIT_CHECK_INTERVAL))
                .expect("the browser state lock is poisoned")
                .0;
        }
    }

    /// How Chromium exited, if it did.
    fn exited(&self) -> Option<std::process::ExitStatus> {
        self.child
            .lock()
            .expect("the browser process lock is poisoned")
            .try_wait()
            .ok()
            .flatten()
    }

    fn died(&self, what: &str) -> ! {
        panic!(
            "Chromium failed {what}\n--- chromium stderr (tail) ---\n{}",
            self.stderr_tail()
        )
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's process group.
        unsafe {
            libc::kill(-(self.pid as libc::pid_t), libc::SIGKILL);
        }
        let _ = self
            .child
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .wait();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

/// The Chromium binary: `TILEBOX_CHROMIUM`, else `chromium` on `PATH`. Panics with how to
/// install it: a browser test must not pass without a browser.
pub fn chromium_binary() -> PathBuf {
    if let Some(binary) = std::env::var_os(CHROMIUM_VARIABLE).filter(|value| !value.is_empty()) {
        return PathBuf::from(binary);
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|directory| directory.join("chromium"))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "Chromium is not installed: the browser tests need Debian's `chromium` package \
                 (`.ci/chromium.sh` installs it, as `.ci/run` does), or {CHROMIUM_VARIABLE} \
                 naming a Chromium binary"
            )
        })
}

/// A pipe whose two ends (read, write) close on exec.
fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two fds into the array, which we then own.
    let result = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(
        result,
        0,
        "pipe2 failed: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: both fds were just opened and are owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

fn cvt(result: libc::c_int) -> std::io::Result<libc::c_int> {
    if result < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(result)
    }
}

/// The reader thread: splits Chromium's output at NUL bytes, files replies by id and keeps
/// page errors and load events, until Chromium closes its end.
fn read_messages(events: fs::File, shared: &Shared) {
    let mut reader = BufReader::new(events);
    let mut buffer = Vec::new();
    let closed = loop {
        buffer.clear();
        match reader.read_until(0, &mut buffer) {
            Ok(0) => break "it closed its end of the pipe (it exited)".to_owned(),
            Ok(_) => {}
            Err(error) => break format!("reading its pipe failed: {error}"),
        }
        if buffer.last() == Some(&0) {
            buffer.pop();
        }
        let message: Value = match serde_json::from_slice(&buffer) {
            Ok(message) => message,
            Err(error) => {
                break format!(
                    "it wrote a message that is not JSON ({error}): {}",
                    String::from_utf8_lossy(&buffer)
                );
            }
        };
        let mut state = shared
            .state
            .lock()
            .expect("the browser state lock is poisoned");
        if let Some(id) = message.get("id").and_then(Value::as_u64) {
            state.replies.insert(id, message);
        } else if let Some(method) = message.get("method").and_then(Value::as_str) {
            let params = &message["params"];
            match method {
                "Page.loadEventFired" => state.loads += 1,
                "Runtime.exceptionThrown" => {
                    let error = exception_text(&params["exceptionDetails"]);
                    state
                        .page_errors
                        .push(format!("uncaught exception: {error}"));
                }
                "Log.entryAdded" if params["entry"]["level"] == "error" => {
                    let entry = &params["entry"];
                    state.page_errors.push(format!(
                        "{} error: {} ({})",
                        entry["source"].as_str().unwrap_or("log"),
                        entry["text"].as_str().unwrap_or_default(),
                        entry["url"].as_str().unwrap_or_default()
                    ));
                }
                "Runtime.consoleAPICalled" if params["type"] == "error" => {
                    let arguments: Vec<String> = params["args"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|argument| match argument.get("value") {
                            Some(Value::String(text)) => text.clone(),
                            Some(value) => value.to_string(),
                            None => argument["description"]
                                .as_str()
                                .unwrap_or_default()
                                .to_owned(),
                        })
                        .collect();
                    state
                        .page_errors
                        .push(format!("console.error: {}", arguments.join(" ")));
                }
                "Inspector.targetCrashed" => {
                    state.page_errors.push("the page crashed".to_owned());
                }
                _ => {}
            }
        }
        drop(state);
        shared.changed.notify_all();
    };
    let mut state = shared
        .state
        .lock()
        .expect("the browser state lock is poisoned");
    state.closed = Some(closed);
    drop(state);
    shared.changed.notify_all();
}

/// The text of a protocol `ExceptionDetails`: the exception's description (message and
/// stack) when there is one, else its text, with where it was thrown.
fn exception_text(details: &Value) -> String {
    let text = details["exception"]["description"]
        .as_str()
        .or_else(|| details["text"].as_str())
        .unwrap_or("an exception");
    match details["url"].as_str().filter(|url| !url.is_empty()) {
        Some(url) => format!(
            "{text} (at {url}:{}:{})",
            details["lineNumber"].as_u64().unwrap_or(0) + 1,
            details["columnNumber"].as_u64().unwrap_or(0) + 1
        ),
        None => text.to_owned(),
    }
}
