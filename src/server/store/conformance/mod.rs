//! The conformance suite every `Store` backend passes: one async check per scheduling rule.
//!
//! A backend's tests invoke [`conformance_tests!`] with an expression that opens a fresh,
//! empty store and answers it with a guard that keeps its resources (e.g. a temp dir) alive;
//! it expands to one `#[tokio::test]` per rule, named after the rule, so a failing rule
//! hides none of the others. Each check drives its store only through the [`Store`] trait and
//! asserts the states and counts a reader (the API, the SDK) would see. The rules are
//! DESIGN.md §4 and the SDK reference §1.3, §5.5.
//!
//! Layout:
//! - `mod.rs`: [`conformance_tests!`]
//! - `fixtures.rs`: builders and small steps the rules share
//! - `batches.rs`, `claims.rs`, `failures.rs`, `leases.rs`, `lookups.rs`, `reads.rs`,
//!   `releases.rs`, `runners.rs`, `sessions.rs`, `telemetry.rs`: the rules, by area
//! - `replicas.rs`: [`replica_rules!`], two stores on one state racing each other

mod batches;
mod claims;
mod failures;
mod fixtures;
mod leases;
mod lookups;
mod reads;
mod releases;
mod replicas;
mod runners;
mod sessions;
mod telemetry;

pub(crate) use batches::*;
pub(crate) use claims::*;
pub(crate) use failures::*;
pub(crate) use leases::*;
pub(crate) use lookups::*;
pub(crate) use reads::*;
pub(crate) use releases::*;
pub(crate) use replicas::*;
pub(crate) use runners::*;
pub(crate) use sessions::*;
pub(crate) use telemetry::*;

/// One `#[tokio::test]` per rule of the suite, each on a fresh store from `$open`: an
/// expression whose future answers `(store, guard)`; the guard is dropped after the check.
///
/// ```ignore
/// mod conformance {
///     use super::*;
///     crate::server::store::conformance::conformance_tests!(async {
///         let directory = tempfile::tempdir().expect("temp dir");
///         (SqliteStore::open(directory.path()).expect("open store"), directory)
///     });
/// }
/// ```
macro_rules! conformance_tests {
    ($open:expr) => {
        $crate::server::store::conformance::conformance_tests!(
            @rules $open;
            clusters_have_a_fixed_default,
            submitting_to_an_unknown_cluster_stores_nothing,
            claims_match_cluster_name_and_compatible_version,
            claimed_task_runs_once_and_drives_job_state,
            dependants_wait_for_the_whole_dependency_tree,
            subtasks_run_after_their_parent_and_complete_the_job,
            workflow_errors_retry_until_max_retries_then_fail_the_job,
            non_workflow_errors_requeue_without_counting,
            failed_optional_subtask_lets_its_dependant_run,
            failure_inside_optional_branch_skips_the_rest_of_it,
            retry_job_requeues_failed_tasks_and_resumes,
            cancel_job_stops_queued_tasks_and_lets_running_ones_finish,
            lease_expiry_requeues_then_fails_the_task,
            reports_from_a_lost_lease_are_stale,
            extend_lease_keeps_a_running_task,
            progress_is_per_task_and_summed_per_job,
            list_tasks_pages_children_in_submission_order,
            query_jobs_filters_and_pages,
            execution_stats_follow_the_tasks,
            execution_stats_equal_a_recount_of_the_tasks,
            concurrent_submits_and_claims_complete_every_job_once,
            workflows_are_managed_and_kept_while_deployed,
            artifacts_are_registered_once_per_digest,
            publishing_is_idempotent_per_artifact_and_fingerprint,
            a_cluster_runs_one_release_per_workflow,
            telemetry_is_read_per_trace_in_arrival_order_and_expires,
            deleting_a_cluster_removes_its_deployments,
            batched_reports_apply_each_on_its_own_and_claim_up_to_capacity,
            leases_extend_together_only_for_their_claimant,
            non_workflow_failures_are_capped_then_fail_the_task,
            a_hand_back_requeues_without_counting_any_number_of_times,
            appended_failure_reasons_keep_the_display_within_its_limit,
            reports_and_extensions_from_another_claimant_are_stale_from_the_first_claim,
            tasks_name_the_claimant_of_their_latest_attempt,
            get_tasks_answers_the_asked_tasks_of_the_job_in_order,
            presence_upsert_keeps_the_latest_contact_and_the_new_identifiers,
            runners_unseen_since_are_not_listed,
            runners_are_listed_per_cluster,
            old_runners_are_deleted,
            console_sessions_expire_and_end_at_logout,
        );
    };
    (@rules $open:expr; $($rule:ident,)+) => {$(
        #[tokio::test]
        async fn $rule() {
            let (store, guard) = $open.await;
            $crate::server::store::conformance::$rule(store).await;
            drop(guard);
        }
    )+};
}
pub(crate) use conformance_tests;
