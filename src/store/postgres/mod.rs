//! The PostgreSQL backend (issue 15, in progress): the schema and its migrations,
//! [`apply::apply_batch`] (the fold of SQLite's batch path under sorted order locks) and the
//! reconciler's store functions ([`polls`]) so far. The
//! writer, the reads and the CLI come next, behind the same interfaces as SQLite's
//! (`writer::Batches`, `reads::Reads`, `inspection::Inspection`), with the same pure rule.

pub mod apply;
pub mod migrate;
pub mod polls;
