//! Tests of `tilebox job`: argument parsing, submissions, documents and tables, and the
//! task tree and `wait` against a scripted job service.

use std::sync::Mutex;

use clap::{CommandFactory, Parser};

use std::collections::{HashMap, HashSet};

use super::render::*;
use super::tree::*;
use super::*;
use crate::api::workflows_v1::{
    ExecutionStats, GetJobRequest, ListJobTasksRequest, Progress, TaskState, TaskStateCount,
    TaskSummary,
};

#[derive(Debug, Parser)]
struct JobCli {
    #[command(subcommand)]
    command: JobCommand,
}

fn submit_args(arguments: &[&str]) -> SubmitArgs {
    let command = JobCli::try_parse_from(["job", "submit"].iter().chain(arguments))
        .expect("valid arguments")
        .command;
    match command {
        JobCommand::Submit(arguments) => arguments,
        other => panic!("parsed {other:?}"),
    }
}

fn timestamp(seconds: i64) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds, nanos: 0 }
}

fn uuid(text: &str) -> Uuid {
    Uuid::parse_str(text).expect("a valid test uuid")
}

fn summary(id: Uuid, display: &str, state: TaskState, has_children: bool) -> TaskSummary {
    TaskSummary {
        id: Some(convert::id(id)),
        display: display.to_string(),
        state: state as i32,
        retry_count: 1,
        max_retries: 3,
        has_children,
        cluster_slug: "gpu".to_string(),
        submitted_at: Some(timestamp(0)),
        ..TaskSummary::default()
    }
}

#[test]
fn command_tree_is_consistent() {
    crate::cli::Cli::command().debug_assert();
}

#[test]
fn json_input_passes_through_byte_for_byte() {
    for input in [
        "5",
        "{\"a\": 1,  \"b\":[true]}",
        " \"quoted\" ",
        "null",
        "[1,2]",
    ] {
        assert_eq!(task_input(Some(input)).expect(input), input.as_bytes());
    }
}

#[test]
fn text_input_becomes_a_json_string() {
    for (input, expected) in [
        ("S2A_001", &b"\"S2A_001\""[..]),
        ("say \"hi\"", br#""say \"hi\"""#),
        ("", b"\"\""),
        ("x{y", b"\"x{y\""),
    ] {
        assert_eq!(task_input(Some(input)).expect(input), expected);
    }
}

#[test]
fn broken_objects_and_arrays_are_refused_with_the_position() {
    for (input, position) in [
        ("{broken", "line 1 column 2"),
        (r#"{"name": "Bob""#, "line 1 column 14"),
        (" [1, 2", "line 1 column 6"),
    ] {
        let error = task_input(Some(input)).expect_err(input);
        assert!(
            error.message.starts_with("--input is not valid JSON: ")
                && error.message.contains(position),
            "{input}: {}",
            error.message
        );
    }
}

#[test]
fn no_input_is_no_bytes() {
    assert!(task_input(None).expect("no input").is_empty());
}

#[test]
fn versions_must_be_v_major_dot_minor() {
    for version in ["v0.0", "v1.2", "v10.123"] {
        assert!(validate_version(version).is_ok(), "{version}");
    }
    for version in [
        "", "1.0", "v1", "v1.", "v.1", "v1.0.0", "va.b", "V1.0", "v1.0 ", "v-1.0",
    ] {
        let error = validate_version(version).expect_err(version);
        assert!(
            error.message.contains(&format!("`{version}`")),
            "{}",
            error.message
        );
    }
}

#[test]
fn trace_parent_is_a_w3c_traceparent() {
    let value = trace_parent();
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "{value}");
    assert_eq!(parts[0], "00");
    assert_eq!(parts[1].len(), 32);
    assert_eq!(parts[2].len(), 16);
    assert_eq!(parts[3], "01");
    assert!(
        value
            .bytes()
            .all(|byte| byte == b'-' || byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte)),
        "{value}"
    );
    assert_ne!(trace_parent()[3..35], value[3..35]);
}

#[test]
fn display_is_the_last_path_segment() {
    assert_eq!(display_of("MyTask"), "MyTask");
    assert_eq!(display_of("tilebox.com/example/MyTask"), "MyTask");
    assert_eq!(display_of("trailing/"), "trailing/");
}

#[test]
fn submit_request_has_one_group_with_one_task() {
    let arguments = submit_args(&[
        "--name",
        "ingest",
        "--task",
        "tilebox.com/example/Ingest",
        "--version",
        "v1.2",
        "--input",
        "S2A_001",
        "--cluster",
        "gpu",
        "--max-retries",
        "3",
    ]);
    let request = submit_request(&arguments, "00-trace".to_string()).unwrap();
    assert_eq!(request.job_name, "ingest");
    assert_eq!(request.trace_parent, "00-trace");
    let tasks = request.tasks.unwrap();
    assert_eq!(
        tasks.identifier_lookup,
        vec![TaskIdentifier {
            name: "tilebox.com/example/Ingest".to_string(),
            version: "v1.2".to_string()
        }]
    );
    assert_eq!(tasks.cluster_slug_lookup, vec!["gpu".to_string()]);
    assert_eq!(tasks.display_lookup, vec!["Ingest".to_string()]);
    assert_eq!(
        tasks.task_groups,
        vec![TaskSubmissionGroup {
            dependencies_on_other_groups: vec![],
            inputs: vec![b"\"S2A_001\"".to_vec()],
            identifier_pointers: vec![0],
            cluster_slug_pointers: vec![0],
            display_pointers: vec![0],
            max_retries_values: vec![3],
            optional_values: vec![false],
        }]
    );
}

#[test]
fn submit_request_defaults_to_v0_0_default_cluster_and_no_retries() {
    let arguments = submit_args(&["--name", "n", "--task", "Noop"]);
    let tasks = submit_request(&arguments, String::new())
        .unwrap()
        .tasks
        .unwrap();
    assert_eq!(tasks.identifier_lookup[0].version, "v0.0");
    assert_eq!(tasks.cluster_slug_lookup, vec![String::new()]);
    assert_eq!(tasks.task_groups[0].max_retries_values, vec![0]);
    assert_eq!(tasks.task_groups[0].inputs, vec![Vec::<u8>::new()]);
}

#[test]
fn submit_request_rejects_a_bad_version_by_name() {
    let arguments = submit_args(&["--name", "n", "--task", "Noop", "--version", "1.0"]);
    let error = submit_request(&arguments, String::new()).unwrap_err();
    assert!(error.message.contains("`1.0`"), "{}", error.message);
}

#[test]
fn bad_ids_are_user_errors_naming_the_value() {
    let error = parse_id("job id", "not-a-job").unwrap_err();
    assert_eq!(error.message, "invalid job id `not-a-job`: not a UUID");
    assert!(error.hint.is_some());
    assert_eq!(
        parse_id("job id", "0190A8C4-5E2B-7C1D-9F00-1A2B3C4D5E6F")
            .unwrap()
            .to_string(),
        "0190a8c4-5e2b-7c1d-9f00-1a2b3c4d5e6f"
    );
}

#[test]
fn job_states_parse_by_lowercase_name() {
    assert_eq!(parse_job_state("failed"), Ok(JobState::Failed));
    assert_eq!(parse_job_state("Running"), Ok(JobState::Running));
    let error = parse_job_state("queued").unwrap_err();
    assert!(
        error.contains("`queued`") && error.contains("canceled"),
        "{error}"
    );
}

fn sample_job() -> Job {
    Job {
        id: Some(convert::id(uuid("0190a8c4-5e2b-7c1d-9f00-1a2b3c4d5e6f"))),
        name: "ingest".to_string(),
        trace_parent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_string(),
        submitted_at: Some(timestamp(1_700_000_000)),
        progress: vec![Progress {
            label: "tiles".to_string(),
            total: 10,
            done: 4,
        }],
        state: JobState::Running as i32,
        execution_stats: Some(ExecutionStats {
            first_task_started_at: Some(timestamp(1_700_000_001)),
            last_task_stopped_at: None,
            compute_time: Some(prost_types::Duration {
                seconds: 2,
                nanos: 500_000_000,
            }),
            elapsed_time: Some(prost_types::Duration {
                seconds: 4,
                nanos: 0,
            }),
            parallelism: 0.625,
            total_tasks: 5,
            tasks_by_state: vec![
                TaskStateCount {
                    state: TaskState::Computed as i32,
                    count: 3,
                },
                TaskStateCount {
                    state: TaskState::Running as i32,
                    count: 1,
                },
                TaskStateCount {
                    state: TaskState::FailedOptional as i32,
                    count: 1,
                },
            ],
        }),
        ..Job::default()
    }
}

#[test]
fn job_document_uses_api_field_names_and_lowercase_states() {
    let document = Value::Object(job_document(&sample_job()).unwrap());
    assert_eq!(
        document,
        json!({
            "id": "0190a8c4-5e2b-7c1d-9f00-1a2b3c4d5e6f",
            "name": "ingest",
            "state": "running",
            "trace_parent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "submitted_at": "2023-11-14T22:13:20Z",
            "progress": [{"label": "tiles", "total": 10, "done": 4}],
            "execution_stats": {
                "first_task_started_at": "2023-11-14T22:13:21Z",
                "last_task_stopped_at": null,
                "compute_time_seconds": 2.5,
                "elapsed_time_seconds": 4.0,
                "parallelism": 0.625,
                "total_tasks": 5,
                "tasks_by_state": {"computed": 3, "running": 1, "failed_optional": 1},
            },
        })
    );
}

#[test]
fn job_document_without_stats_has_zero_counts() {
    let job = Job {
        execution_stats: None,
        ..sample_job()
    };
    let document = job_document(&job).unwrap();
    assert_eq!(
        document["execution_stats"],
        json!({
            "first_task_started_at": null,
            "last_task_stopped_at": null,
            "compute_time_seconds": null,
            "elapsed_time_seconds": null,
            "parallelism": 0.0,
            "total_tasks": 0,
            "tasks_by_state": {},
        })
    );
}

#[test]
fn job_rows_show_progress_and_counts() {
    assert_eq!(
        job_rows(&sample_job()).unwrap(),
        "Job        0190a8c4-5e2b-7c1d-9f00-1a2b3c4d5e6f\n\
         Name       ingest\n\
         State      running\n\
         Submitted  2023-11-14T22:13:20Z\n\
         Progress   tiles 4/10\n\
         Tasks      5 (computed 3, failed_optional 1, running 1)"
    );
}

fn sample_tree() -> Vec<TaskNode> {
    let root = uuid("00000000-0000-7000-8000-000000000001");
    let child = uuid("00000000-0000-7000-8000-000000000002");
    let grandchild = uuid("00000000-0000-7000-8000-000000000003");
    let mut children = HashMap::from([
        (
            root,
            vec![summary(child, "Child", TaskState::Running, true)],
        ),
        (
            child,
            vec![summary(grandchild, "Leaf", TaskState::Queued, false)],
        ),
    ]);
    let tree = assemble_tree(
        vec![summary(root, "Root", TaskState::Computed, true)],
        &mut children,
    )
    .unwrap();
    assert!(children.is_empty(), "every child list is used once");
    tree
}

#[test]
fn task_tree_nests_children_in_json() {
    let document = tasks_document(&sample_tree()).unwrap();
    assert_eq!(document[0]["display"], "Root");
    assert_eq!(document[0]["state"], "computed");
    assert_eq!(document[0]["id"], "00000000-0000-7000-8000-000000000001");
    assert_eq!(document[0]["retry_count"], 1);
    assert_eq!(document[0]["max_retries"], 3);
    assert_eq!(document[0]["cluster_slug"], "gpu");
    assert_eq!(document[0]["optional"], false);
    assert_eq!(document[0]["submitted_at"], "1970-01-01T00:00:00Z");
    assert_eq!(document[0]["started_at"], Value::Null);
    assert_eq!(document[0]["children"][0]["display"], "Child");
    assert_eq!(document[0]["children"][0]["children"][0]["state"], "queued");
    assert_eq!(
        document[0]["children"][0]["children"][0]["children"],
        json!([])
    );
}

#[test]
fn task_table_indents_children() {
    assert_eq!(
        task_table(&sample_tree()).unwrap().render(),
        "TASK      STATE     DURATION  RETRIES  ID\n\
         Root      computed  -         1/3      00000000-0000-7000-8000-000000000001\n  \
         Child   running   -         1/3      00000000-0000-7000-8000-000000000002\n    \
         Leaf  queued    -         1/3      00000000-0000-7000-8000-000000000003"
    );
}

#[test]
fn queue_parents_skips_leaves_and_repeats() {
    let parent = uuid("00000000-0000-7000-8000-000000000001");
    let leaf = uuid("00000000-0000-7000-8000-000000000002");
    let tasks = vec![
        summary(parent, "P", TaskState::Computed, true),
        summary(leaf, "L", TaskState::Queued, false),
        summary(parent, "P", TaskState::Computed, true),
    ];
    let mut seen = HashSet::new();
    let mut parents = std::collections::VecDeque::new();
    queue_parents(&tasks, &mut seen, &mut parents).unwrap();
    assert_eq!(parents, [parent]);
}

#[test]
fn jobs_table_lists_id_name_state_submitted_and_tasks() {
    assert_eq!(
        jobs_table(&[sample_job()]).unwrap().render(),
        "ID                                    NAME    STATE    SUBMITTED             TASKS\n\
         0190a8c4-5e2b-7c1d-9f00-1a2b3c4d5e6f  ingest  running  2023-11-14T22:13:20Z  5"
    );
}

/// A job service that answers `GetJob` with a scripted series of states and `ListJobTasks`
/// with a two-page root list and one child; everything else is unimplemented.
mod fake {
    use std::sync::Mutex;

    use tonic::{Request, Response, Status};

    use super::*;
    use crate::api::workflows_v1::job_service_server::{JobService, JobServiceServer};
    use crate::api::workflows_v1::{
        CancelJobResponse, GetJobStateCountsRequest, GetJobStateCountsResponse, JobTaskPage,
        ListJobTasksResponse, QueryJobsResponse, RetryJobResponse,
    };

    pub const ROOT_A: &str = "00000000-0000-7000-8000-00000000000a";
    pub const ROOT_B: &str = "00000000-0000-7000-8000-00000000000b";
    pub const CHILD: &str = "00000000-0000-7000-8000-00000000000c";

    pub struct Jobs {
        pub states: Mutex<Vec<JobState>>,
    }

    #[tonic::async_trait]
    impl JobService for Jobs {
        async fn submit_job(&self, _: Request<SubmitJobRequest>) -> Result<Response<Job>, Status> {
            Err(Status::unimplemented("submit"))
        }

        async fn get_job(&self, request: Request<GetJobRequest>) -> Result<Response<Job>, Status> {
            let mut states = self.states.lock().expect("not poisoned");
            let state = if states.len() > 1 {
                states.remove(0)
            } else {
                states[0]
            };
            Ok(Response::new(Job {
                id: request.into_inner().job_id,
                state: state as i32,
                ..Job::default()
            }))
        }

        async fn list_job_tasks(
            &self,
            request: Request<ListJobTasksRequest>,
        ) -> Result<Response<ListJobTasksResponse>, Status> {
            let request = request.into_inner();
            let parent = convert::uuid_of(request.parent_task_id.as_ref()).expect("valid id");
            let after = request
                .page
                .and_then(|page| convert::uuid_of(page.starting_after.as_ref()).expect("valid id"));
            let (tasks, next) = match (parent, after) {
                (None, None) => (
                    vec![summary(uuid(ROOT_A), "A", TaskState::Computed, true)],
                    Some(uuid(ROOT_A)),
                ),
                (None, Some(_)) => (
                    vec![summary(uuid(ROOT_B), "B", TaskState::Queued, false)],
                    None,
                ),
                (Some(parent), None) if parent == uuid(ROOT_A) => (
                    vec![summary(uuid(CHILD), "C", TaskState::Running, false)],
                    None,
                ),
                _ => return Err(Status::invalid_argument("unexpected page")),
            };
            Ok(Response::new(ListJobTasksResponse {
                page: Some(JobTaskPage {
                    parent_task_id: request.parent_task_id,
                    tasks,
                    next_page: next.map(|id| Pagination {
                        limit: None,
                        starting_after: Some(convert::id(id)),
                    }),
                }),
                prefetched_child_pages: Vec::new(),
            }))
        }

        async fn retry_job(
            &self,
            _: Request<RetryJobRequest>,
        ) -> Result<Response<RetryJobResponse>, Status> {
            Err(Status::unimplemented("retry"))
        }

        async fn cancel_job(
            &self,
            _: Request<CancelJobRequest>,
        ) -> Result<Response<CancelJobResponse>, Status> {
            Err(Status::unimplemented("cancel"))
        }

        async fn query_jobs(
            &self,
            _: Request<QueryJobsRequest>,
        ) -> Result<Response<QueryJobsResponse>, Status> {
            Err(Status::unimplemented("query"))
        }

        async fn get_job_state_counts(
            &self,
            _: Request<GetJobStateCountsRequest>,
        ) -> Result<Response<GetJobStateCountsResponse>, Status> {
            Err(Status::unimplemented("counts"))
        }
    }

    /// Serves `jobs` on a free local port until the returned sender is dropped.
    pub async fn serve(jobs: Jobs) -> (Client, tokio::sync::oneshot::Sender<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free port");
        let address = listener.local_addr().expect("a bound address");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(JobServiceServer::new(jobs))
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    async {
                        let _ = stopped.await;
                    },
                ),
        );
        let client = Client::connect(&format!("http://{address}"), None)
            .await
            .expect("a client");
        (client, stop)
    }
}

#[tokio::test]
async fn task_tree_follows_pages_and_children() {
    let (mut client, _stop) = fake::serve(fake::Jobs {
        states: Mutex::new(vec![JobState::Running]),
    })
    .await;
    let tree = fetch_task_tree(&mut client, Uuid::nil()).await.unwrap();
    let document = tasks_document(&tree).unwrap();
    assert_eq!(document[0]["id"], fake::ROOT_A);
    assert_eq!(document[0]["children"][0]["id"], fake::CHILD);
    assert_eq!(document[1]["id"], fake::ROOT_B);
    assert_eq!(document.as_array().map(Vec::len), Some(2));
}

#[tokio::test]
async fn a_limited_task_tree_stops_after_the_roots_and_says_so() {
    let (mut client, _stop) = fake::serve(fake::Jobs {
        states: Mutex::new(vec![JobState::Running]),
    })
    .await;
    let (tree, complete) = fetch_task_tree_up_to(&mut client, Uuid::nil(), 2)
        .await
        .unwrap();
    assert!(!complete, "the child was not fetched");
    let document = tasks_document(&tree).unwrap();
    assert_eq!(document.as_array().map(Vec::len), Some(2), "every root");
    assert_eq!(document[0]["children"], serde_json::json!([]));
    let (_, complete) = fetch_task_tree_up_to(&mut client, Uuid::nil(), 3)
        .await
        .unwrap();
    assert!(complete, "roots and the child fit in 3");
}

#[tokio::test]
async fn wait_polls_until_finished_and_fails_with_exit_code_one() {
    let (mut client, _stop) = fake::serve(fake::Jobs {
        states: Mutex::new(vec![
            JobState::Submitted,
            JobState::Running,
            JobState::Failed,
        ]),
    })
    .await;
    let code = wait_for(&mut client, Uuid::nil(), Some(10), true)
        .await
        .unwrap();
    assert_eq!(code, ExitCode::from(1));
}

#[tokio::test]
async fn wait_for_a_completed_job_exits_zero() {
    let (mut client, _stop) = fake::serve(fake::Jobs {
        states: Mutex::new(vec![JobState::Running, JobState::Completed]),
    })
    .await;
    let code = wait_for(&mut client, Uuid::nil(), None, true)
        .await
        .unwrap();
    assert_eq!(code, ExitCode::SUCCESS);
}

#[tokio::test]
async fn wait_times_out_with_a_user_error_naming_the_state() {
    let (mut client, _stop) = fake::serve(fake::Jobs {
        states: Mutex::new(vec![JobState::Started]),
    })
    .await;
    let error = wait_for(&mut client, Uuid::nil(), Some(0), true)
        .await
        .unwrap_err();
    let error = error.downcast_ref::<UserError>().expect("a user error");
    assert_eq!(
        error.message,
        "job 00000000-0000-0000-0000-000000000000 still started after 0s"
    );
}

#[test]
fn console_links_point_at_the_servers_own_console() {
    let id = Uuid::parse_str("019c0000-0000-7000-8000-000000000001").unwrap();
    assert_eq!(
        console_url("http://127.0.0.1:8083/", id).as_deref(),
        Some("http://127.0.0.1:8083/jobs/019c0000-0000-7000-8000-000000000001")
    );
    assert_eq!(
        console_url("https://tilebox.example.org:443", id).as_deref(),
        Some("https://tilebox.example.org:443/jobs/019c0000-0000-7000-8000-000000000001")
    );
    assert_eq!(console_url("https://api.tilebox.com", id), None);
}
