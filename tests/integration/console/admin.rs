//! The clusters and workflows pages: create and delete clusters, deploy, roll back and
//! undeploy releases through the console's forms, checked with the real CLI; refusals
//! come back on the page with their status, cross-site posts change nothing, and names
//! written by users render as text.

use serde_json::Value;

use crate::common::{HttpResponse, TestServer, http_get, http_request, json_of, write_project};

/// The `csrf` value of the first form in `html`: on an open server, the `tilebox_csrf`
/// cookie the page came with, which a browser sends back with the form.
fn csrf_of(html: &str) -> String {
    let marker = "name=\"csrf\" value=\"";
    html.find(marker)
        .map(|start| {
            let rest = &html[start + marker.len()..];
            rest[..rest.find('"').expect("closing quote")].to_string()
        })
        .unwrap_or_else(|| panic!("no csrf field in {html}"))
}

/// `application/x-www-form-urlencoded` for `fields`.
fn form_body(fields: &[(&str, &str)]) -> String {
    fields
        .iter()
        .map(|(name, value)| {
            let encoded: String = value
                .bytes()
                .map(|byte| {
                    if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'*') {
                        char::from(byte).to_string()
                    } else if byte == b' ' {
                        "+".to_string()
                    } else {
                        format!("%{byte:02X}")
                    }
                })
                .collect();
            format!("{name}={encoded}")
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// Posts `fields` (and the page's token) to `path` as a form, from `origin` (the
/// console's own origin unless given).
fn post_form(
    server: &TestServer,
    path: &str,
    csrf: &str,
    fields: &[(&str, &str)],
    origin: Option<&str>,
) -> HttpResponse {
    let own = server.url().to_string();
    let cookie = format!("tilebox_csrf={csrf}");
    let mut all = vec![("csrf", csrf)];
    all.extend_from_slice(fields);
    http_request(
        server,
        "POST",
        path,
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Origin", origin.unwrap_or(&own)),
            ("Cookie", &cookie),
        ],
        form_body(&all).as_bytes(),
    )
}

/// The page a 303 answer sends to, fetched.
fn follow(server: &TestServer, answer: &HttpResponse) -> HttpResponse {
    assert_eq!(answer.status, 303, "{}", answer.text());
    let location = answer.header("location").expect("a location");
    let page = http_get(server, location, &[]);
    assert_eq!(page.status, 200, "{location}: {}", page.text());
    page
}

/// The slugs `tilebox cluster list --json` lists, with their names.
fn cluster_list(server: &TestServer) -> Vec<(String, String)> {
    let listed = json_of(&server.tilebox(&["--json", "cluster", "list"]));
    listed
        .as_array()
        .or_else(|| listed["clusters"].as_array())
        .unwrap_or_else(|| panic!("a list of clusters: {listed}"))
        .iter()
        .map(|cluster| {
            (
                cluster["slug"].as_str().expect("slug").to_string(),
                cluster["name"].as_str().expect("name").to_string(),
            )
        })
        .collect()
}

/// The part of `html` from `marker` to the end of its table row.
fn row<'a>(html: &'a str, marker: &str) -> &'a str {
    let start = html
        .find(marker)
        .unwrap_or_else(|| panic!("no {marker} in {html}"));
    let end = html[start..].find("</tr>").expect("end of row");
    &html[start..start + end]
}

#[test]
fn clusters_are_created_and_deleted_from_the_console() {
    let server = TestServer::start();
    let page = http_get(&server, "/clusters", &[]);
    assert_eq!(page.status, 200, "{}", page.text());
    let html = page.text();
    assert!(
        html.contains("data-action=\"create-cluster\""),
        "an admin sees the create form: {html}"
    );
    assert!(
        html.contains("tr class=\"cluster\" data-slug=\"default\""),
        "{html}"
    );
    assert!(
        row(&html, "data-slug=\"default\"").contains("href=\"/runners?cluster=default\""),
        "{html}"
    );
    let csrf = csrf_of(&html);

    // Created through the form: on the page after the redirect, and in the CLI.
    let created = post_form(
        &server,
        "/clusters",
        &csrf,
        &[("name", "GPU nodes"), ("slug", "gpu")],
        None,
    );
    assert_eq!(created.header("location"), Some("/clusters?created=gpu"));
    let html = follow(&server, &created).text();
    assert!(html.contains("Created cluster gpu."), "{html}");
    let gpu = row(&html, "data-slug=\"gpu\"");
    assert!(gpu.contains("GPU nodes"), "{gpu}");
    assert!(gpu.contains("data-action=\"delete-cluster\""), "{gpu}");
    assert!(
        gpu.contains("data-confirm=\"Delete cluster GPU nodes (gpu)?"),
        "{gpu}"
    );
    assert!(
        !row(&html, "data-slug=\"default\"").contains("delete-cluster"),
        "the default cluster cannot be deleted, so it has no button: {html}"
    );
    let before = cluster_list(&server);
    assert!(
        before.contains(&("gpu".to_string(), "GPU nodes".to_string())),
        "{before:?}"
    );

    // A duplicate slug: the page says why, with 409, and nothing changed.
    let duplicate = post_form(
        &server,
        "/clusters",
        &csrf,
        &[("name", "Other"), ("slug", "gpu")],
        None,
    );
    assert_eq!(duplicate.status, 409, "{}", duplicate.text());
    let html = duplicate.text();
    assert!(html.contains("class=\"flash error\""), "{html}");
    assert!(html.contains("gpu"), "{html}");
    assert!(
        html.contains("data-slug=\"gpu\""),
        "the list is still shown: {html}"
    );
    assert_eq!(cluster_list(&server), before);

    // The default cluster is refused by the service, even when posted directly.
    let default = post_form(&server, "/clusters/default/delete", &csrf, &[], None);
    assert_eq!(default.status, 409, "{}", default.text());
    assert!(
        default.text().contains("default cluster"),
        "{}",
        default.text()
    );
    let missing = post_form(&server, "/clusters/no-such/delete", &csrf, &[], None);
    assert_eq!(missing.status, 404, "{}", missing.text());
    assert!(missing.text().contains("no-such"), "{}", missing.text());

    // Posts from another site change nothing.
    let evil = Some("http://evil.example");
    let forged = post_form(
        &server,
        "/clusters",
        &csrf,
        &[("name", "Evil"), ("slug", "evil")],
        evil,
    );
    assert_eq!(forged.status, 403, "{}", forged.text());
    let forged = post_form(&server, "/clusters/gpu/delete", &csrf, &[], evil);
    assert_eq!(forged.status, 403, "{}", forged.text());
    assert_eq!(cluster_list(&server), before);

    // Deleted: gone from the page and the CLI.
    let deleted = post_form(&server, "/clusters/gpu/delete", &csrf, &[], None);
    assert_eq!(deleted.header("location"), Some("/clusters?deleted=gpu"));
    let html = follow(&server, &deleted).text();
    assert!(html.contains("Deleted cluster gpu."), "{html}");
    assert!(!html.contains("data-slug=\"gpu\""), "{html}");
    assert!(
        !cluster_list(&server).iter().any(|(slug, _)| slug == "gpu"),
        "{:?}",
        cluster_list(&server)
    );

    // A crafted redirect query puts no sentence of its own on the page.
    let crafted = http_get(
        &server,
        "/clusters?created=Your+key+expired%2C+paste+it+at+evil.example",
        &[],
    );
    assert!(
        !crafted.text().contains("Your key expired"),
        "{}",
        crafted.text()
    );
}

/// A cluster name with markup is shown as text: in its cell and in the confirmation.
#[test]
fn hostile_cluster_names_render_as_text() {
    let server = TestServer::start();
    let csrf = csrf_of(&http_get(&server, "/clusters", &[]).text());
    let name = "<img src=x onerror=alert(1)>\"'";
    let created = post_form(
        &server,
        "/clusters",
        &csrf,
        &[("name", name), ("slug", "hostile")],
        None,
    );
    let html = follow(&server, &created).text();
    let hostile = row(&html, "data-slug=\"hostile\"");
    assert!(!html.contains("<img"), "{hostile}");
    assert!(
        hostile.contains("&lt;img src=x onerror=alert(1)&gt;"),
        "{hostile}"
    );
    assert!(
        hostile.contains("data-confirm=\"Delete cluster &lt;img src=x onerror=alert(1)&gt;&quot;'"),
        "{hostile}"
    );
}

const HELLO: &str = "from tilebox.workflows import ExecutionContext, Runner, Task\n\n\
class Hello(Task):\n    def execute(self, context: ExecutionContext) -> None:\n        pass\n\nrunner = Runner(tasks=[Hello])\n";

/// The releases of `slug` as the CLI lists them: id → deployed clusters.
fn deployments(server: &TestServer, slug: &str) -> Vec<(String, Value)> {
    let releases = json_of(&server.tilebox(&["--json", "workflow", "releases", slug]));
    releases["releases"]
        .as_array()
        .expect("releases")
        .iter()
        .map(|release| {
            (
                release["id"].as_str().expect("id").to_string(),
                release["clusters"].clone(),
            )
        })
        .collect()
}

/// One workflow with two releases published by the CLI: the console deploys the newer
/// one, rolls the cluster back to the older one (which replaces it) and undeploys it; the
/// CLI sees each step. The workflow's name and summary carry markup, shown as text.
#[test]
fn releases_are_deployed_rolled_back_and_undeployed_from_the_console() {
    let server = TestServer::start();
    let created = json_of(&server.tilebox(&[
        "--json",
        "workflow",
        "create",
        "Greeter <img src=x onerror=alert(1)>",
        "--summary",
        "says </td><script>alert(2)</script> hello",
    ]));
    let slug = created["slug"].as_str().expect("slug").to_string();
    assert!(
        server
            .tilebox(&["cluster", "create", "East", "--slug", "east"])
            .status
            .success()
    );
    let project = tempfile::tempdir().expect("project");
    write_project(project.path(), &slug, HELLO);
    let first =
        json_of(&server.tilebox_in(project.path(), &["--json", "workflow", "publish-release"]));
    fs_err::write(
        project.path().join("app.py"),
        HELLO.replace("pass", "context.current_task.display = 'v2'"),
    )
    .expect("edit");
    let second =
        json_of(&server.tilebox_in(project.path(), &["--json", "workflow", "publish-release"]));
    let first = first["id"].as_str().expect("id").to_string();
    let second_digest = second["digest"].as_str().expect("digest").to_string();
    let second = second["id"].as_str().expect("id").to_string();
    assert_ne!(first, second);

    // The list: escaped name and summary, two releases, deployed nowhere.
    let list = http_get(&server, "/workflows", &[]);
    assert_eq!(list.status, 200, "{}", list.text());
    let html = list.text();
    let workflow = row(&html, &format!("data-slug=\"{slug}\""));
    assert!(
        !html.contains("<img") && !html.contains("<script>alert"),
        "{html}"
    );
    assert!(workflow.contains("Greeter &lt;img src=x"), "{workflow}");
    assert!(
        workflow.contains("&lt;/td&gt;&lt;script&gt;alert(2)"),
        "{workflow}"
    );
    assert!(workflow.contains("data-releases=\"2\""), "{workflow}");
    assert!(
        workflow.contains(&format!("href=\"/workflows/{slug}\"")),
        "{workflow}"
    );

    // The workflow: newest first, with what each provides, and a deploy form.
    let path = format!("/workflows/{slug}");
    let page = http_get(&server, &path, &[]);
    assert_eq!(page.status, 200, "{}", page.text());
    let html = page.text();
    assert!(
        !html.contains("<img") && !html.contains("<script>alert"),
        "{html}"
    );
    let newer = html
        .find(&format!("data-release=\"{second}\""))
        .expect("newer");
    let older = html
        .find(&format!("data-release=\"{first}\""))
        .expect("older");
    assert!(newer < older, "newest first: {html}");
    let row_of_second = row(&html, &format!("data-release=\"{second}\""));
    assert!(row_of_second.contains("Hello"), "{row_of_second}");
    assert!(row_of_second.contains(&second_digest), "{row_of_second}");
    assert!(
        row_of_second.contains("data-action=\"deploy\""),
        "{row_of_second}"
    );
    assert!(
        row_of_second.contains("<option value=\"east\""),
        "{row_of_second}"
    );
    assert!(
        !html.contains("data-action=\"rollback\""),
        "nothing deployed yet: {html}"
    );
    let csrf = csrf_of(&html);
    let release_path = |id: &str, action: &str| format!("/workflows/{slug}/releases/{id}/{action}");

    // Deploy the newer release to east.
    let deployed = post_form(
        &server,
        &release_path(&second, "deploy"),
        &csrf,
        &[("cluster", "east")],
        None,
    );
    let html = follow(&server, &deployed).text();
    assert!(html.contains("to cluster east."), "{html}");
    assert_eq!(
        deployments(&server, &slug),
        vec![
            (second.clone(), serde_json::json!(["east"])),
            (first.clone(), serde_json::json!([])),
        ]
    );
    let clusters = http_get(&server, "/clusters", &[]).text();
    assert!(
        row(&clusters, "data-slug=\"east\"").contains("data-deployed=\"1\""),
        "{clusters}"
    );

    // The older release offers a roll back of east; it replaces the newer one.
    let row_of_first = row(&html, &format!("data-release=\"{first}\""));
    assert!(
        row_of_first.contains("data-action=\"rollback\" data-cluster=\"east\""),
        "{row_of_first}"
    );
    assert!(
        row_of_first.contains("data-confirm=\"Roll cluster east back"),
        "{row_of_first}"
    );
    let row_of_second = row(&html, &format!("data-release=\"{second}\""));
    assert!(
        row_of_second.contains("data-action=\"undeploy\""),
        "{row_of_second}"
    );
    let rolled_back = post_form(
        &server,
        &release_path(&first, "deploy"),
        &csrf,
        &[("cluster", "east")],
        None,
    );
    let html = follow(&server, &rolled_back).text();
    assert_eq!(
        deployments(&server, &slug),
        vec![
            (second.clone(), serde_json::json!([])),
            (first.clone(), serde_json::json!(["east"])),
        ]
    );
    assert!(
        !html.contains("data-action=\"rollback\""),
        "the newest deployed is the older release, nothing to roll back: {html}"
    );

    // Refusals: a cross-site post, an unknown cluster, a malformed release id.
    let forged = post_form(
        &server,
        &release_path(&first, "undeploy"),
        &csrf,
        &[("cluster", "east")],
        Some("http://evil.example"),
    );
    assert_eq!(forged.status, 403, "{}", forged.text());
    let unknown = post_form(
        &server,
        &release_path(&second, "deploy"),
        &csrf,
        &[("cluster", "nowhere")],
        None,
    );
    assert_eq!(unknown.status, 404, "{}", unknown.text());
    assert!(
        unknown.text().contains("class=\"flash error\""),
        "{}",
        unknown.text()
    );
    assert!(unknown.text().contains("nowhere"), "{}", unknown.text());
    let malformed = post_form(
        &server,
        &release_path("not-a-uuid", "deploy"),
        &csrf,
        &[("cluster", "east")],
        None,
    );
    assert_eq!(malformed.status, 400, "{}", malformed.text());
    assert_eq!(
        deployments(&server, &slug)[1],
        (first.clone(), serde_json::json!(["east"]))
    );

    // Undeploy: deployed nowhere.
    let undeployed = post_form(
        &server,
        &release_path(&first, "undeploy"),
        &csrf,
        &[("cluster", "east")],
        None,
    );
    let html = follow(&server, &undeployed).text();
    assert!(html.contains("from cluster east."), "{html}");
    assert_eq!(
        deployments(&server, &slug),
        vec![
            (second, serde_json::json!([])),
            (first, serde_json::json!([])),
        ]
    );
    assert!(!html.contains("data-action=\"undeploy\""), "{html}");
}
