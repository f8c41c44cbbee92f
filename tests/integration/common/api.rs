//! The gRPC API for tests that talk to the server directly: request builders and reads.

use tilebox::api::convert::{id, uuid_of};
use tilebox::api::tilebox_v1::{Id, Pagination};
use tilebox::api::workflows_v1::{
    GetJobRequest, Job, ListJobTasksRequest, NextTaskToRun, SubmitJobRequest, TaskIdentifier,
    TaskSubmissionGroup, TaskSubmissions, TaskSummary,
};
use tilebox::client::Client;
use uuid::Uuid;

use super::TestServer;

/// A client of `server` without an API key.
pub async fn client(server: &TestServer) -> Client {
    Client::connect(server.url(), None).await.expect("client")
}

pub fn identifier(name: &str, version: &str) -> TaskIdentifier {
    TaskIdentifier {
        name: name.into(),
        version: version.into(),
    }
}

/// A group of `count` tasks (identifier 0, cluster 0, display 0) with `input`: no retries,
/// not optional.
pub fn task_group(dependencies: &[u32], count: usize, input: &[u8]) -> TaskSubmissionGroup {
    TaskSubmissionGroup {
        dependencies_on_other_groups: dependencies.to_vec(),
        inputs: vec![input.to_vec(); count],
        identifier_pointers: vec![0; count],
        cluster_slug_pointers: vec![0; count],
        display_pointers: vec![0; count],
        max_retries_values: vec![0; count],
        optional_values: vec![false; count],
    }
}

/// A job of `count` independent root tasks `name@version` with `input`, on the default
/// cluster.
pub fn job_request(name: &str, version: &str, count: usize, input: &[u8]) -> SubmitJobRequest {
    SubmitJobRequest {
        job_name: format!("{name}-job"),
        trace_parent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
        tasks: Some(TaskSubmissions {
            task_groups: vec![task_group(&[], count, input)],
            cluster_slug_lookup: vec![String::new()],
            identifier_lookup: vec![identifier(name, version)],
            display_lookup: vec![name.into()],
        }),
        ..SubmitJobRequest::default()
    }
}

/// What a runner on the default cluster advertising `name@version` asks for.
pub fn ask(name: &str, version: &str) -> Option<NextTaskToRun> {
    Some(NextTaskToRun {
        cluster_slug: String::new(),
        identifiers: vec![identifier(name, version)],
    })
}

/// The UUID of a wire id the server must have set.
pub fn uuid_of_id(wire: Option<&Id>) -> Uuid {
    uuid_of(wire)
        .expect("a valid id")
        .expect("the server set the id")
}

pub async fn get_job(client: &mut Client, job: Uuid) -> Job {
    client
        .jobs
        .get_job(GetJobRequest {
            job_id: Some(id(job)),
        })
        .await
        .expect("get job")
        .into_inner()
}

/// Every task of a job below `parent` (the roots when `None`), paging through ListJobTasks.
pub async fn list_tasks(client: &mut Client, job: Uuid, parent: Option<Uuid>) -> Vec<TaskSummary> {
    let mut tasks = Vec::new();
    let mut after = None;
    loop {
        let page = client
            .jobs
            .list_job_tasks(ListJobTasksRequest {
                job_id: Some(id(job)),
                parent_task_id: parent.map(id),
                page: Some(Pagination {
                    limit: Some(1000),
                    starting_after: after,
                }),
                ..ListJobTasksRequest::default()
            })
            .await
            .expect("list tasks")
            .into_inner()
            .page
            .expect("page");
        tasks.extend(page.tasks);
        match page.next_page {
            Some(next) => after = next.starting_after,
            None => return tasks,
        }
    }
}
