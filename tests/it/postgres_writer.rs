//! The writer on PostgreSQL, on a real server: the writer thread itself (queue, group commit,
//! answers after commit) over `store::postgres::batches::PgBatches`, and that engine half on
//! its own: one failing command is undone alone while the rest of its batch commits, and a
//! connection killed by the server fails at most the batch it was in, never answers "stored"
//! for something that is not, and is opened again for the next batch.

use chrono::{DateTime, Utc};
use orderwatch::clock::ManualClock;
use orderwatch::observation::Observation;
use orderwatch::store::commands::{Command, Done};
use orderwatch::store::postgres::batches::{PgBatches, PgTarget};
use orderwatch::store::postgres::connect::PgConnect;
use orderwatch::store::writer::{Batches, JobResult};
use orderwatch::store::{Outcome, RejectedWebhook, StoreSettings};
use uuid::Uuid;

use crate::helpers::{pg, uuid, webhook};

fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(1_704_067_300, 0).unwrap()
}

fn apply(item: &str, order: &str) -> Command {
    let body = webhook(item, order, 1, "PENDING");
    Command::Apply(Box::new(
        Observation::from_webhook(body.as_bytes(), now()).unwrap(),
    ))
}

fn target(db: &pg::TestDatabase) -> PgTarget {
    PgTarget {
        connect: PgConnect::from_url(&db.url, "writer-test").unwrap(),
        instance: "writer-test".to_owned(),
    }
}

/// A migrated database, and a runtime for the test's own queries.
fn prepared(what: &str) -> Option<(pg::TestDatabase, tokio::runtime::Runtime)> {
    let db = pg::database(what)?;
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(db.migrated_client());
    Some((db, runtime))
}

fn commit(batches: &mut PgBatches, batch: &[Command]) -> Vec<JobResult> {
    let clock = ManualClock::new(now());
    let commands: Vec<&Command> = batch.iter().collect();
    batches
        .commit(&commands, &settings(), &clock)
        .unwrap_or_else(|e| vec![Err(e); batch.len()])
}

fn settings() -> StoreSettings {
    StoreSettings {
        rejected_keep: 10,
        ..StoreSettings::default()
    }
}

async fn count(db: &pg::TestDatabase, sql: &str) -> i64 {
    db.client().await.query_one(sql, &[]).await.unwrap().get(0)
}

#[test]
fn a_failing_command_is_undone_alone_and_the_rest_of_its_batch_commits() {
    let Some((db, runtime)) = prepared("one failing command") else {
        return;
    };
    let refused = uuid(9, 9);
    runtime.block_on(async {
        db.client()
            .await
            .batch_execute(&format!(
                "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
                 BEGIN
                   IF NEW.item_uuid = '{refused}' THEN RAISE EXCEPTION 'refused by the test'; END IF;
                   RETURN NEW;
                 END $$;
                 CREATE TRIGGER refuse BEFORE INSERT ON item_events
                   FOR EACH ROW EXECUTE FUNCTION refuse();"
            ))
            .await
            .unwrap();
    });
    let mut batches = PgBatches::connect(target(&db)).unwrap();
    let batch = [
        apply(&uuid(1, 1), &uuid(2, 1)),
        apply(&refused, &uuid(2, 9)),
        apply(&uuid(1, 2), &uuid(2, 2)),
        Command::Ping,
        Command::Reject(RejectedWebhook {
            received_at: now(),
            peer: "127.0.0.1".into(),
            field: "status".into(),
            error: "not a status".into(),
            body: b"{}".to_vec(),
        }),
    ];
    let results = commit(&mut batches, &batch);
    assert_eq!(results[0], Ok(Done::Outcome(Outcome::Applied)));
    let error = results[1].clone().unwrap_err().to_string();
    assert!(error.contains("refused by the test"), "{error}");
    assert_eq!(results[2], Ok(Done::Outcome(Outcome::Applied)));
    assert_eq!(results[3], Ok(Done::Nothing));
    assert_eq!(results[4], Ok(Done::Nothing));
    runtime.block_on(async {
        assert_eq!(count(&db, "SELECT count(*) FROM order_items").await, 2);
        assert_eq!(
            count(
                &db,
                &format!(
                    "SELECT count(*) FROM orders WHERE order_uuid = '{}'",
                    uuid(2, 9)
                )
            )
            .await,
            0,
            "the failing command's order row was undone with it"
        );
        assert_eq!(count(&db, "SELECT count(*) FROM item_events").await, 2);
        assert_eq!(
            count(
                &db,
                "SELECT count(*) FROM heartbeat WHERE instance = 'writer-test'"
            )
            .await,
            1
        );
        assert_eq!(
            count(&db, "SELECT count(*) FROM rejected_webhooks").await,
            1
        );
    });
}

#[test]
fn a_connection_killed_by_the_server_fails_at_most_its_batch_and_is_opened_again() {
    let Some((db, runtime)) = prepared("a killed writer connection") else {
        return;
    };
    let mut batches = PgBatches::connect(target(&db)).unwrap();
    assert!(commit(&mut batches, &[apply(&uuid(1, 1), &uuid(2, 1))])[0].is_ok());
    let killed = runtime.block_on(async {
        count(
            &db,
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .await
    });
    assert_eq!(killed, 1, "the writer's connection");
    let mut acknowledged: Vec<String> = vec![uuid(1, 1)];
    let mut failed = 0;
    for n in 2..6 {
        let item = uuid(1, n);
        match &commit(&mut batches, &[apply(&item, &uuid(2, n))])[0] {
            Ok(_) => acknowledged.push(item),
            Err(error) => {
                failed += 1;
                eprintln!("batch {n}: {error}");
            }
        }
    }
    assert!(failed <= 1, "{failed} batches failed after one kill");
    assert!(acknowledged.len() >= 4, "the writer connected again");
    let stored: Vec<Uuid> = runtime.block_on(async {
        db.client()
            .await
            .query("SELECT item_uuid FROM order_items", &[])
            .await
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect()
    });
    for item in &acknowledged {
        assert!(
            stored.contains(&Uuid::parse_str(item).unwrap()),
            "{item} was acknowledged and must be stored"
        );
    }
}

#[test]
fn the_writer_thread_stores_concurrent_webhooks_in_shared_batches_and_answers_after_commit() {
    use std::sync::Arc;

    use orderwatch::store::checkpoint::CheckpointSettings;
    use orderwatch::store::observer::Unobserved;
    use orderwatch::store::postgres::start_writer;
    use orderwatch::store::writer::WriterSettings;

    let Some((db, runtime)) = prepared("the writer thread") else {
        return;
    };
    runtime.block_on(async {
        let settings = WriterSettings {
            max_batch: 64,
            queue_capacity: 1024,
            store: settings(),
            max_size_bytes: None,
            checkpoints: CheckpointSettings::default(),
        };
        let clock = Arc::new(ManualClock::new(now()));
        let (writer, thread) = start_writer(target(&db), settings, clock, Arc::new(Unobserved))
            .await
            .unwrap();
        let mut senders = Vec::new();
        for task in 0..8u64 {
            let writer = writer.clone();
            senders.push(tokio::spawn(async move {
                let mut outcomes = Vec::new();
                for n in 0..25u64 {
                    let body = webhook(&uuid(1, task * 100 + n), &uuid(2, task), 1, "PENDING");
                    let observation = Observation::from_webhook(body.as_bytes(), now()).unwrap();
                    outcomes.push(writer.apply(observation).await);
                }
                outcomes
            }));
        }
        for sender in senders {
            for outcome in sender.await.unwrap() {
                assert_eq!(outcome, Ok(Outcome::Applied));
            }
        }
        writer.ping().await.unwrap();
        thread.shutdown().await;
        assert_eq!(count(&db, "SELECT count(*) FROM order_items").await, 200);
        assert_eq!(count(&db, "SELECT count(*) FROM orders").await, 8);
        assert_eq!(count(&db, "SELECT count(*) FROM item_events").await, 200);
        assert_eq!(
            count(
                &db,
                "SELECT count(*) FROM heartbeat WHERE instance = 'writer-test'"
            )
            .await,
            1
        );
        let batches = count(&db, "SELECT count(DISTINCT tx::text) FROM item_events").await;
        assert!(
            batches < 200,
            "webhooks shared transactions: {batches} for 200"
        );
        assert_eq!(
            writer
                .apply(
                    Observation::from_webhook(
                        webhook(&uuid(1, 999), &uuid(2, 9), 1, "OK").as_bytes(),
                        now()
                    )
                    .unwrap()
                )
                .await,
            Err(orderwatch::store::writer::WriteError::Closed),
            "after shutdown nothing is stored, and nothing is answered as stored"
        );
    });
}
