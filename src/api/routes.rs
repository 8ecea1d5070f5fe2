//! The routes under `/v1`, each a small handler: parse the path, ask the store, answer JSON
//! (or a [`Problem`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use super::Api;
use super::problem::Problem;
use crate::reconciler::StatsShown;
use crate::store::inspect::{EventRow, FeedPosition, ItemFilter, Shown};
use crate::store::reader::ReadError;

/// `GET /v1/stats`: what `orderwatch stats --format json` prints.
pub async fn stats(State(api): State<Arc<Api>>) -> Result<Json<Value>, Problem> {
    let stats = api
        .reads
        .stats(api.clock.now())
        .await
        .map_err(read_failed)?;
    let shown = StatsShown {
        stats: &stats,
        reconciler: api.reconciler_state(),
    };
    Ok(Json(json!(shown)))
}

/// `GET /v1/orders/{order_uuid}`: the order's polling state and its items' reconciled state.
pub async fn order(
    State(api): State<Arc<Api>>,
    order: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, Problem> {
    let order = uuid_param("order_uuid", order)?;
    let shown = api.show(order).await?;
    match shown.order {
        Some(row) if row.order == order.to_string() => Ok(Json(json!({
            "order": row,
            "items": shown.items,
        }))),
        _ => Err(Problem::not_found(format!("no order {order} is stored"))),
    }
}

/// `GET /v1/items/{item_uuid}`: the item, its facts and vouchers, its order, and its history
/// with the rule's words (`why`, as `orderwatch show` says them).
pub async fn item(
    State(api): State<Arc<Api>>,
    item: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, Problem> {
    let item = uuid_param("item_uuid", item)?;
    let not_found = || Problem::not_found(format!("no item {item} is stored"));
    let shown = api.show(item).await?;
    let [row] = shown.items.as_slice() else {
        return Err(not_found());
    };
    if row.item != item.to_string() {
        return Err(not_found());
    }
    let facts = api
        .reads
        .item_facts(item)
        .await
        .map_err(read_failed)?
        .ok_or_else(not_found)?;
    let history: Vec<Value> = shown.events.iter().map(event_json).collect();
    Ok(Json(json!({
        "item": row,
        "facts": facts,
        "order": shown.order,
        "history": history,
    })))
}

/// An event as `show` has it, its stored payload as JSON rather than a string of JSON.
fn event_json(event: &EventRow) -> Value {
    let mut value = json!(event);
    if let Ok(payload) = serde_json::from_str::<Value>(&event.payload) {
        value["payload"] = payload;
    }
    value
}

/// How many items or changes a page holds unless `limit` says otherwise, and at most.
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1_000;

/// `GET /v1/items?status=…&overdue=true&limit=…&cursor=…`: items in arrival order, a page at
/// a time. `next_cursor` (null on the last page) continues after the page's last item; an
/// item's place never moves, so paging while webhooks arrive skips and repeats nothing
/// (of the items stored when the first page was read; items first stored meanwhile usually
/// come on later pages, but on PostgreSQL one whose writer commits after a later-numbered
/// one's can fall behind the cursor: `/v1/changes` is the complete record).
pub async fn items(
    State(api): State<Arc<Api>>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<Value>, Problem> {
    let params = query_params(query)?;
    let mut filter = ItemFilter {
        arrived_after: Some(0),
        ..ItemFilter::default()
    };
    let mut limit = DEFAULT_LIMIT;
    for (name, value) in &params {
        match name.as_str() {
            "status" => filter.statuses.extend(
                value
                    .split(',')
                    .map(|s| s.trim().to_uppercase())
                    .filter(|s| !s.is_empty()),
            ),
            "overdue" => filter.overdue = bool_param("overdue", value)?,
            "limit" => limit = limit_param(value)?,
            "cursor" => filter.arrived_after = Some(cursor_param(value)?),
            other => {
                return Err(Problem::bad_request(format!(
                    "unknown parameter {other:?}: /v1/items takes status, overdue, limit, cursor"
                )));
            }
        }
    }
    // One more than the page, to know whether another page follows.
    filter.limit = Some(limit + 1);
    let mut rows = api
        .reads
        .items(filter, api.clock.now())
        .await
        .map_err(read_failed)?;
    let next_cursor = (rows.len() > limit).then(|| {
        rows.truncate(limit);
        rows.last().map(|row| row.seq.to_string())
    });
    Ok(Json(
        json!({ "items": rows, "next_cursor": next_cursor.flatten() }),
    ))
}

/// The longest `wait` a change request may ask for, and how often a waiting one looks for new
/// changes besides each commit of this instance (so it answers within that of a commit that
/// another instance on the same PostgreSQL database made).
const MAX_WAIT: Duration = Duration::from_secs(60);
const LOOK_EVERY: Duration = Duration::from_millis(500);

/// How long a change request reads on through events that changed no status (a long run of
/// confirmations, say) before it answers an empty page whose cursor moved past them.
const READ_ON_FOR: Duration = Duration::from_secs(2);

/// `GET /v1/changes?after=…&limit=…&wait=…`: the status changes after `after` (the start when
/// absent), as `orderwatch changes` prints them, at most `limit`; `cursor` resumes after the
/// last event looked at. With nothing new, waits up to `wait` for a change.
pub async fn changes(
    State(api): State<Arc<Api>>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<Value>, Problem> {
    let params = query_params(query)?;
    let (mut after, mut limit, mut wait) = (FeedPosition::Start, DEFAULT_LIMIT, Duration::ZERO);
    for (name, value) in &params {
        match name.as_str() {
            "after" => {
                after = value
                    .parse()
                    .map_err(|e| Problem::bad_request(format!("after: {e}")))?
            }
            "limit" => limit = limit_param(value)?,
            "wait" => wait = wait_param(value)?,
            other => {
                return Err(Problem::bad_request(format!(
                    "unknown parameter {other:?}: /v1/changes takes after, limit, wait"
                )));
            }
        }
    }
    let started = Instant::now();
    let until = started + wait;
    let mut stopping = api.stopping.subscribe();
    let mut commits = api.writer.health().commits();
    loop {
        // Before the read: a commit during it wakes the wait below at once.
        commits.mark_unchanged();
        let page = api
            .reads
            .changes(after, limit)
            .await
            .map_err(read_failed)?
            .map_err(|unusable| Problem::bad_request(format!("after: {unusable}")))?;
        after = page.scanned_to.unwrap_or(after);
        if !page.changes.is_empty() {
            return Ok(Json(
                json!({ "changes": page.changes, "cursor": after.to_string() }),
            ));
        }
        let stopped = *stopping.borrow();
        // A page of events that changed no status: read on at once, for the wait or at
        // least READ_ON_FOR; past that, the moved cursor says where to go on.
        if !page.caught_up && !stopped && Instant::now() < until.max(started + READ_ON_FOR) {
            continue;
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() || stopped || !page.caught_up {
            return Ok(Json(json!({ "changes": [], "cursor": after.to_string() })));
        }
        tokio::select! {
            () = tokio::time::sleep(left.min(LOOK_EVERY)) => {}
            _ = commits.changed() => {}
            _ = stopping.changed() => {}
        }
    }
}

/// `PUT /v1/orders/{order_uuid}/watch`: registers the order for polling, as `orderwatch
/// watch` does; 201 when it was new, 200 when it was known already.
pub async fn watch(
    State(api): State<Arc<Api>>,
    order: Result<Path<String>, PathRejection>,
) -> Result<(StatusCode, Json<Value>), Problem> {
    let order = uuid_param("order_uuid", order)?;
    let new = api
        .writer
        .watch(vec![order])
        .await
        .map_err(|e| Problem::unavailable(format!("the order was not registered: {e}")))?;
    let created = new.contains(&order);
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(json!({ "order": order.to_string(), "watched": true, "new": created })),
    ))
}

/// `DELETE /v1/orders/{order_uuid}/watch`: stops polling the order, as `orderwatch unwatch`
/// does (webhooks still update it; a PUT resumes polling); 204, or 404 for an unknown order.
pub async fn unwatch(
    State(api): State<Arc<Api>>,
    order: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, Problem> {
    let order = uuid_param("order_uuid", order)?;
    let known = api
        .writer
        .unwatch(vec![order])
        .await
        .map_err(|e| Problem::unavailable(format!("the order was not unwatched: {e}")))?;
    if known.contains(&order) {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(Problem::not_found(format!("no order {order} is stored")))
    }
}

/// `GET /v1/openapi.json`: the API's OpenAPI 3.1 document.
pub async fn openapi() -> impl axum::response::IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        super::OPENAPI,
    )
}

/// A route that exists, asked with another method.
pub async fn method_not_allowed() -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "this route does not take that method; /v1/openapi.json lists each route's methods",
    )
}

/// Any other path.
pub async fn no_route() -> Problem {
    Problem::not_found("no such route; the API's routes are listed at /v1/openapi.json")
}

impl Api {
    /// What `show` finds for `uuid`: an item or an order; 404 when neither.
    async fn show(&self, uuid: Uuid) -> Result<Shown, Problem> {
        self.reads
            .show(uuid, self.clock.now())
            .await
            .map_err(read_failed)?
            .ok_or_else(|| Problem::not_found(format!("no item or order {uuid} is stored")))
    }
}

/// `true` or `false`, or a 400 naming the parameter.
fn bool_param(name: &str, text: &str) -> Result<bool, Problem> {
    match text {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(Problem::bad_request(format!(
            "{name}: {text:?} is neither true nor false"
        ))),
    }
}

/// A page size from 1 to [`MAX_LIMIT`], or a 400.
fn limit_param(text: &str) -> Result<usize, Problem> {
    match text.parse::<usize>() {
        Ok(limit @ 1..=MAX_LIMIT) => Ok(limit),
        Ok(_) => Err(Problem::bad_request(format!(
            "limit: {text} is not between 1 and {MAX_LIMIT}"
        ))),
        Err(_) => Err(Problem::bad_request(format!(
            "limit: {text:?} is not a whole number"
        ))),
    }
}

/// A cursor this API gave out (`next_cursor`), or a 400.
fn cursor_param(text: &str) -> Result<i64, Problem> {
    text.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
        Problem::bad_request(format!(
            "cursor: {text:?} is not a cursor this API gave (use next_cursor as it is)"
        ))
    })
}

/// How long a change request may wait: `30s`, `500ms`, or plain seconds (`30`), at most
/// [`MAX_WAIT`]; or a 400.
fn wait_param(text: &str) -> Result<Duration, Problem> {
    let wait = match text.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => humantime::parse_duration(text).map_err(|e| {
            Problem::bad_request(format!("wait: {text:?} is not a duration like 30s ({e})"))
        })?,
    };
    if wait > MAX_WAIT {
        return Err(Problem::bad_request(format!(
            "wait: {text} is longer than {}s",
            MAX_WAIT.as_secs()
        )));
    }
    Ok(wait)
}

/// The query's `name=value` pairs in order, or a 400 when it does not decode.
fn query_params(
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Vec<(String, String)>, Problem> {
    query
        .map(|Query(params)| params)
        .map_err(|rejection| Problem::bad_request(format!("the query: {}", rejection.body_text())))
}

/// A path segment that must be a UUID, or a 400 naming it.
fn uuid_param(name: &str, segment: Result<Path<String>, PathRejection>) -> Result<Uuid, Problem> {
    let Path(text) = segment
        .map_err(|rejection| Problem::bad_request(format!("{name}: {}", rejection.body_text())))?;
    Uuid::parse_str(&text)
        .map_err(|e| Problem::bad_request(format!("{name}: {text:?} is not a UUID ({e})")))
}

/// A read that failed or timed out: 503, worth retrying.
fn read_failed(error: ReadError) -> Problem {
    Problem::unavailable(format!("the database did not answer: {error}"))
}
