//! orderwatch's integration tests: one binary, the real server on 127.0.0.1:0, real SQLite files
//! in temp dirs. `helpers` spawns the app; each other module covers one concern.

mod api_faults;
mod cli;
mod convergence;
mod database_file;
mod deploy;
mod durability;
mod helpers;
mod hostile;
mod inspect;
mod metrics;
mod musement_client;
mod ordering_props;
mod receiver;
mod reconciler;
mod reload;
mod scripts;
mod simulator;
mod store;
