//! orderwatch's integration tests: one binary, the real server on 127.0.0.1:0, real SQLite files
//! in temp dirs. `helpers/` holds everything shared (the app in-process, the daemon as a
//! process, the fake Musement API and the reconciler harness against it, a raw HTTP/1 client);
//! each other module covers one concern and imports only from `helpers`, never from another
//! test module.

mod alerts;
mod api;
mod api_faults;
mod batch_apply;
mod cli;
mod convergence;
mod database_file;
mod deploy;
mod durability;
mod forward;
mod forward_outbox;
mod helpers;
mod hostile;
mod inspect;
mod kubernetes;
mod leases;
mod logs;
mod metrics;
mod musement_client;
mod on_postgres;
mod ordering_props;
mod packaging;
mod postgres_apply;
mod postgres_daemon;
mod postgres_feed;
mod postgres_ha;
mod postgres_restore;
mod postgres_schema;
mod postgres_tls;
mod postgres_topology;
mod postgres_writer;
mod quick_path;
mod rate_limit;
mod receiver;
mod reconciler;
mod reload;
mod rule_through_sqlite;
mod scripts;
mod shutdown;
mod simulator;
mod store;
mod watchdog;
mod writer_batches;
