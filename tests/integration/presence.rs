//! Runner presence against a real server and real runner processes: `tilebox runner list`
//! shows who asks each cluster for work, with slots and advertised tasks; a runner that
//! stopped says so in its last call and is listed as stopped at once, one killed is gone
//! after the timeout (both with `--all`); only admin and read-only keys may list runners.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::common::{
    KeysFile, RunnerProcess, TestServer, example, job_document, json_of, project_runner, stderr_of,
    submit, wait_until,
};

/// A runner is gone after this long without a call (hidden `--presence-timeout-ms`).
const PRESENCE_TIMEOUT_MS: &str = "3000";

fn start_runner(server: &TestServer, project: &Path, args: &[&str]) -> RunnerProcess {
    let log = project.join(format!("runner-{}.log", uuid::Uuid::new_v4()));
    RunnerProcess::spawn(&mut project_runner(server.url(), project, args), log)
}

fn runner_list(server: &TestServer, args: &[&str]) -> Vec<Value> {
    let mut command = vec!["--json", "runner", "list"];
    command.extend_from_slice(args);
    match json_of(&server.tilebox(&command)) {
        Value::Array(runners) => runners,
        other => panic!("runner list --json prints an array: {other}"),
    }
}

fn advertises_sleep_task(runner: &Value) -> bool {
    runner["tasks"]
        .as_array()
        .is_some_and(|tasks| tasks.iter().any(|task| task["name"] == "SleepTask"))
}

#[test]
fn runner_list_shows_connected_stopped_and_gone_runners() {
    let server = TestServer::start_with(&["--presence-timeout-ms", PRESENCE_TIMEOUT_MS]);
    let project = example("parallel-sleep");
    let mut one = start_runner(&server, project.path(), &["-n", "1"]);
    let mut two = start_runner(&server, project.path(), &["-n", "2"]);

    wait_until("two connected runners", Duration::from_secs(120), || {
        let runners = runner_list(&server, &[]);
        runners.len() == 2 && runners.iter().all(advertises_sleep_task)
    })
    .unwrap_or_else(|timed_out| panic!("{timed_out}\n--- runner ---\n{}", one.log()));
    let runners = runner_list(&server, &[]);
    let mut slots: Vec<u64> = runners
        .iter()
        .map(|runner| runner["slots"].as_u64().expect("slots"))
        .collect();
    slots.sort();
    assert_eq!(slots, [1, 2], "{runners:?}");
    for runner in &runners {
        assert_eq!(runner["state"], "connected");
        assert_eq!(runner["kind"], "tilebox");
        assert_eq!(runner["cluster"], "default");
        assert_eq!(runner["busy_slots"], 0, "idle: {runner}");
        assert_eq!(runner["version"], env!("CARGO_PKG_VERSION"));
        assert!(
            runner["id"]
                .as_str()
                .is_some_and(|id| id.starts_with("runner:")),
            "{runner}"
        );
        assert!(
            !runner["hostname"].as_str().unwrap_or("").is_empty(),
            "{runner}"
        );
    }

    let table = server.tilebox(&["runner", "list"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(table.status.success(), "{}", stderr_of(&table));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "a header and two runners:\n{text}");
    for column in [
        "RUNNER",
        "CLUSTER",
        "KIND",
        "SLOTS",
        "TASKS",
        "LAST CONTACT",
        "STATE",
    ] {
        assert!(lines[0].contains(column), "{text}");
    }
    assert!(text.contains("0/1") && text.contains("0/2"), "{text}");
    assert!(text.contains("SleepTask@"), "{text}");
    assert_eq!(text.matches("connected").count(), 2, "{text}");

    // The one-slot runner stops: its last call says so, and it is listed as stopped (only
    // with --all). Timing out would show it gone, so "stopped" is the runner's own word.
    let stopped_id = runners
        .iter()
        .find(|runner| runner["slots"] == 1)
        .expect("the one-slot runner")["id"]
        .clone();
    one.signal("-TERM");
    one.wait_for_exit("the stopped runner to exit", Duration::from_secs(60));
    wait_until(
        "the stopped runner to be listed as stopped",
        Duration::from_secs(30),
        || {
            runner_list(&server, &["--all"])
                .iter()
                .any(|runner| runner["id"] == stopped_id && runner["state"] == "stopped")
        },
    )
    .expect("a SIGTERMed runner is listed as stopped");
    let all = runner_list(&server, &["--all"]);
    assert_eq!(all.len(), 2, "{all:?}");
    assert!(
        all.iter()
            .any(|runner| runner["id"] != stopped_id && runner["state"] == "connected"),
        "the other runner is still connected: {all:?}"
    );
    let connected = runner_list(&server, &[]);
    assert_eq!(connected.len(), 1, "{connected:?}");
    assert_ne!(connected[0]["id"], stopped_id);
    let table = server.tilebox(&["runner", "list", "--all"]);
    assert!(
        String::from_utf8_lossy(&table.stdout).contains("stopped"),
        "{}",
        String::from_utf8_lossy(&table.stdout)
    );

    // A cluster filter: the default cluster has them, another cluster none, an unknown one
    // is an error that names it.
    assert_eq!(
        runner_list(&server, &["--all", "--cluster", "default"]).len(),
        2
    );
    json_of(&server.tilebox(&["--json", "cluster", "create", "Empty", "--slug", "empty"]));
    assert!(runner_list(&server, &["--cluster", "empty"]).is_empty());
    let unknown = server.tilebox(&["runner", "list", "--cluster", "nowhere"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(
        stderr_of(&unknown).contains("cluster `nowhere` not found"),
        "{}",
        stderr_of(&unknown)
    );

    // A runner killed outright says nothing: it is gone once the timeout passed.
    let killed_id = runner_list(&server, &[])[0]["id"].clone();
    two.signal("-KILL");
    two.wait_for_exit("the killed runner to exit", Duration::from_secs(30));
    wait_until(
        "the killed runner to be gone",
        Duration::from_secs(30),
        || {
            runner_list(&server, &["--all"])
                .iter()
                .any(|runner| runner["id"] == killed_id && runner["state"] == "gone")
        },
    )
    .expect("a killed runner is gone after the presence timeout");
    assert!(runner_list(&server, &[]).is_empty());
    server.stop();
}

/// The hostname and advertised identifiers (JSON) the server stored for `runner`, read from
/// its SQLite file.
fn stored_runner(server: &TestServer, runner: &str) -> Option<(String, String)> {
    let database = rusqlite::Connection::open_with_flags(
        server.data_dir().join("tilebox.sqlite3"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .ok()?;
    database
        .query_row(
            "SELECT hostname, identifiers FROM runners WHERE runner = ?1",
            [runner],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .ok()
}

/// A server restarted while a runner's only slot runs a long task: the runner only extends
/// its lease, never claims, yet it is listed connected again (with its host and tasks, as
/// written before the restart) long past the presence timeout.
#[test]
fn a_busy_runner_is_listed_again_after_a_server_restart() {
    let mut server = TestServer::start_with(&[
        "--presence-timeout-ms",
        PRESENCE_TIMEOUT_MS,
        // Extended every second (a third of the lease), so an extension that falls into the
        // restart is retried before the lease runs out.
        "--lease-seconds",
        "4",
        "--max-lease-seconds",
        "4",
    ]);
    let project = example("parallel-sleep");
    let runner = start_runner(&server, project.path(), &["-n", "1"]);
    wait_until("a connected runner", Duration::from_secs(120), || {
        runner_list(&server, &[]).len() == 1
    })
    .unwrap_or_else(|timed_out| panic!("{timed_out}\n--- runner ---\n{}", runner.log()));
    let id = runner_list(&server, &[])[0]["id"].clone();
    let job = submit(&server, "SleepTask", r#"{"index": 0, "seconds": 30}"#);
    wait_until("the task to run", Duration::from_secs(60), || {
        job_document(&server, &job)["state"] == "running"
    })
    .expect("the runner claims the task");
    // The restart kills the server, so the runner's host and tasks survive it only once a
    // flush (every 2 s) has written them.
    wait_until(
        "the runner's row in the store",
        Duration::from_secs(30),
        || {
            stored_runner(&server, id.as_str().expect("runner id")).is_some_and(
                |(hostname, identifiers)| !hostname.is_empty() && identifiers.contains("SleepTask"),
            )
        },
    )
    .expect("presence writes the runner's contact to the store");

    server.restart();
    // Past the presence timeout (3 s) after the restart, with the task still running: only
    // its lease extensions (every second) can have told the new server of the runner.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(job_document(&server, &job)["state"], "running");
    let listed = runner_list(&server, &[]);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["id"], id);
    assert_eq!(listed[0]["state"], "connected");
    assert_eq!(listed[0]["busy_slots"], 1, "{listed:?}");
    assert!(advertises_sleep_task(&listed[0]), "{listed:?}");
    assert!(listed[0]["hostname"] != "", "{listed:?}");
}

/// Runner keys may not list runners (the list names other runners' hosts and addresses);
/// admin and read-only keys may.
#[test]
fn only_admin_and_read_only_keys_list_runners() {
    let keys = KeysFile::new();
    let admin = keys.create("boss", "admin", &[]);
    let reader = keys.create("dashboard", "read-only", &[]);
    let runner = keys.create("worker", "runner", &["*"]);
    let server = TestServer::start_with(&["--keys-file", keys.path()]);
    for key in [&admin, &reader] {
        let listed = server.tilebox(&["--api-key", key, "--json", "runner", "list"]);
        assert!(listed.status.success(), "{}", stderr_of(&listed));
        assert_eq!(json_of(&listed), Value::Array(Vec::new()));
    }
    let refused = server.tilebox(&["--api-key", &runner, "runner", "list"]);
    assert_eq!(refused.status.code(), Some(1), "{}", stderr_of(&refused));
    assert!(
        stderr_of(&refused).contains("may not list runners"),
        "{}",
        stderr_of(&refused)
    );
    server.stop();
}
