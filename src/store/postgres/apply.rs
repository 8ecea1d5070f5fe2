//! [`apply_batch`] on PostgreSQL: the same fold as SQLite's (`store::batch::plan`, the one
//! rule), with the rows read and written in a statement per table, and the batch's orders
//! locked first so that several writers (two per instance, several instances) never decide
//! from a stale row.
//!
//! The locking (READ COMMITTED, as the design note measured):
//! 1. the batch's orders that have no row yet get an empty one (`ON CONFLICT DO NOTHING`, in
//!    UUID order): a writer inserting the same new order waits for the first one's commit;
//! 2. every order row of the batch is locked in UUID order (`FOR NO KEY UPDATE`), so two
//!    batches never wait for each other in a cycle;
//! 3. the items are read after the lock, so they include everything the lock's previous
//!    holder committed.
//!
//! Orders created in step 1 are handed to the fold as absent, as SQLite's path sees them, so
//! both engines write the same rows (the differential test compares them).

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, SubsecRound, Utc};
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::super::StoreSettings;
use super::super::apply::{log_decision, warn_about_times};
use super::super::batch::{self, ItemWrite, Loaded, OrderWrite, StoredItem, StoredOrder};
use super::super::poll_state::{ItemPollView, PollFields, stopped_sql};
use super::super::rule::{ItemState, OrderState, Outcome, musement_time};
use super::session::Session;
use crate::observation::{ItemFacts, Observation, OrderFacts, Source, Status};

/// Times as both engines store them: to the millisecond.
fn ms(time: DateTime<Utc>) -> DateTime<Utc> {
    time.trunc_subsecs(3)
}

fn ms_opt(time: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
    time.map(ms)
}

/// Applies `observations`, in order, inside the caller's transaction (READ COMMITTED) and
/// returns each one's outcome: what SQLite's `store::apply_batch` does, on PostgreSQL.
/// `receiver` names the instance in `item_events.receiver`.
pub async fn apply_batch(
    tx: &Session<'_>,
    observations: &[&Observation],
    settings: &StoreSettings,
    now: DateTime<Utc>,
    receiver: &str,
) -> Result<Vec<Outcome>, tokio_postgres::Error> {
    // Truncated first, as SQLite stores it: everything the fold compares `now` with is a stored
    // (millisecond) time or `now` plus whole milliseconds, so the decisions stay SQLite's.
    let now = ms(now);
    let (order_keys, item_keys) = keys_of(observations);
    let created = create_missing_orders(tx, &order_keys, now).await?;
    let (mut loaded, mut seqs) = load(tx, &order_keys, &item_keys).await?;
    for key in &created {
        loaded.orders.remove(&key.to_string());
    }
    let existing: HashSet<String> = loaded.items.keys().cloned().collect();
    let plan = batch::plan(loaded, observations, settings, now);
    write_orders(tx, &plan.orders).await?;
    let item_seqs = write_items(tx, &plan.items, &existing, &seqs.orders, now).await?;
    seqs.items.extend(item_seqs);
    append_events(
        tx,
        observations,
        &plan.outcomes,
        &seqs.items,
        settings,
        receiver,
    )
    .await?;
    for note in &plan.notes {
        let observation = observations[note.index];
        warn_about_times(observation, &settings.rules);
        log_decision(observation, note.before.as_ref(), &note.decision);
    }
    Ok(plan.outcomes)
}

/// The batch's orders and items, each once, orders sorted (the lock order).
fn keys_of(observations: &[&Observation]) -> (Vec<Uuid>, Vec<Uuid>) {
    let orders: HashSet<Uuid> = observations.iter().map(|o| o.order).collect();
    let items: HashSet<Uuid> = observations.iter().map(|o| o.item).collect();
    let mut orders: Vec<Uuid> = orders.into_iter().collect();
    orders.sort_unstable();
    let mut items: Vec<Uuid> = items.into_iter().collect();
    items.sort_unstable();
    (orders, items)
}

/// Inserts an empty row for each order that has none (in UUID order), so it can be locked;
/// returns the ones it created.
async fn create_missing_orders(
    tx: &Session<'_>,
    orders: &[Uuid],
    now: DateTime<Utc>,
) -> Result<Vec<Uuid>, tokio_postgres::Error> {
    let rows = tx
        .query(
            "INSERT INTO orders (order_uuid, first_seen_at)
             SELECT o, $2 FROM unnest($1::uuid[]) AS o ORDER BY o
             ON CONFLICT (order_uuid) DO NOTHING
             RETURNING order_uuid",
            &[&orders, &now],
        )
        .await?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

/// The arrival numbers of the rows a batch touches, by UUID text.
#[derive(Debug, Default)]
struct Seqs {
    orders: HashMap<String, i64>,
    items: HashMap<String, i64>,
}

/// The `order_items` columns [`read_item`] reads, in its order.
macro_rules! stored_item_columns {
    () => {
        "item_uuid, order_uuid, status, status_version, item_version, as_of, as_of_source,
         source, facts_as_of, first_seen_at, item_created, item_updated, vouchers, product_id,
         product_title, product_date, max_confirmation_time,
         coalesce(jsonb_array_length(vouchers), 0) > 0, seq"
    };
}

/// Locks the batch's orders (sorted) and reads them, their items, and the items the batch names.
async fn load(
    tx: &Session<'_>,
    orders: &[Uuid],
    items: &[Uuid],
) -> Result<(Loaded, Seqs), tokio_postgres::Error> {
    let mut loaded = Loaded::default();
    let mut seqs = Seqs::default();
    let rows = tx
        .query(
            concat!(
                "SELECT order_uuid, order_id, order_version, order_created, order_updated,
                        order_status, identifier, order_polled_as_of, repoll_at, repoll_attempts,
                        poll_failures, next_poll_at, last_polled_at IS NULL, ",
                stopped_sql!(),
                ", seq FROM orders WHERE order_uuid = ANY($1)
                 ORDER BY order_uuid FOR NO KEY UPDATE"
            ),
            &[&orders],
        )
        .await?;
    let mut order_seqs = Vec::with_capacity(rows.len());
    for row in &rows {
        let key = row.get::<_, Uuid>(0).to_string();
        let seq: i64 = row.get(14);
        order_seqs.push(seq);
        seqs.orders.insert(key.clone(), seq);
        loaded.orders.insert(
            key,
            StoredOrder {
                state: OrderState {
                    facts: OrderFacts {
                        id: row.get(1),
                        version: row.get(2),
                        created: row.get(3),
                        updated: row.get(4),
                        status: row.get(5),
                        identifier: row.get(6),
                    },
                    polled_as_of: row.get(7),
                },
                repoll_mark: Ok(row.get(8)),
                repoll_attempts: i64::from(row.get::<_, i32>(9)),
                poll: PollFields {
                    failures: i64::from(row.get::<_, i32>(10)),
                    next: row.get(11),
                    never_polled: row.get(12),
                    stopped: row.get(13),
                },
            },
        );
    }
    // Two index lookups, not one `… OR …`: with an OR the planner weighs a bitmap of both
    // indexes against a sequential scan, and on a table growing faster than ANALYZE runs it
    // chose the scan (5 ms a batch at 15,000 rows, measured). An item both named and in a named
    // order comes back twice; the map keeps it once.
    let rows = tx
        .query(
            concat!(
                "SELECT ",
                stored_item_columns!(),
                " FROM order_items WHERE item_uuid = ANY($1)
                  UNION ALL
                  SELECT ",
                stored_item_columns!(),
                " FROM order_items WHERE order_seq = ANY($2) AND order_uuid = ANY($3)"
            ),
            &[&items, &order_seqs, &orders],
        )
        .await?;
    for row in &rows {
        let key = row.get::<_, Uuid>(0).to_string();
        seqs.items.insert(key.clone(), row.get(18));
        loaded.items.insert(key, read_item(row));
    }
    Ok((loaded, seqs))
}

/// An `order_items` row as [`load`] selects it. PostgreSQL's types leave no cell unreadable
/// (SQLite's path has to allow for hand-damaged ones).
fn read_item(row: &tokio_postgres::Row) -> StoredItem {
    let status = Status::parse(row.get::<_, &str>(2));
    let source = |i| Source::parse(row.get::<_, &str>(i)).unwrap_or(Source::Webhook);
    let vouchers: Option<serde_json::Value> = row.get(12);
    let facts = ItemFacts {
        vouchers: vouchers.and_then(|v| serde_json::from_value(v).ok()),
        product_id: row.get(13),
        product_title: row.get(14),
        product_date: row.get(15),
        max_confirmation_time: row.get(16),
    };
    StoredItem {
        order_key: row.get::<_, Uuid>(1).to_string(),
        state: Some(ItemState {
            status: status.clone(),
            status_version: row.get(3),
            item_version: row.get(4),
            as_of: row.get(5),
            as_of_source: source(6),
            source: source(7),
            facts_as_of: row.get(8),
            facts: facts.clone(),
            item_created: row.get(10),
            item_updated: row.get(11),
        }),
        facts,
        first_seen: Some(row.get(9)),
        first_event: None,
        poll_view: ItemPollView {
            status,
            has_vouchers: row.get(17),
            product_date: row.get(15),
        },
    }
}

fn uuid_of(key: &str) -> Uuid {
    Uuid::parse_str(key).expect("the batch's keys are UUIDs it was given")
}

/// The orders' decided facts, re-poll marks and polling plans, a statement each.
async fn write_orders(
    tx: &Session<'_>,
    orders: &[OrderWrite],
) -> Result<(), tokio_postgres::Error> {
    let with_facts: Vec<(&OrderWrite, &OrderState)> = orders
        .iter()
        .filter_map(|o| o.facts.as_ref().map(|facts| (o, facts)))
        .collect();
    if !with_facts.is_empty() {
        let keys: Vec<Uuid> = with_facts.iter().map(|(o, _)| uuid_of(&o.key)).collect();
        let ids: Vec<Option<&str>> = with_facts
            .iter()
            .map(|(_, s)| s.facts.id.as_deref())
            .collect();
        let versions: Vec<Option<i64>> = with_facts.iter().map(|(_, s)| s.facts.version).collect();
        let created: Vec<Option<DateTime<Utc>>> = with_facts
            .iter()
            .map(|(_, s)| ms_opt(s.facts.created))
            .collect();
        let updated: Vec<Option<DateTime<Utc>>> = with_facts
            .iter()
            .map(|(_, s)| ms_opt(s.facts.updated))
            .collect();
        let statuses: Vec<Option<&str>> = with_facts
            .iter()
            .map(|(_, s)| s.facts.status.as_deref())
            .collect();
        let identifiers: Vec<Option<&str>> = with_facts
            .iter()
            .map(|(_, s)| s.facts.identifier.as_deref())
            .collect();
        let polled: Vec<Option<DateTime<Utc>>> = with_facts
            .iter()
            .map(|(_, s)| ms_opt(s.polled_as_of))
            .collect();
        tx.execute(
            "UPDATE orders o SET order_id = u.id, order_version = u.version,
                    order_created = u.created, order_updated = u.updated,
                    order_status = u.status, identifier = u.identifier,
                    order_polled_as_of = u.polled
             FROM unnest($1::uuid[], $2::text[], $3::bigint[], $4::timestamptz[],
                         $5::timestamptz[], $6::text[], $7::text[], $8::timestamptz[])
                  AS u(key, id, version, created, updated, status, identifier, polled)
             WHERE o.order_uuid = u.key",
            &[
                &keys,
                &ids,
                &versions,
                &created,
                &updated,
                &statuses,
                &identifiers,
                &polled,
            ],
        )
        .await?;
    }
    let repolls: Vec<(Uuid, DateTime<Utc>, i32)> = orders
        .iter()
        .filter_map(|o| {
            o.repoll
                .map(|(at, attempts)| (uuid_of(&o.key), ms(at), attempts as i32))
        })
        .collect();
    if !repolls.is_empty() {
        let keys: Vec<Uuid> = repolls.iter().map(|r| r.0).collect();
        let at: Vec<DateTime<Utc>> = repolls.iter().map(|r| r.1).collect();
        let attempts: Vec<i32> = repolls.iter().map(|r| r.2).collect();
        tx.execute(
            "UPDATE orders o SET repoll_at = u.at, repoll_attempts = u.attempts
             FROM unnest($1::uuid[], $2::timestamptz[], $3::integer[]) AS u(key, at, attempts)
             WHERE o.order_uuid = u.key",
            &[&keys, &at, &attempts],
        )
        .await?;
    }
    let keys: Vec<Uuid> = orders.iter().map(|o| uuid_of(&o.key)).collect();
    let needs: Vec<bool> = orders.iter().map(|o| o.poll.needs_poll).collect();
    let next: Vec<DateTime<Utc>> = orders.iter().map(|o| ms(o.poll.next)).collect();
    tx.execute(
        "UPDATE orders o SET needs_poll = u.needs, next_poll_at = u.next
         FROM unnest($1::uuid[], $2::boolean[], $3::timestamptz[]) AS u(key, needs, next)
         WHERE o.order_uuid = u.key
           AND (o.needs_poll IS DISTINCT FROM u.needs OR o.next_poll_at IS DISTINCT FROM u.next)",
        &[&keys, &needs, &next],
    )
    .await?;
    Ok(())
}

/// The columns of the item rows a batch writes, one array per column.
struct ItemColumns<'a> {
    keys: Vec<Uuid>,
    orders: Vec<Uuid>,
    statuses: Vec<&'a str>,
    item_versions: Vec<Option<i64>>,
    status_versions: Vec<Option<i64>>,
    created: Vec<Option<DateTime<Utc>>>,
    updated: Vec<Option<DateTime<Utc>>>,
    as_of: Vec<DateTime<Utc>>,
    as_of_sources: Vec<&'static str>,
    sources: Vec<&'static str>,
    facts_as_of: Vec<Option<DateTime<Utc>>>,
    first_seen: Vec<DateTime<Utc>>,
    status_changed: Vec<bool>,
    vouchers: Vec<Option<serde_json::Value>>,
    product_ids: Vec<Option<&'a str>>,
    product_titles: Vec<Option<&'a str>>,
    product_dates: Vec<Option<&'a str>>,
    confirmation_times: Vec<Option<&'a str>>,
    deadlines: Vec<Option<DateTime<Utc>>>,
    repaired: Vec<bool>,
    writes_facts: Vec<bool>,
    order_seqs: Vec<Option<i64>>,
}

impl<'a> ItemColumns<'a> {
    fn of(items: &[&'a ItemWrite], order_seqs: &HashMap<String, i64>) -> Self {
        let facts = |i: &&'a ItemWrite| &i.state.facts;
        Self {
            keys: items.iter().map(|i| uuid_of(&i.key)).collect(),
            orders: items.iter().map(|i| uuid_of(&i.order_key)).collect(),
            statuses: items.iter().map(|i| i.state.status.as_str()).collect(),
            item_versions: items.iter().map(|i| i.state.item_version).collect(),
            status_versions: items.iter().map(|i| i.state.status_version).collect(),
            created: items.iter().map(|i| ms_opt(i.state.item_created)).collect(),
            updated: items.iter().map(|i| ms_opt(i.state.item_updated)).collect(),
            as_of: items.iter().map(|i| ms(i.state.as_of)).collect(),
            as_of_sources: items
                .iter()
                .map(|i| i.state.as_of_source.as_str())
                .collect(),
            sources: items.iter().map(|i| i.state.source.as_str()).collect(),
            facts_as_of: items.iter().map(|i| ms_opt(i.state.facts_as_of)).collect(),
            first_seen: items.iter().map(|i| ms(i.first_seen)).collect(),
            status_changed: items.iter().map(|i| i.status_changed).collect(),
            vouchers: items
                .iter()
                .map(|i| facts(i).vouchers.clone().map(serde_json::Value::from))
                .collect(),
            product_ids: items
                .iter()
                .map(|i| facts(i).product_id.as_deref())
                .collect(),
            product_titles: items
                .iter()
                .map(|i| facts(i).product_title.as_deref())
                .collect(),
            product_dates: items
                .iter()
                .map(|i| facts(i).product_date.as_deref())
                .collect(),
            confirmation_times: items
                .iter()
                .map(|i| facts(i).max_confirmation_time.as_deref())
                .collect(),
            deadlines: items.iter().map(|i| ms_opt(i.confirm_deadline)).collect(),
            repaired: items.iter().map(|i| i.repaired_first_seen).collect(),
            writes_facts: items.iter().map(|i| i.writes_facts).collect(),
            order_seqs: items
                .iter()
                .map(|i| order_seqs.get(&i.order_key).copied())
                .collect(),
        }
    }

    /// The parameters `$1`…`$22` of [`unnest_items!`], then `now` as `$23`.
    fn params<'p>(&'p self, now: &'p DateTime<Utc>) -> [&'p (dyn ToSql + Sync); 23] {
        [
            &self.keys,
            &self.orders,
            &self.statuses,
            &self.item_versions,
            &self.status_versions,
            &self.created,
            &self.updated,
            &self.as_of,
            &self.as_of_sources,
            &self.sources,
            &self.facts_as_of,
            &self.first_seen,
            &self.status_changed,
            &self.vouchers,
            &self.product_ids,
            &self.product_titles,
            &self.product_dates,
            &self.confirmation_times,
            &self.deadlines,
            &self.repaired,
            &self.writes_facts,
            &self.order_seqs,
            now,
        ]
    }
}

/// The rows [`ItemColumns::params`] binds, as a table `u`.
macro_rules! unnest_items {
    () => {
        "unnest($1::uuid[], $2::uuid[], $3::text[], $4::bigint[], $5::bigint[],
            $6::timestamptz[], $7::timestamptz[], $8::timestamptz[], $9::text[], $10::text[],
            $11::timestamptz[], $12::timestamptz[], $13::boolean[], $14::jsonb[], $15::text[],
            $16::text[], $17::text[], $18::text[], $19::timestamptz[], $20::boolean[],
            $21::boolean[], $22::bigint[])
       AS u(key, order_key, status, item_version, status_version, created, updated, as_of,
            as_of_source, source, facts_as_of, first_seen, status_changed, vouchers,
            product_id, product_title, product_date, confirmation_time, deadline, repaired,
            writes_facts, order_seq)"
    };
}

/// The items' decided states: new rows in one INSERT, changed rows in one UPDATE (the poll
/// facts' columns only where the rule said a poll's facts are the newest); returns the `seq`
/// of every item written.
async fn write_items(
    tx: &Session<'_>,
    items: &[ItemWrite],
    existing: &HashSet<String>,
    order_seqs: &HashMap<String, i64>,
    now: DateTime<Utc>,
) -> Result<HashMap<String, i64>, tokio_postgres::Error> {
    let (stored, new): (Vec<&ItemWrite>, Vec<&ItemWrite>) =
        items.iter().partition(|i| existing.contains(&i.key));
    let mut seqs = HashMap::new();
    if !new.is_empty() {
        let columns = ItemColumns::of(&new, order_seqs);
        let rows = tx
            .query(
                concat!(
                    "INSERT INTO order_items (item_uuid, order_uuid, status, item_version,
                            status_version, item_created, item_updated, as_of, as_of_source,
                            source, facts_as_of, first_seen_at, changed_at, updated_at,
                            vouchers, product_id, product_title, product_date,
                            max_confirmation_time, confirm_deadline, order_seq)
                     SELECT u.key, u.order_key, u.status, u.item_version, u.status_version,
                            u.created, u.updated, u.as_of, u.as_of_source, u.source,
                            u.facts_as_of, u.first_seen, $23, $23, u.vouchers, u.product_id,
                            u.product_title, u.product_date, u.confirmation_time, u.deadline,
                            u.order_seq
                     FROM ",
                    unnest_items!(),
                    " RETURNING item_uuid, seq"
                ),
                &columns.params(&now),
            )
            .await?;
        seqs.extend(
            rows.iter()
                .map(|row| (row.get::<_, Uuid>(0).to_string(), row.get(1))),
        );
    }
    if !stored.is_empty() {
        let columns = ItemColumns::of(&stored, order_seqs);
        let rows = tx
            .query(
                concat!(
                    "UPDATE order_items i SET
                       status = u.status,
                       item_version = u.item_version,
                       status_version = u.status_version,
                       item_created = u.created,
                       item_updated = u.updated,
                       as_of = u.as_of,
                       as_of_source = u.as_of_source,
                       source = u.source,
                       facts_as_of = u.facts_as_of,
                       first_seen_at = CASE WHEN u.repaired THEN u.first_seen ELSE i.first_seen_at END,
                       changed_at = CASE WHEN u.status_changed THEN $23 ELSE i.changed_at END,
                       updated_at = $23,
                       vouchers = CASE WHEN u.writes_facts THEN u.vouchers ELSE i.vouchers END,
                       product_id = CASE WHEN u.writes_facts THEN u.product_id ELSE i.product_id END,
                       product_title = CASE WHEN u.writes_facts THEN u.product_title
                                            ELSE i.product_title END,
                       product_date = CASE WHEN u.writes_facts THEN u.product_date
                                           ELSE i.product_date END,
                       max_confirmation_time = CASE WHEN u.writes_facts THEN u.confirmation_time
                                                    ELSE i.max_confirmation_time END,
                       confirm_deadline = CASE WHEN u.writes_facts
                                               THEN coalesce(u.deadline, i.confirm_deadline)
                                               ELSE i.confirm_deadline END
                     FROM ",
                    unnest_items!(),
                    " WHERE i.item_uuid = u.key
                     RETURNING i.item_uuid, i.seq"
                ),
                &columns.params(&now),
            )
            .await?;
        seqs.extend(
            rows.iter()
                .map(|row| (row.get::<_, Uuid>(0).to_string(), row.get(1))),
        );
    }
    Ok(seqs)
}

/// Every observation's event, in batch order (ids grow in that order).
async fn append_events(
    tx: &Session<'_>,
    observations: &[&Observation],
    outcomes: &[Outcome],
    item_seqs: &HashMap<String, i64>,
    settings: &StoreSettings,
    receiver: &str,
) -> Result<(), tokio_postgres::Error> {
    let items: Vec<Uuid> = observations.iter().map(|o| o.item).collect();
    let orders: Vec<Uuid> = observations.iter().map(|o| o.order).collect();
    let sources: Vec<&str> = observations
        .iter()
        .map(|o| o.position.source().as_str())
        .collect();
    let statuses: Vec<&str> = observations.iter().map(|o| o.status.as_str()).collect();
    let versions: Vec<Option<i64>> = observations.iter().map(|o| o.position.version()).collect();
    let as_of: Vec<DateTime<Utc>> = observations
        .iter()
        .map(|o| ms(musement_time(o, &settings.rules)))
        .collect();
    let received: Vec<DateTime<Utc>> = observations.iter().map(|o| ms(o.received_at)).collect();
    let outcome_names: Vec<&str> = outcomes.iter().map(|o| o.as_str()).collect();
    let payloads: Vec<&str> = observations.iter().map(|o| o.raw.as_str()).collect();
    let item_seq: Vec<Option<i64>> = observations
        .iter()
        .map(|o| item_seqs.get(&o.item.to_string()).copied())
        .collect();
    tx.execute(
        "INSERT INTO item_events (item_uuid, order_uuid, source, status, item_version, as_of,
                                  received_at, outcome, payload, item_seq, receiver)
         SELECT u.item, u.ord, u.source, u.status, u.version, u.as_of, u.received, u.outcome,
                u.payload, u.item_seq, $11
         FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::bigint[],
                     $6::timestamptz[], $7::timestamptz[], $8::text[], $9::text[], $10::bigint[])
              WITH ORDINALITY
              AS u(item, ord, source, status, version, as_of, received, outcome, payload,
                   item_seq, n)
         ORDER BY u.n",
        &[
            &items,
            &orders,
            &sources,
            &statuses,
            &versions,
            &as_of,
            &received,
            &outcome_names,
            &payloads,
            &item_seq,
            &receiver,
        ],
    )
    .await?;
    Ok(())
}
