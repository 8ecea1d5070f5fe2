//! The change feed on PostgreSQL, on a real server: read in commit order, never past a
//! transaction still open (its events appear once it commits, before the ones committed after
//! it began), nothing skipped and nothing given twice while four connections write and a reader
//! follows with its cursor.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use orderwatch::observation::Observation;
use orderwatch::store::StoreSettings;
use orderwatch::store::postgres::apply::apply_batch;
use orderwatch::store::postgres::feed::{FeedCursor, changes, cursor_of_event};
use orderwatch::store::postgres::session::{Session, Statements};

use crate::helpers::{pg, uuid, webhook};

fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(1_704_067_300, 0).unwrap()
}

fn observation(item: u64, version: u64, status: &str) -> Observation {
    let body = webhook(&uuid(1, item), &uuid(2, item), version, status);
    Observation::from_webhook(body.as_bytes(), now()).unwrap()
}

async fn store(client: &mut tokio_postgres::Client, observations: &[Observation]) {
    let tx = client.transaction().await.unwrap();
    let refs: Vec<&Observation> = observations.iter().collect();
    let statements = Statements::default();
    apply_batch(
        &Session::new(&tx, &statements),
        &refs,
        &StoreSettings::default(),
        now(),
        "test",
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
}

/// Every change after `from`, page by page (`page` events at a time), and the cursor reached.
async fn follow(
    client: &tokio_postgres::Client,
    from: FeedCursor,
    page: usize,
) -> (Vec<(String, String)>, FeedCursor) {
    let mut cursor = from;
    let mut seen = Vec::new();
    loop {
        let read = changes(client, cursor, page).await.unwrap();
        for (_, change) in &read.changes {
            seen.push((change.item.clone(), change.new_status.clone()));
        }
        if let Some(last) = read.scanned_to {
            cursor = last;
        }
        if read.caught_up {
            return (seen, cursor);
        }
    }
}

/// [`follow`] until `count` changes came: another transaction of the cluster (autovacuum's
/// ANALYZE of a new table, say) may hold the feed back for a moment after a commit.
async fn follow_until(
    client: &tokio_postgres::Client,
    from: FeedCursor,
    page: usize,
    count: usize,
) -> (Vec<(String, String)>, FeedCursor) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let (mut seen, mut cursor) = (Vec::new(), from);
    while seen.len() < count && std::time::Instant::now() < deadline {
        let (more, reached) = follow(client, cursor, page).await;
        seen.extend(more);
        cursor = reached;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (seen, cursor)
}

#[tokio::test]
async fn a_transaction_still_open_holds_the_feed_back_and_then_comes_first() {
    let Some(db) = pg::database("the feed and an open transaction") else {
        return;
    };
    let mut open = db.migrated_client().await;
    let mut other = db.client().await;
    let reader = db.client().await;

    let held = open.transaction().await.unwrap();
    let statements = Statements::default();
    apply_batch(
        &Session::new(&held, &statements),
        &[&observation(1, 1, "PENDING")],
        &StoreSettings::default(),
        now(),
        "test",
    )
    .await
    .unwrap();
    store(&mut other, &[observation(2, 1, "PENDING")]).await;
    store(&mut other, &[observation(3, 1, "PENDING")]).await;
    let (seen, cursor) = follow(&reader, FeedCursor::START, 100).await;
    assert_eq!(seen, vec![], "nothing past a transaction still open");
    assert_eq!(cursor, FeedCursor::START);

    held.commit().await.unwrap();
    let (seen, _) = follow_until(&reader, cursor, 100, 3).await;
    let items: Vec<String> = seen.iter().map(|(item, _)| item.clone()).collect();
    assert_eq!(
        items,
        vec![uuid(1, 1), uuid(1, 2), uuid(1, 3)],
        "commit-safe order"
    );

    // One event per page gives the same, and a plain event id resumes where it names.
    let (paged, end) = follow_until(&reader, FeedCursor::START, 1, 3).await;
    assert_eq!(paged, seen);
    let second_id: i64 = reader
        .query_one(
            "SELECT id FROM item_events WHERE item_uuid = $1::text::uuid",
            &[&uuid(1, 2)],
        )
        .await
        .unwrap()
        .get(0);
    let after_second = cursor_of_event(&reader, second_id).await.unwrap().unwrap();
    let (rest, _) = follow_until(&reader, after_second, 100, 1).await;
    assert_eq!(rest, vec![(uuid(1, 3), "PENDING".to_owned())]);

    // A new status is a change (with the old one); a newer version with the same status is not.
    store(&mut other, &[observation(1, 2, "OK")]).await;
    store(&mut other, &[observation(1, 3, "OK")]).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut news: Vec<(Option<String>, String)> = Vec::new();
    let mut cursor = end;
    while news.is_empty() && std::time::Instant::now() < deadline {
        let page = changes(&reader, cursor, 100).await.unwrap();
        news.extend(
            page.changes
                .iter()
                .map(|(_, c)| (c.old_status.clone(), c.new_status.clone())),
        );
        cursor = page.scanned_to.unwrap_or(cursor);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The same-status event may come in a later page: read to the end.
    let (after, _) = follow_until(&reader, cursor, 100, 0).await;
    assert_eq!(news, vec![(Some("PENDING".to_owned()), "OK".to_owned())]);
    assert_eq!(
        after,
        vec![],
        "a newer version with the same status is no change"
    );
    assert!("7.12".parse::<FeedCursor>().is_ok());
    let refused = "12".parse::<FeedCursor>().unwrap_err();
    assert!(refused.contains("TX.ID"), "{refused}");
}

#[tokio::test]
async fn a_reader_following_four_writers_gets_every_change_once() {
    let Some(db) = pg::database("the feed under four writers") else {
        return;
    };
    db.migrated_client().await;
    let mut writers = Vec::new();
    for writer in 0..4u64 {
        let url = db.url.clone();
        writers.push(tokio::spawn(async move {
            let mut client = pg::connect(&url).await;
            for batch in 0..20u64 {
                let observations: Vec<Observation> = (0..3)
                    .map(|n| observation(writer * 1000 + batch * 10 + n, 1, "PENDING"))
                    .collect();
                store(&mut client, &observations).await;
                if batch % 5 == 0 {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        }));
    }
    let reader = db.client().await;
    let mut cursor = FeedCursor::START;
    let mut seen = Vec::new();
    let mut writing = writers;
    loop {
        let done = writing.iter().all(|w| w.is_finished());
        let (got, reached) = follow(&reader, cursor, 7).await;
        seen.extend(got.into_iter().map(|(item, _)| item));
        cursor = reached;
        if done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    for writer in writing.drain(..) {
        writer.await.unwrap();
    }
    let (last, _) = follow_until(&reader, cursor, 7, 240 - seen.len()).await;
    seen.extend(last.into_iter().map(|(item, _)| item));
    let distinct: HashSet<&String> = seen.iter().collect();
    assert_eq!(distinct.len(), seen.len(), "nothing given twice");
    assert_eq!(seen.len(), 240, "every change given");
}
