//! The PostgreSQL backend (issue 15, in progress): the schema and its migrations so far. The
//! writer, the reads and the CLI come next, behind the same interfaces as SQLite's
//! (`writer::Batches`, `reads::Reads`, `inspection::Inspection`), with the same pure rule.

pub mod migrate;
