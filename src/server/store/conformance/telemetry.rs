//! Telemetry records: per trace, in arrival order, expiring.

use std::time::Duration;

use uuid::Uuid;

use super::fixtures::*;
use crate::api::convert::now_millis;
use crate::server::store::{Page, Store, TelemetryKind, TelemetryRecord};

/// Rule 25: telemetry is read per kind and trace in arrival order (or reversed), filtered by
/// task and inclusive severity ranges, paged; counted by severity over the first records;
/// deleting by arrival time answers the count.
pub(crate) async fn telemetry_is_read_per_trace_in_arrival_order_and_expires<S: Store>(store: S) {
    const TRACE_A: [u8; 16] = [0xa1; 16];
    const TRACE_B: [u8; 16] = [0xb2; 16];
    // Ids newest first, so arrival order and id order differ.
    let mut ids: Vec<Uuid> = (0..10).map(|_| Uuid::now_v7()).collect();
    ids.sort();
    let mut next_id = move || ids.pop().expect("enough ids");
    let mut record = |trace: [u8; 16], task: Option<&str>, severity: i32, time: i64| {
        let id = next_id();
        TelemetryRecord {
            id,
            trace_id: trace.to_vec(),
            task_id: task.map(str::to_string),
            severity,
            // Event times out of arrival order: reads follow arrival, not event time.
            time_unix_nano: time,
            encoded: [id.as_bytes().as_slice(), &[0x00, 0xff]].concat(),
        }
    };
    let a1 = record(TRACE_A, Some("t1"), 1, 500);
    let a2 = record(TRACE_A, Some("t2"), 9, 100);
    let a3 = record(TRACE_A, Some("t1"), 13, 400);
    let a4 = record(TRACE_A, None, 17, 200);
    let a5 = record(TRACE_A, Some("t1"), 5, 300);
    let b1 = record(TRACE_B, Some("t1"), 9, 100);
    let s1 = record(TRACE_A, Some("t1"), 0, 900);
    let s2 = record(TRACE_A, Some("t2"), 0, 800);
    let s3 = record(TRACE_B, Some("t1"), 0, 700);
    let late = record(TRACE_B, Some("t1"), 9, 50);

    let before = now_millis();
    let insert = |kind: TelemetryKind, records: &[&TelemetryRecord]| {
        let records = records.iter().map(|&record| record.clone()).collect();
        let inserted = store.insert_telemetry(kind, records);
        async move { inserted.await.expect("insert telemetry") }
    };
    insert(TelemetryKind::Log, &[&a1, &a2]).await;
    insert(TelemetryKind::Span, &[&s1]).await;
    insert(TelemetryKind::Log, &[&b1]).await;
    insert(TelemetryKind::Log, &[&a3, &a4, &a5]).await;
    insert(TelemetryKind::Span, &[&s2, &s3]).await;

    let query = |kind: TelemetryKind,
                 trace: [u8; 16],
                 task: Option<&str>,
                 severities: Vec<(i32, i32)>,
                 page: Page| {
        let found = store.query_telemetry(
            kind,
            trace.to_vec(),
            task.map(str::to_string),
            severities,
            page,
        );
        async move { found.await.expect("query telemetry") }
    };
    let expected = |records: &[&TelemetryRecord]| {
        records
            .iter()
            .map(|record| (record.id, record.encoded.clone()))
            .collect::<Vec<_>>()
    };
    let page = |after: Option<&TelemetryRecord>, limit: usize, descending: bool| Page {
        after: after.map(|record| record.id),
        limit,
        descending,
    };
    let backwards = page(None, 1_000, true);
    use TelemetryKind::{Log, Span};

    assert_eq!(
        query(Log, TRACE_A, None, vec![], EVERYTHING).await,
        expected(&[&a1, &a2, &a3, &a4, &a5]),
        "a trace's logs in arrival order"
    );
    assert_eq!(
        query(Log, TRACE_A, None, vec![], backwards).await,
        expected(&[&a5, &a4, &a3, &a2, &a1])
    );
    assert_eq!(
        query(Log, TRACE_B, None, vec![], EVERYTHING).await,
        expected(&[&b1])
    );
    assert_eq!(
        query(Span, TRACE_A, None, vec![], EVERYTHING).await,
        expected(&[&s1, &s2])
    );
    assert_eq!(
        query(Span, TRACE_A, None, vec![], backwards).await,
        expected(&[&s2, &s1])
    );
    assert_eq!(
        query(Span, TRACE_B, None, vec![], EVERYTHING).await,
        expected(&[&s3])
    );
    assert_eq!(
        query(Log, [0x00; 16], None, vec![], EVERYTHING).await,
        [],
        "an unknown trace has no records"
    );

    assert_eq!(
        query(Log, TRACE_A, Some("t1"), vec![], EVERYTHING).await,
        expected(&[&a1, &a3, &a5])
    );
    assert_eq!(
        query(Log, TRACE_A, Some("t1"), vec![], backwards).await,
        expected(&[&a5, &a3, &a1])
    );
    assert_eq!(
        query(Span, TRACE_A, Some("t2"), vec![], EVERYTHING).await,
        expected(&[&s2])
    );
    assert_eq!(
        query(Log, TRACE_A, Some("t9"), vec![], EVERYTHING).await,
        []
    );

    assert_eq!(
        query(Log, TRACE_A, None, vec![(9, 13)], EVERYTHING).await,
        expected(&[&a2, &a3]),
        "both ends of a range are included"
    );
    assert_eq!(
        query(Log, TRACE_A, None, vec![(1, 1), (17, 24)], EVERYTHING).await,
        expected(&[&a1, &a4]),
        "any of several ranges"
    );
    assert_eq!(
        query(Log, TRACE_A, None, vec![(2, 4), (14, 16)], EVERYTHING).await,
        []
    );
    assert_eq!(
        query(Log, TRACE_A, Some("t1"), vec![(5, 24)], backwards).await,
        expected(&[&a5, &a3]),
        "task and severity filters combine"
    );

    assert_eq!(
        query(Log, TRACE_A, None, vec![], page(None, 2, false)).await,
        expected(&[&a1, &a2])
    );
    assert_eq!(
        query(Log, TRACE_A, None, vec![], page(Some(&a2), 2, false)).await,
        expected(&[&a3, &a4])
    );
    assert_eq!(
        query(Log, TRACE_A, None, vec![], page(Some(&a4), 2, false)).await,
        expected(&[&a5])
    );
    assert_eq!(
        query(Log, TRACE_A, None, vec![], page(Some(&a5), 2, false)).await,
        []
    );
    assert_eq!(
        query(Log, TRACE_A, None, vec![], page(None, 2, true)).await,
        expected(&[&a5, &a4])
    );
    assert_eq!(
        query(Log, TRACE_A, None, vec![], page(Some(&a4), 2, true)).await,
        expected(&[&a3, &a2])
    );
    assert_eq!(
        query(Log, TRACE_A, Some("t1"), vec![], page(Some(&a1), 1, false)).await,
        expected(&[&a3])
    );
    assert_eq!(
        query(Span, TRACE_A, None, vec![], page(Some(&s1), 5, false)).await,
        expected(&[&s2])
    );

    // Counts by severity, of the first records in arrival order when limited.
    let count = |kind: TelemetryKind, trace: [u8; 16], limit: usize| {
        let counted = store.count_telemetry_by_severity(kind, trace.to_vec(), limit);
        async move { counted.await.expect("count telemetry") }
    };
    assert_eq!(
        count(Log, TRACE_A, 1_000).await,
        [(1, 1), (5, 1), (9, 1), (13, 1), (17, 1)],
        "one record of each severity, by severity"
    );
    assert_eq!(
        count(Log, TRACE_A, 2).await,
        [(1, 1), (9, 1)],
        "the first two arrivals (a1, a2)"
    );
    assert_eq!(count(Span, TRACE_A, 1_000).await, [(0, 2)]);
    assert_eq!(count(Log, TRACE_B, 1_000).await, [(9, 1)]);
    assert_eq!(count(Log, [0x00; 16], 1_000).await, []);

    // Deleting by arrival time: a cutoff before the first arrival removes nothing; one after
    // a record arrived removes it and keeps what arrived later.
    assert_eq!(
        store
            .delete_telemetry_before(before)
            .await
            .expect("delete telemetry"),
        0
    );
    assert_eq!(query(Log, TRACE_A, None, vec![], EVERYTHING).await.len(), 5);
    let cutoff = now_millis() + 1;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while now_millis() < cutoff {
        assert!(
            std::time::Instant::now() < deadline,
            "the clock stands still"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    insert(TelemetryKind::Log, &[&late]).await;
    assert_eq!(
        store
            .delete_telemetry_before(cutoff)
            .await
            .expect("delete telemetry"),
        9,
        "every record received before the cutoff"
    );
    for (kind, trace) in [(Log, TRACE_A), (Span, TRACE_A), (Span, TRACE_B)] {
        assert_eq!(query(kind, trace, None, vec![], EVERYTHING).await, []);
    }
    assert_eq!(
        query(Log, TRACE_B, None, vec![], EVERYTHING).await,
        expected(&[&late]),
        "a record received after the cutoff is kept"
    );
    assert_eq!(
        store
            .delete_telemetry_before(now_millis() + 1)
            .await
            .expect("delete telemetry"),
        1
    );
    assert_eq!(query(Log, TRACE_B, None, vec![], EVERYTHING).await, []);
}
