//! The runners page (`/runners`): per cluster, the runners that ask for its work, with what
//! they advertise, their slots and last contact; and [`runner_name`], the short label of a
//! runner (or of a task's claimant) every page shows.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{Query, State};
use axum::response::Response;
use axum::routing::get;
use maud::{Markup, html};
use serde::Deserialize;

use super::layout::{self, Section};
use super::viewer::urlencode;
use super::{ConsoleError, ConsoleState, Fragment, Viewer};
use crate::api::convert::now_millis;
use crate::server::auth::Action;
use crate::server::presence::Listed;
use crate::server::store::RunnerKind;

/// The routes of this page.
pub fn routes() -> axum::Router<ConsoleState> {
    axum::Router::new().route("/runners", get(runners_page))
}

/// A short label for a runner, from the id tasks name their claimant by:
/// - `runner:<key>/<uuid>` (our runner): `hostname·uuid8` when its host is known (pass the
///   `hostname` presence has for it), else `runner·uuid8`;
/// - `host:<key>@<ip>:<port>` (the official SDK, which names no host): `SDK <ip>:<port>`;
/// - anything else as it is.
pub fn runner_name(claimant: &str, hostname: Option<&str>) -> String {
    // Our runner's id alone (as its logs and spans carry it) reads as its claimant does.
    let bare = uuid::Uuid::parse_str(claimant).is_ok().then_some(claimant);
    if let Some(rest) = claimant.strip_prefix("runner:").or(bare) {
        let id = rest.rsplit_once('/').map_or(rest, |(_key, id)| id);
        let short: String = id.chars().take(8).collect();
        return match hostname.filter(|name| !name.is_empty()) {
            Some(host) => format!("{host}·{short}"),
            None => format!("runner·{short}"),
        };
    }
    if let Some(rest) = claimant.strip_prefix("host:") {
        let address = rest
            .rsplit_once('@')
            .map_or(rest, |(_key, address)| address);
        return format!("SDK {address}");
    }
    claimant.to_string()
}

/// Hostnames by runner (claimant), as [`runner_hostnames`] reads them.
pub type Hosts = HashMap<String, String>;

/// How long one read of the runners' hostnames serves the pages: every open job tab asks
/// for them every 2 s, and a runner's host does not change.
const HOSTS_FOR: std::time::Duration = std::time::Duration::from_secs(5);

/// The last read of the runners' hostnames, shared by the console's pages.
#[derive(Clone, Default)]
pub struct HostsCache(Arc<Mutex<Option<HostsRead>>>);

/// When the hostnames were read, and what was read.
type HostsRead = (Instant, Arc<Hosts>);

/// The host of every runner presence knows (connected or gone, not yet forgotten), by
/// runner: what [`runner_name`] takes. One read of the runners every few seconds at most,
/// whatever the number of open pages.
pub async fn runner_hostnames(state: &ConsoleState) -> Arc<Hosts> {
    if let Some((read_at, hosts)) = state.hosts.0.lock().ok().and_then(|cached| cached.clone())
        && read_at.elapsed() < HOSTS_FOR
    {
        return hosts;
    }
    let listed = state
        .scheduler
        .presence()
        .list(state.store.as_ref(), None, true)
        .await
        .unwrap_or_default();
    let mut hosts = Hosts::new();
    for runner in listed {
        if runner.seen.hostname.is_empty() {
            continue;
        }
        // Also by the bare id, which our runner's logs and spans carry.
        if let Some((_, id)) = runner.seen.runner.rsplit_once('/') {
            hosts.insert(id.to_string(), runner.seen.hostname.clone());
        }
        hosts.insert(runner.seen.runner, runner.seen.hostname);
    }
    let hosts = Arc::new(hosts);
    if let Ok(mut cached) = state.hosts.0.lock() {
        *cached = Some((Instant::now(), hosts.clone()));
    }
    hosts
}

#[derive(Debug, Default, Deserialize)]
struct Filters {
    /// Only this cluster's runners.
    #[serde(default)]
    cluster: Option<String>,
    /// `1`: also the runners that stopped calling.
    #[serde(default)]
    all: Option<String>,
}

impl Filters {
    fn cluster(&self) -> Option<&str> {
        self.cluster.as_deref().filter(|slug| !slug.is_empty())
    }

    fn all(&self) -> bool {
        matches!(self.all.as_deref(), Some("1" | "true" | "on"))
    }

    /// This view's URL, for polling and links.
    fn url(&self) -> String {
        let mut query = Vec::new();
        if let Some(cluster) = self.cluster() {
            query.push(format!("cluster={}", urlencode(cluster)));
        }
        if self.all() {
            query.push("all=1".to_string());
        }
        if query.is_empty() {
            "/runners".to_string()
        } else {
            format!("/runners?{}", query.join("&"))
        }
    }
}

async fn runners_page(
    State(state): State<ConsoleState>,
    viewer: Viewer,
    fragment: Fragment,
    Query(filters): Query<Filters>,
) -> Result<Response, ConsoleError> {
    viewer.principal.check(Action::ReadRunners)?;
    if let Some(cluster) = filters.cluster() {
        state.store.get_cluster(cluster).await?;
    }
    let presence = state.scheduler.presence();
    let listed = presence
        .list(state.store.as_ref(), filters.cluster(), filters.all())
        .await?;
    let clusters = state.store.list_clusters().await?;
    let body = render(
        &filters,
        &listed,
        &clusters
            .iter()
            .map(|cluster| cluster.slug.as_str())
            .collect::<Vec<_>>(),
        now_millis(),
        presence.timeout().as_secs(),
    );
    Ok(layout::page(
        &viewer,
        fragment,
        Section::Runners,
        "Runners",
        body,
    ))
}

/// The view: filters, then one table per cluster with runners (every cluster when none is
/// chosen, so an empty cluster says so).
fn render(
    filters: &Filters,
    listed: &[Listed],
    clusters: &[&str],
    now: i64,
    timeout_seconds: u64,
) -> Markup {
    let mut by_cluster: BTreeMap<&str, Vec<&Listed>> = BTreeMap::new();
    for cluster in clusters {
        if filters.cluster().is_none_or(|chosen| chosen == *cluster) {
            by_cluster.entry(cluster).or_default();
        }
    }
    for runner in listed {
        by_cluster
            .entry(runner.seen.cluster.as_str())
            .or_default()
            .push(runner);
    }
    let connected = listed.iter().filter(|runner| runner.connected).count();
    html! {
        section.runners-view data-poll=(filters.url()) data-poll-ms="2000" {
            h1 { "Runners" }
            form.runner-filters method="get" action="/runners" {
                label {
                    "Cluster "
                    select name="cluster" {
                        option value="" selected[filters.cluster().is_none()] { "every cluster" }
                        @for cluster in clusters {
                            option value=(cluster) selected[filters.cluster() == Some(*cluster)] { (cluster) }
                        }
                    }
                }
                label {
                    input type="checkbox" name="all" value="1" checked[filters.all()];
                    " also runners that stopped"
                }
                button type="submit" { "Show" }
            }
            p.runner-summary data-connected=(connected) {
                (connected) " connected"
                @if filters.all() { ", " (listed.len() - connected) " gone" }
                " · a runner is gone after " (timeout_seconds) " s without a call"
            }
            @for (cluster, runners) in &by_cluster {
                section.runner-cluster data-cluster=(cluster) {
                    h2 { "Cluster " (cluster) }
                    @if runners.is_empty() {
                        p.empty { "No runners connected." }
                    } @else {
                        table.runners {
                            thead { tr {
                                th { "Runner" } th { "Kind" } th { "Host" } th { "Id" }
                                th { "Tasks" } th { "Slots (busy/total)" } th { "Last contact" }
                                th { "State" }
                            } }
                            tbody {
                                @for runner in runners { (row(runner, now)) }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn row(runner: &Listed, now: i64) -> Markup {
    let seen = &runner.seen;
    let state = if runner.connected {
        "connected"
    } else if seen.slots == 0 {
        "stopped"
    } else {
        "gone"
    };
    let kind = match seen.kind {
        RunnerKind::Tilebox => "tilebox",
        RunnerKind::Sdk => "sdk",
    };
    let seconds_ago = (now - seen.last_seen_at).max(0) / 1000;
    html! {
        tr.runner data-state=(state) data-cluster=(seen.cluster) data-runner=(seen.runner) {
            td.name { (runner_name(&seen.runner, Some(&seen.hostname))) }
            td.kind { (kind) @if !seen.version.is_empty() { " " span.version { (seen.version) } } }
            td.host { (seen.hostname) }
            td.id { code { (seen.runner) } }
            td.tasks {
                @if seen.identifiers.is_empty() { span.empty { "none" } }
                ul {
                    @for (name, version) in &seen.identifiers {
                        li { code { (name) "@" (version) } }
                    }
                }
            }
            td.slots data-busy=(seen.slots.saturating_sub(seen.free_slots)) data-total=(seen.slots) {
                (seen.slots.saturating_sub(seen.free_slots)) "/" (seen.slots)
            }
            td.last-contact {
                (layout::time(seen.last_seen_at)) " (" (seconds_ago) "s ago)"
            }
            td.state { (layout::badge(state)) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::store::RunnerSeen;

    #[test]
    fn runner_names_are_short_and_say_who() {
        let ours = "runner:ops/0f8e2a41-1b2c-4d5e-8f90-123456789abc";
        assert_eq!(runner_name(ours, Some("worker-3")), "worker-3·0f8e2a41");
        assert_eq!(runner_name(ours, Some("")), "runner·0f8e2a41");
        assert_eq!(runner_name(ours, None), "runner·0f8e2a41");
        assert_eq!(
            runner_name("runner:/abc", None),
            "runner·abc",
            "an open server's key is empty"
        );
        assert_eq!(
            runner_name("host:ops@10.0.0.7:51234", Some("ignored")),
            "SDK 10.0.0.7:51234"
        );
        assert_eq!(runner_name("host:@[::1]:4000", None), "SDK [::1]:4000");
        assert_eq!(runner_name("unknown", None), "unknown");
        assert_eq!(
            runner_name("0f8e2a41-1b2c-4d5e-8f90-123456789abc", Some("worker-3")),
            "worker-3·0f8e2a41",
            "the bare id our runner's logs and spans carry"
        );
    }

    #[test]
    fn the_view_lists_runners_per_cluster_with_state_and_escaped_text() {
        let seen = |runner: &str, cluster: &str, hostname: &str| RunnerSeen {
            runner: runner.to_string(),
            kind: RunnerKind::Tilebox,
            cluster: cluster.to_string(),
            key_name: String::new(),
            hostname: hostname.to_string(),
            version: "0.1.0".to_string(),
            slots: 4,
            free_slots: 1,
            identifiers: vec![("<b>Tile</b>".to_string(), "v1.0".to_string())],
            first_seen_at: 1_000,
            last_seen_at: 5_000,
        };
        let listed = [
            Listed {
                seen: seen("runner:/a", "default", "<img src=x>"),
                connected: true,
            },
            Listed {
                seen: seen("runner:/b", "gpu", "box"),
                connected: false,
            },
        ];
        let filters = Filters {
            cluster: None,
            all: Some("1".to_string()),
        };
        let html =
            render(&filters, &listed, &["default", "gpu", "empty"], 12_000, 15).into_string();
        assert!(html.contains(r#"data-poll="/runners?all=1""#), "{html}");
        assert!(
            html.contains(r#"<tr class="runner" data-state="connected" data-cluster="default""#)
        );
        assert!(html.contains(r#"<tr class="runner" data-state="gone" data-cluster="gpu""#));
        assert!(
            html.contains("<code>&lt;b&gt;Tile&lt;/b&gt;@v1.0</code>"),
            "{html}"
        );
        assert!(html.contains("&lt;img src=x&gt;"));
        assert!(!html.contains("<img"));
        assert!(html.contains(">3/4<"), "busy/total");
        assert!(html.contains("(7s ago)"));
        assert!(html.contains(r#"data-cluster="empty""#) && html.contains("No runners connected."));
    }
}
