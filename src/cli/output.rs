//! What the inspection commands share: opening the database read-only, the output formats
//! (aligned table, JSON array, NDJSON, CSV), and short forms of UUIDs, times and ages for tables.

use std::io::{self, Write};
use std::process::ExitCode;

use serde::Serialize;

use super::{ConfigFile, EXIT_FAILURE, load_database_config};
use crate::config::Config;
use crate::store::inspection::Inspection;

/// How a command prints its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns for a terminal (UUIDs shortened, times to the minute or second).
    #[default]
    Table,
    /// One JSON array, full values.
    Json,
    /// One JSON object per line.
    Ndjson,
    /// Comma-separated with a header row, full values.
    Csv,
}

/// Loads the config and opens its database read-only, or prints the one-line reason and gives
/// the exit code (2 for the config, 1 for the database: missing, not orderwatch's, too new).
pub fn open_database(config_file: &ConfigFile) -> Result<(Config, Inspection), ExitCode> {
    let config = load_database_config(config_file)?;
    match Inspection::open(&config.database, &config.server.instance_id()) {
        Ok(database) => Ok((config, database)),
        Err(error) => Err(fail(error)),
    }
}

/// Prints `orderwatch: {error}` and gives the runtime-failure exit code.
pub fn fail(error: impl std::fmt::Display) -> ExitCode {
    eprintln!("orderwatch: {error}");
    ExitCode::from(EXIT_FAILURE)
}

/// The exit code for a finished write to stdout: a reader that went away (`| head`) is a
/// normal end, not an error.
pub fn finish(written: io::Result<()>) -> ExitCode {
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) if error.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(error) => fail(format!("cannot write the output: {error}")),
    }
}

/// A table column: its header and the widest its cells may be (longer ones end in `…`).
pub struct Column {
    pub header: &'static str,
    pub max: usize,
}

/// Shorthand for a [`Column`].
pub const fn column(header: &'static str, max: usize) -> Column {
    Column { header, max }
}

/// Writes `records` in `format`; `cells` gives a record's table cells, one per column.
pub fn write_records<T: Serialize>(
    out: &mut impl Write,
    format: Format,
    records: &[T],
    columns: &[Column],
    fields: &[&str],
    cells: impl Fn(&T) -> Vec<String>,
) -> io::Result<()> {
    match format {
        Format::Table => {
            let rows: Vec<Vec<String>> = records.iter().map(cells).collect();
            out.write_all(table(columns, &rows).as_bytes())
        }
        Format::Json => {
            serde_json::to_writer_pretty(&mut *out, records)?;
            writeln!(out)
        }
        Format::Ndjson => {
            for record in records {
                serde_json::to_writer(&mut *out, record)?;
                writeln!(out)?;
            }
            Ok(())
        }
        Format::Csv => write_csv(out, records, fields),
    }
}

/// CSV with a header row: serde names the columns; `fields` only serves an empty result.
/// Every command writes CSV through this, so an I/O error (a broken pipe above all) keeps its
/// kind for [`finish`].
pub fn write_csv<T: Serialize>(
    out: &mut impl Write,
    records: &[T],
    fields: &[&str],
) -> io::Result<()> {
    let mut writer = csv::Writer::from_writer(out);
    if records.is_empty() {
        writer.write_record(fields).map_err(csv_error)?;
    }
    for record in records {
        writer.serialize(record).map_err(csv_error)?;
    }
    writer.flush()
}

fn csv_error(error: csv::Error) -> io::Error {
    match error.into_kind() {
        csv::ErrorKind::Io(error) => error,
        other => io::Error::other(format!("{other:?}")),
    }
}

/// Renders aligned columns separated by two spaces, headers first.
pub fn table(columns: &[Column], rows: &[Vec<String>]) -> String {
    let cut: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            row.iter()
                .zip(columns)
                .map(|(cell, column)| truncate(cell, column.max))
                .collect()
        })
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, column)| {
            cut.iter()
                .map(|row| row.get(i).map_or(0, |c| c.chars().count()))
                .chain([column.header.chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut text = String::new();
    let headers: Vec<String> = columns.iter().map(|c| c.header.to_owned()).collect();
    for row in std::iter::once(&headers).chain(&cut) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            if i + 1 < row.len() {
                let pad = widths[i].saturating_sub(cell.chars().count());
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

/// `text` cut to `max` characters, the last one `…` when cut.
pub fn truncate(text: &str, max: usize) -> String {
    // Control characters (a rejected body may hold any) would break the columns.
    let clean: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if clean.chars().count() <= max {
        return clean;
    }
    let mut cut: String = clean.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// The first 8 characters of a UUID: unique enough to read, and `show` accepts it.
pub fn short_uuid(uuid: &str) -> String {
    uuid.chars().take(8).collect()
}

/// A stored time (`2024-01-01T12:00:05.000Z`) as `2024-01-01 12:00` (UTC).
pub fn minute(time: &str) -> String {
    time.get(..16).unwrap_or(time).replacen('T', " ", 1)
}

/// A stored time as `2024-01-01 12:00:05` (UTC).
pub fn second(time: &str) -> String {
    time.get(..19).unwrap_or(time).replacen('T', " ", 1)
}

/// An optional stored time to the second, or `-`.
pub fn second_or_dash(time: Option<&str>) -> String {
    time.map_or_else(|| "-".into(), second)
}

/// Seconds as the two largest units: `42s`, `5m 3s`, `4h 12m`, `3d 4h`.
pub fn human_age(seconds: i64) -> String {
    let s = seconds.max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        3600..86_400 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// `text` wrapped at `width` columns, every line starting with `indent` spaces.
pub fn wrap(text: &str, indent: usize, width: usize) -> String {
    let room = width.saturating_sub(indent).max(20);
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > room {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    let pad = " ".repeat(indent);
    lines
        .iter()
        .map(|l| format!("{pad}{l}\n"))
        .collect::<String>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_cut_long_cells() {
        let text = table(
            &[column("A", 3), column("LONGER", 10)],
            &[
                vec!["abcdef".into(), "x".into()],
                vec!["b".into(), "y".into()],
            ],
        );
        assert_eq!(text, "A    LONGER\nab…  x\nb    y\n");
    }

    #[test]
    fn ages_read_as_two_units() {
        assert_eq!(human_age(-3), "0s");
        assert_eq!(human_age(59), "59s");
        assert_eq!(human_age(303), "5m 3s");
        assert_eq!(human_age(4 * 3600 + 12 * 60 + 9), "4h 12m");
        assert_eq!(human_age(3 * 86_400 + 4 * 3600), "3d 4h");
    }

    #[test]
    fn wrapping_keeps_words_whole_and_indents() {
        let text = wrap("one two three four", 2, 30);
        assert_eq!(text, "  one two three four\n");
        let text = wrap(&"word ".repeat(20), 4, 30);
        assert!(text.lines().all(|l| l.len() <= 30 && l.starts_with("    ")));
    }

    #[test]
    fn times_shorten_and_controls_never_reach_a_table() {
        assert_eq!(minute("2024-01-01T12:00:05.000Z"), "2024-01-01 12:00");
        assert_eq!(second("2024-01-01T12:00:05.000Z"), "2024-01-01 12:00:05");
        assert_eq!(truncate("a\nb\x1b", 10), "a b ");
    }

    #[test]
    fn csv_has_a_header_even_when_empty() {
        #[derive(Serialize)]
        struct Row {
            a: i64,
            b: Option<String>,
        }
        let mut out = Vec::new();
        write_csv::<Row>(&mut out, &[], &["a", "b"]).unwrap();
        assert_eq!(out, b"a,b\n");
        let mut out = Vec::new();
        write_csv(&mut out, &[Row { a: 1, b: None }], &["a", "b"]).unwrap();
        assert_eq!(out, b"a,b\n1,\n");
    }
}
