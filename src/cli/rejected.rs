//! `orderwatch rejected`: the stored webhooks that failed validation, newest first.

use std::io::Write;
use std::process::ExitCode;

use super::ConfigFile;
use super::output::{
    Column, Format, column, fail, finish, open_database, second, table, truncate, write_records,
};
use crate::store::inspect::RejectedRow;

/// List stored rejected webhooks (authenticated but invalid), newest first.
///
/// Bodies are shown as UTF-8 (invalid bytes as U+FFFD); the table cuts them to fit 80 columns,
/// json/ndjson/csv give them whole.
#[derive(Debug, clap::Args)]
pub(super) struct Args {
    /// At most this many rows.
    #[arg(long, value_name = "N", default_value_t = 20)]
    limit: usize,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

const FIELDS: &[&str] = &["id", "received_at", "peer", "field", "error", "body"];

pub(super) fn rejected(config_file: &ConfigFile, args: Args) -> ExitCode {
    let (_, database) = match open_database(config_file) {
        Ok(opened) => opened,
        Err(code) => return code,
    };
    let rows = match database.rejected(args.limit) {
        Ok(rows) => rows,
        Err(error) => return fail(format!("cannot read rejected webhooks: {error}")),
    };
    let columns = [
        column("ID", 6),
        column("RECEIVED (UTC)", 19),
        column("FIELD", 18),
        column("ERROR", 31),
    ];
    let mut out = std::io::stdout().lock();
    let written = if args.format == Format::Table {
        // Two lines per webhook: the facts, then the body, so both stay readable in 80 columns.
        out.write_all(render(&rows, &columns).as_bytes())
    } else {
        write_records(&mut out, args.format, &rows, &columns, FIELDS, |_| {
            Vec::new()
        })
    };
    finish(written.and_then(|()| out.flush()))
}

fn render(rows: &[RejectedRow], columns: &[Column]) -> String {
    if rows.is_empty() {
        return "no rejected webhooks stored\n".into();
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            vec![
                row.id.to_string(),
                second(&row.received_at),
                row.field.clone(),
                row.error.clone(),
            ]
        })
        .collect();
    let aligned = table(columns, &cells);
    let mut lines = aligned.lines();
    let mut text = format!("{}\n", lines.next().unwrap_or_default());
    for (line, row) in lines.zip(rows) {
        let peer = truncate(&row.peer, 30);
        let room = 80 - "        from : ".len() - peer.chars().count();
        text.push_str(&format!(
            "{line}\n        from {peer}: {}\n",
            // Pretty-printed JSON reads fine on one line with its runs of blanks folded.
            truncate(
                &row.body.split_whitespace().collect::<Vec<_>>().join(" "),
                room
            )
        ));
    }
    text
}
