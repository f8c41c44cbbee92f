//! Release artifacts that try to escape their directory or exhaust the runner.

use std::path::Path;
use std::time::Duration;

use super::*;
use crate::common::{TestServer, client, wait_for_job_state, wait_until};
use uuid::Uuid;

// ---- hand-made archives ----------------------------------------------------------------------

/// A hostile artifact: its workflow slug, its bytes, and what the runner's log must say.
struct Hostile {
    slug: &'static str,
    bytes: Vec<u8>,
    reason: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_artifacts_are_skipped_and_the_runner_keeps_serving_good_releases() {
    let server = TestServer::start();
    let mut client = client(&server).await;
    let scratch = tempfile::Builder::new()
        .prefix("tilebox-hostile-")
        .tempdir()
        .expect("scratch");
    let cache = scratch.path().join("cache");
    let absolute_target = format!("/tmp/tilebox-pwned-{}", Uuid::new_v4());
    create_cluster(&mut client, "hostile").await;

    // A good release, published with the CLI, served before and after the hostile ones.
    deploy_greeter(&server, scratch.path(), "hostile");
    let mut runner = start_runner(
        &server,
        "hostile",
        &cache,
        scratch.path().join("runner.log"),
        &[],
    );
    let submit_hello = || submit_to(&server, "Hello", "hostile");
    let first = submit_hello();
    wait_for_job_state(&server, &first, "completed", Duration::from_secs(60));

    // A valid archive, to cut short and to corrupt on the server's disk.
    let filler: Vec<u8> = (0..200_000u32).flat_map(|n| n.to_le_bytes()).collect();
    let valid = archive(&[
        Entry("app.py", b'0', "", HOSTILE_APP.as_bytes()),
        Entry("data.bin", b'0', "", &filler),
    ]);
    let mut at_rest = valid.clone();
    at_rest.extend_from_slice(b"!");
    let hostile = vec![
        Hostile {
            slug: "dotdot",
            bytes: archive(&[
                Entry("app.py", b'0', "", HOSTILE_APP.as_bytes()),
                Entry("../../../pwned-dotdot", b'0', "", b"pwned"),
            ]),
            reason: "archive entry `../../../pwned-dotdot`: the path contains `..`".into(),
        },
        Hostile {
            slug: "absolute",
            bytes: archive(&[
                Entry("app.py", b'0', "", HOSTILE_APP.as_bytes()),
                Entry(&absolute_target, b'0', "", b"pwned"),
            ]),
            reason: format!("archive entry `{absolute_target}`: absolute path"),
        },
        Hostile {
            slug: "symlink",
            bytes: archive(&[
                Entry("app.py", b'0', "", HOSTILE_APP.as_bytes()),
                Entry("escape", b'2', "../../../..", b""),
            ]),
            reason: "archive entry `escape`: link target `../../../..` leaves the destination"
                .into(),
        },
        Hostile {
            slug: "device",
            bytes: archive(&[
                Entry("app.py", b'0', "", HOSTILE_APP.as_bytes()),
                Entry("null", b'3', "", b""),
            ]),
            reason: "archive entry `null`: character device entries are not allowed".into(),
        },
        Hostile {
            slug: "bomb",
            bytes: zstd_bomb((4 << 30) + (256 << 20)),
            reason: "the archive unpacks to more than 4294967296 bytes".into(),
        },
        Hostile {
            slug: "truncated",
            bytes: valid[..valid.len() / 2].to_vec(),
            reason: "the archive is truncated".into(),
        },
        Hostile {
            slug: "garbage",
            bytes: b"this is not a zstd frame, just text".to_vec(),
            reason: "cannot decompress".into(),
        },
        Hostile {
            slug: "corrupted",
            bytes: at_rest,
            reason: "refusing it".into(),
        },
    ];
    let bomb = hostile
        .iter()
        .find(|case| case.slug == "bomb")
        .expect("bomb");
    assert!(
        bomb.bytes.len() < 1 << 20,
        "the bomb is small: {} bytes",
        bomb.bytes.len()
    );
    for case in &hostile {
        let release = publish_hostile(&mut client, case.slug, &case.bytes).await;
        if case.slug == "corrupted" {
            // Flip a byte of the stored artifact: the server now serves wrong bytes.
            let stored = server
                .data_dir()
                .join("artifacts")
                .join(sha256_hex(&case.bytes));
            let mut bytes = fs_err::read(&stored).expect("stored artifact");
            let last = bytes.len() - 1;
            bytes[last] ^= 0xff;
            fs_err::write(&stored, bytes).expect("corrupt the stored artifact");
        }
        deploy(&mut client, case.slug, release, "hostile").await;
    }

    // Each is reported as skipped, with its workflow and the reason, on one line: a skipped
    // release shows only in the runner's log.
    let skipped = |log: &str, slug: &str| -> Option<String> {
        log.lines()
            .find(|line| {
                line.contains("skipping a release that cannot be loaded")
                    && line.contains(&format!("workflow={slug} "))
            })
            .map(str::to_string)
    };
    wait_until(
        "the runner to skip every hostile release",
        Duration::from_secs(180),
        || {
            let log = runner.log();
            hostile
                .iter()
                .all(|case| skipped(&log, case.slug).is_some())
        },
    )
    .unwrap_or_else(|timed_out| panic!("{timed_out}\n{}", runner.log()));
    let log_text = runner.log();
    for case in &hostile {
        let line = skipped(&log_text, case.slug).expect("reported");
        assert!(
            line.contains(&case.reason),
            "{}: the skip line must say why ({:?}):\n{line}",
            case.slug,
            case.reason
        );
    }
    assert!(
        runner.is_running(),
        "the runner survives hostile releases:\n{log_text}"
    );

    // The good release still runs tasks.
    let second = submit_hello();
    let done = wait_for_job_state(&server, &second, "completed", Duration::from_secs(60));
    assert_eq!(done["tasks"][0]["display"], "hello from the good release");
    assert!(runner.is_running(), "{}", runner.log());
    drop(runner);

    // Nothing escaped, and no hostile release left anything in the cache.
    assert!(
        !Path::new(&absolute_target).exists(),
        "{absolute_target} was written"
    );
    let everything = tree(scratch.path());
    let escaped: Vec<&String> = everything
        .iter()
        .filter(|path| path.contains("pwned"))
        .collect();
    assert!(escaped.is_empty(), "{escaped:?}");
    for case in &hostile {
        let digest = sha256_hex(&case.bytes);
        let leftovers: Vec<&String> = everything
            .iter()
            .filter(|path| path.starts_with("cache/releases/") && path.contains(&digest))
            .collect();
        assert!(
            leftovers.is_empty(),
            "{}: a refused release leaves nothing behind in the cache: {leftovers:?}",
            case.slug
        );
    }
    server.stop();
}

// ---- malformed configuration -----------------------------------------------------------------
