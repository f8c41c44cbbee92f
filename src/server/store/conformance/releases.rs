//! Workflows, artifacts, releases and deployments.

use uuid::Uuid;

use super::fixtures::*;
use crate::api::convert::now_millis;
use crate::server::store::{DEFAULT_CLUSTER_SLUG, Error, Release, Store, Workflow};

/// Rule 21: workflows are created, read, listed, updated and deleted; duplicates and unknown
/// slugs are errors; a deployed workflow is kept, and deleting it removes its releases.
pub(crate) async fn workflows_are_managed_and_kept_while_deployed<S: Store>(store: S) {
    assert_eq!(
        store.list_workflows().await.expect("list workflows"),
        [],
        "a fresh store has no workflows"
    );
    let ingest = workflow("ingest");
    assert_eq!(
        store
            .create_workflow(ingest.clone())
            .await
            .expect("create workflow"),
        ingest
    );
    assert_eq!(
        store.get_workflow("ingest").await.expect("get workflow"),
        ingest
    );
    let report = add_workflow(&store, "report").await;
    let mut listed = store.list_workflows().await.expect("list workflows");
    listed.sort_by(|a, b| a.slug.cmp(&b.slug));
    assert_eq!(listed, [ingest.clone(), report.clone()]);

    let duplicate = store
        .create_workflow(Workflow {
            name: "Another ingest".to_string(),
            ..ingest.clone()
        })
        .await;
    assert!(
        matches!(&duplicate, Err(Error::WorkflowExists { slug }) if slug == "ingest"),
        "a duplicate slug is refused: {duplicate:?}"
    );
    assert_eq!(
        store.get_workflow("ingest").await.expect("get workflow"),
        ingest,
        "the duplicate changed nothing"
    );

    let renamed = store
        .update_workflow("ingest", Some("Ingestion".to_string()), None, None)
        .await
        .expect("rename workflow");
    assert_eq!(
        renamed,
        Workflow {
            name: "Ingestion".to_string(),
            ..ingest.clone()
        }
    );
    let described = store
        .update_workflow(
            "ingest",
            None,
            Some("new summary".to_string()),
            Some("new description".to_string()),
        )
        .await
        .expect("describe workflow");
    assert_eq!(
        described,
        Workflow {
            slug: "ingest".to_string(),
            name: "Ingestion".to_string(),
            summary: "new summary".to_string(),
            description: "new description".to_string(),
        }
    );
    assert_eq!(
        store.get_workflow("ingest").await.expect("get workflow"),
        described
    );
    assert_eq!(
        store.get_workflow("report").await.expect("get workflow"),
        report,
        "other workflows are untouched"
    );

    let not_found = |result: &Result<(), Error>| matches!(result, Err(Error::WorkflowNotFound { slug }) if slug == "nowhere");
    let unknown = store.get_workflow("nowhere").await.map(drop);
    assert!(
        not_found(&unknown),
        "getting an unknown workflow: {unknown:?}"
    );
    let unknown = store
        .update_workflow("nowhere", Some("x".to_string()), None, None)
        .await
        .map(drop);
    assert!(
        not_found(&unknown),
        "updating an unknown workflow: {unknown:?}"
    );
    let unknown = store.delete_workflow("nowhere").await;
    assert!(
        not_found(&unknown),
        "deleting an unknown workflow: {unknown:?}"
    );

    // A deployed workflow is kept until it is undeployed everywhere.
    add_cluster(&store, "gpu").await;
    let artifact = store
        .register_artifact(digest('a'), 1_024)
        .await
        .expect("register artifact");
    let release = publish(&store, "ingest", &artifact, "first").await;
    store
        .deploy_release(
            "ingest",
            release.id,
            vec![DEFAULT_CLUSTER_SLUG.to_string(), "gpu".to_string()],
        )
        .await
        .expect("deploy release");
    let refused = store.delete_workflow("ingest").await;
    assert!(
        matches!(&refused, Err(Error::Conflict(message))
            if message.contains(DEFAULT_CLUSTER_SLUG) && message.contains("gpu")),
        "deleting a deployed workflow is refused, naming its clusters: {refused:?}"
    );
    assert_eq!(
        store.get_workflow("ingest").await.expect("get workflow"),
        described,
        "the refused delete changed nothing"
    );
    assert_eq!(
        release_ids(store.list_releases("ingest").await.expect("list releases")),
        [release.id]
    );
    store
        .undeploy_release("ingest", release.id, vec![DEFAULT_CLUSTER_SLUG.to_string()])
        .await
        .expect("undeploy release");
    let refused = store.delete_workflow("ingest").await;
    assert!(
        matches!(&refused, Err(Error::Conflict(message)) if message.contains("gpu")),
        "still deployed to gpu: {refused:?}"
    );
    store
        .undeploy_release("ingest", release.id, vec!["gpu".to_string()])
        .await
        .expect("undeploy release");

    store
        .delete_workflow("ingest")
        .await
        .expect("delete workflow");
    let gone = store.get_workflow("ingest").await;
    assert!(
        matches!(&gone, Err(Error::WorkflowNotFound { slug }) if slug == "ingest"),
        "a deleted workflow is gone: {gone:?}"
    );
    let gone = store.list_releases("ingest").await;
    assert!(
        matches!(&gone, Err(Error::WorkflowNotFound { .. })),
        "{gone:?}"
    );
    let gone = store.get_release("ingest", release.id).await;
    assert!(
        matches!(&gone, Err(Error::ReleaseNotFound { id, .. }) if *id == release.id),
        "{gone:?}"
    );
    assert_eq!(
        store.list_workflows().await.expect("list workflows"),
        [report]
    );
    assert_eq!(deployments(&store, "gpu").await, []);
    assert_eq!(deployments(&store, DEFAULT_CLUSTER_SLUG).await, []);

    // The releases are gone, not hidden: a workflow of the same slug starts empty.
    add_workflow(&store, "ingest").await;
    assert_eq!(
        store.list_releases("ingest").await.expect("list releases"),
        []
    );
    let republished = publish(&store, "ingest", &artifact, "first").await;
    assert_ne!(
        republished.id, release.id,
        "the old release is not answered"
    );
    store
        .delete_workflow("ingest")
        .await
        .expect("a workflow with undeployed releases is deleted");
    let again = store.delete_workflow("ingest").await;
    assert!(
        matches!(&again, Err(Error::WorkflowNotFound { .. })),
        "deleting twice: {again:?}"
    );
    let gone = store.get_release("ingest", republished.id).await;
    assert!(
        matches!(&gone, Err(Error::ReleaseNotFound { .. })),
        "{gone:?}"
    );
}

/// Rule 22: an artifact is registered once per digest and found by digest or by id.
pub(crate) async fn artifacts_are_registered_once_per_digest<S: Store>(store: S) {
    let first = store
        .register_artifact(digest('a'), 1_024)
        .await
        .expect("register artifact");
    assert_eq!(
        (first.digest.as_str(), first.size),
        (digest('a').as_str(), 1_024)
    );
    let again = store
        .register_artifact(digest('a'), 1_024)
        .await
        .expect("register artifact again");
    assert_eq!(again, first, "registering again answers the same record");
    let resized = store
        .register_artifact(digest('a'), 2_048)
        .await
        .expect("register artifact again");
    assert_eq!(resized, first, "the existing record is kept as it was");
    let other = store
        .register_artifact(digest('b'), 7)
        .await
        .expect("register another artifact");
    assert_ne!(other.id, first.id);
    assert_eq!(
        (other.digest.as_str(), other.size),
        (digest('b').as_str(), 7)
    );

    assert_eq!(
        store
            .get_artifact(Some(digest('a')), None)
            .await
            .expect("get artifact by digest"),
        first
    );
    assert_eq!(
        store
            .get_artifact(None, Some(first.id))
            .await
            .expect("get artifact by id"),
        first
    );
    assert_eq!(
        store
            .get_artifact(None, Some(other.id))
            .await
            .expect("get artifact by id"),
        other
    );
    assert_eq!(
        store
            .get_artifact(Some(digest('b')), None)
            .await
            .expect("get artifact by digest"),
        other
    );

    let unknown = store.get_artifact(Some(digest('c')), None).await;
    assert!(
        matches!(&unknown, Err(Error::ArtifactNotFound(name)) if name.contains(&digest('c'))),
        "an unknown digest: {unknown:?}"
    );
    let missing = Uuid::now_v7();
    let unknown = store.get_artifact(None, Some(missing)).await;
    assert!(
        matches!(&unknown, Err(Error::ArtifactNotFound(name)) if name.contains(&missing.to_string())),
        "an unknown id: {unknown:?}"
    );
}

/// Rule 23: publishing answers the existing release for the same artifact and fingerprint,
/// a new one otherwise; releases are listed newest first and belong to one workflow.
pub(crate) async fn publishing_is_idempotent_per_artifact_and_fingerprint<S: Store>(store: S) {
    add_workflow(&store, "ingest").await;
    add_workflow(&store, "report").await;
    let a = store
        .register_artifact(digest('a'), 100)
        .await
        .expect("register artifact");
    let b = store
        .register_artifact(digest('b'), 200)
        .await
        .expect("register artifact");

    let unknown = store
        .publish_release("nowhere", a.id, "one".to_string(), Vec::new())
        .await;
    assert!(
        matches!(&unknown, Err(Error::WorkflowNotFound { slug }) if slug == "nowhere"),
        "an unknown workflow: {unknown:?}"
    );
    let unknown = store
        .publish_release("ingest", Uuid::now_v7(), "one".to_string(), Vec::new())
        .await;
    assert!(
        matches!(&unknown, Err(Error::ArtifactNotFound(_))),
        "an unknown artifact: {unknown:?}"
    );
    assert_eq!(
        store.list_releases("ingest").await.expect("list releases"),
        [],
        "nothing was published"
    );

    let before = now_millis();
    let content = vec![0x0a, 0x00, 0xff, 0x10];
    let first = store
        .publish_release("ingest", a.id, "one".to_string(), content.clone())
        .await
        .expect("publish release");
    let after = now_millis();
    assert_eq!(first.workflow, "ingest");
    assert_eq!(first.artifact, a);
    assert_eq!(first.fingerprint, "one");
    assert_eq!(first.content, content, "the content is opaque bytes");
    assert!(
        before <= first.created_at && first.created_at <= after,
        "{before} {} {after}",
        first.created_at
    );
    assert!(first.clusters.is_empty(), "a new release is not deployed");

    let again = store
        .publish_release("ingest", a.id, "one".to_string(), b"changed".to_vec())
        .await
        .expect("publish release again");
    assert_eq!(
        again, first,
        "the same artifact and fingerprint answer the release"
    );
    let second = publish(&store, "ingest", &a, "two").await;
    assert_ne!(second.id, first.id, "another fingerprint is a new release");
    assert_eq!((second.fingerprint.as_str(), &second.artifact), ("two", &a));
    let third = publish(&store, "ingest", &b, "one").await;
    assert!(
        third.id != first.id && third.id != second.id,
        "another artifact is a new release"
    );
    assert_eq!(third.artifact, b);
    let elsewhere = publish(&store, "report", &a, "one").await;
    assert!(
        ![first.id, second.id, third.id].contains(&elsewhere.id),
        "another workflow's release is its own"
    );
    assert_eq!(elsewhere.workflow, "report");

    let listed = store.list_releases("ingest").await.expect("list releases");
    assert_eq!(
        listed,
        [third.clone(), second.clone(), first.clone()],
        "newest first"
    );
    assert_eq!(
        release_ids(store.list_releases("report").await.expect("list releases")),
        [elsewhere.id]
    );
    assert_eq!(
        store
            .get_release("ingest", second.id)
            .await
            .expect("get release"),
        second
    );
    let foreign = store.get_release("report", first.id).await;
    assert!(
        matches!(&foreign, Err(Error::ReleaseNotFound { workflow, id })
            if workflow == "report" && *id == first.id),
        "another workflow's release is not found: {foreign:?}"
    );
    let unknown = store.get_release("ingest", Uuid::now_v7()).await;
    assert!(
        matches!(&unknown, Err(Error::ReleaseNotFound { .. })),
        "{unknown:?}"
    );
    let unknown = store.list_releases("nowhere").await;
    assert!(
        matches!(&unknown, Err(Error::WorkflowNotFound { slug }) if slug == "nowhere"),
        "{unknown:?}"
    );

    store
        .unpublish_release("ingest", second.id)
        .await
        .expect("unpublish release");
    let gone = store.get_release("ingest", second.id).await;
    assert!(
        matches!(&gone, Err(Error::ReleaseNotFound { id, .. }) if *id == second.id),
        "{gone:?}"
    );
    assert_eq!(
        release_ids(store.list_releases("ingest").await.expect("list releases")),
        [third.id, first.id]
    );
    let again = store.unpublish_release("ingest", second.id).await;
    assert!(
        matches!(&again, Err(Error::ReleaseNotFound { .. })),
        "unpublishing twice: {again:?}"
    );
    let foreign = store.unpublish_release("report", first.id).await;
    assert!(
        matches!(&foreign, Err(Error::ReleaseNotFound { .. })),
        "unpublishing another workflow's release: {foreign:?}"
    );
    assert_eq!(
        store
            .get_release("ingest", first.id)
            .await
            .expect("get release"),
        first,
        "the refused unpublish changed nothing"
    );
}

/// Rule 24: a cluster runs at most one release per workflow: deploying replaces the
/// workflow's release on the named clusters only; unknown clusters change nothing;
/// undeploying removes the release from the named clusters only; a deployed release is kept.
pub(crate) async fn a_cluster_runs_one_release_per_workflow<S: Store>(store: S) {
    add_cluster(&store, "gpu").await;
    add_cluster(&store, "cpu").await;
    add_workflow(&store, "ingest").await;
    add_workflow(&store, "report").await;
    let artifact = store
        .register_artifact(digest('a'), 100)
        .await
        .expect("register artifact");
    let old = publish(&store, "ingest", &artifact, "old").await;
    let new = publish(&store, "ingest", &artifact, "new").await;
    let other = publish(&store, "report", &artifact, "report").await;
    let default = DEFAULT_CLUSTER_SLUG;
    let clusters = |slugs: &[&str]| {
        slugs
            .iter()
            .map(|slug| slug.to_string())
            .collect::<Vec<_>>()
    };
    let deployment = |workflow: &str, release: &Release| (workflow.to_string(), release.id);

    let deployed = store
        .deploy_release("ingest", old.id, clusters(&[default, "gpu"]))
        .await
        .expect("deploy release");
    assert_eq!(deployed.id, old.id);
    assert_eq!(sorted(deployed.clusters), [default, "gpu"]);
    store
        .deploy_release("report", other.id, clusters(&["gpu"]))
        .await
        .expect("deploy release");
    assert_eq!(
        deployments(&store, "gpu").await,
        [deployment("ingest", &old), deployment("report", &other)],
        "one release per workflow, by workflow slug"
    );
    assert_eq!(
        deployments(&store, default).await,
        [deployment("ingest", &old)]
    );
    assert_eq!(deployments(&store, "cpu").await, []);

    let replaced = store
        .deploy_release("ingest", new.id, clusters(&["gpu"]))
        .await
        .expect("deploy another release");
    assert_eq!(replaced.clusters, ["gpu"]);
    assert_eq!(
        deployed_to(&store, "ingest", old.id).await,
        [default],
        "replaced on gpu, kept on the default cluster"
    );
    assert_eq!(
        deployments(&store, "gpu").await,
        [deployment("ingest", &new), deployment("report", &other)],
        "another workflow's release stays"
    );
    assert_eq!(
        deployments(&store, default).await,
        [deployment("ingest", &old)]
    );
    let again = store
        .deploy_release("ingest", new.id, clusters(&["gpu"]))
        .await
        .expect("deploy again");
    assert_eq!(again.clusters, ["gpu"], "deploying again changes nothing");

    // An unknown cluster refuses the whole deployment.
    let unknown = store
        .deploy_release("ingest", new.id, clusters(&["cpu", "nowhere"]))
        .await;
    assert!(
        matches!(&unknown, Err(Error::ClusterNotFound { slug }) if slug == "nowhere"),
        "{unknown:?}"
    );
    let unknown = store
        .deploy_release("ingest", old.id, clusters(&["gpu", "nowhere"]))
        .await;
    assert!(
        matches!(&unknown, Err(Error::ClusterNotFound { slug }) if slug == "nowhere"),
        "{unknown:?}"
    );
    assert_eq!(deployed_to(&store, "ingest", new.id).await, ["gpu"]);
    assert_eq!(deployed_to(&store, "ingest", old.id).await, [default]);
    assert_eq!(deployments(&store, "cpu").await, [], "nothing changed");
    let unknown = store.cluster_deployments("nowhere").await;
    assert!(
        matches!(&unknown, Err(Error::ClusterNotFound { slug }) if slug == "nowhere"),
        "{unknown:?}"
    );
    let foreign = store
        .deploy_release("report", new.id, clusters(&["cpu"]))
        .await;
    assert!(
        matches!(&foreign, Err(Error::ReleaseNotFound { workflow, id })
            if workflow == "report" && *id == new.id),
        "another workflow's release is not deployed: {foreign:?}"
    );
    assert_eq!(deployments(&store, "cpu").await, []);

    // Undeploying removes the release from the named clusters only.
    let widened = store
        .deploy_release("ingest", new.id, clusters(&["cpu"]))
        .await
        .expect("deploy release");
    assert_eq!(sorted(widened.clusters), ["cpu", "gpu"]);
    let narrowed = store
        .undeploy_release("ingest", new.id, clusters(&["gpu"]))
        .await
        .expect("undeploy release");
    assert_eq!(narrowed.clusters, ["cpu"]);
    assert_eq!(
        deployments(&store, "gpu").await,
        [deployment("report", &other)]
    );
    let elsewhere = store
        .undeploy_release("ingest", new.id, clusters(&[default]))
        .await
        .expect("undeploy where another release runs");
    assert_eq!(elsewhere.clusters, ["cpu"]);
    assert_eq!(
        deployments(&store, default).await,
        [deployment("ingest", &old)],
        "the release deployed there is not removed"
    );
    let unknown = store
        .undeploy_release("ingest", new.id, clusters(&["cpu", "nowhere"]))
        .await;
    assert!(
        matches!(&unknown, Err(Error::ClusterNotFound { slug }) if slug == "nowhere"),
        "{unknown:?}"
    );
    assert_eq!(
        deployed_to(&store, "ingest", new.id).await,
        ["cpu"],
        "nothing changed"
    );

    // A deployed release is not unpublished.
    let refused = store.unpublish_release("ingest", new.id).await;
    assert!(
        matches!(&refused, Err(Error::Conflict(message)) if message.contains("cpu")),
        "unpublishing a deployed release is refused, naming its clusters: {refused:?}"
    );
    assert_eq!(deployed_to(&store, "ingest", new.id).await, ["cpu"]);
    store
        .undeploy_release("ingest", new.id, clusters(&["cpu"]))
        .await
        .expect("undeploy release");
    store
        .unpublish_release("ingest", new.id)
        .await
        .expect("unpublish an undeployed release");
    assert_eq!(
        release_ids(store.list_releases("ingest").await.expect("list releases")),
        [old.id]
    );
    let refused = store.unpublish_release("ingest", old.id).await;
    assert!(
        matches!(&refused, Err(Error::Conflict(message)) if message.contains(default)),
        "{refused:?}"
    );
    assert_eq!(deployments(&store, "cpu").await, []);
    assert_eq!(
        deployments(&store, "gpu").await,
        [deployment("report", &other)]
    );
}

/// Deleting a cluster takes its deployments with it, so they pin no release.
pub(crate) async fn deleting_a_cluster_removes_its_deployments<S: Store>(store: S) {
    add_cluster(&store, "gone").await;
    add_workflow(&store, "ingest").await;
    let artifact = store
        .register_artifact(digest('b'), 10)
        .await
        .expect("register artifact");
    let release = publish(&store, "ingest", &artifact, "only").await;
    store
        .deploy_release("ingest", release.id, vec!["gone".into()])
        .await
        .expect("deploy");
    store
        .delete_cluster("gone")
        .await
        .expect("delete the cluster");
    assert!(
        deployed_to(&store, "ingest", release.id).await.is_empty(),
        "the deployment went with the cluster"
    );
    store
        .unpublish_release("ingest", release.id)
        .await
        .expect("nothing pins the release any more");
    store
        .delete_workflow("ingest")
        .await
        .expect("nor the workflow");
}
