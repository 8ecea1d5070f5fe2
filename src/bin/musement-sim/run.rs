//! One simulator run, or `compare`.
//!
//! The run: create orders over `--create-over` (printing each UUID), play every lifecycle step
//! at its time (the truth so far is written every second, "running"), wait for every webhook to
//! be delivered or given up, write the truth ("settled"),
//! serve the API for `--linger`, write the truth again with the final counters, exit 0. SIGINT
//! or SIGTERM ends the linger early (exit 0); before settling it writes what is known and exits 1.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::api;
use crate::compare;
use crate::config::{self, Args, Linger, Settings};
use crate::truth::{self, Counters, Phase};
use crate::webhooks::Pusher;
use crate::world::{self, OrderPlan, World};

/// Exit code for a bad command line.
const EXIT_USAGE: u8 = 2;

/// `musement-sim [compare]` with `args`: compares, or checks the settings and runs.
pub fn main(args: Args) -> ExitCode {
    if let Some(config::Command::Compare(compare)) = &args.command {
        return compare::run(compare);
    }
    let settings = match Settings::check(args) {
        Ok(settings) => settings,
        Err(message) => {
            eprintln!("musement-sim: {message}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("musement-sim: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(run(settings));
    // Hanging fault answers and webhook retries may still sleep; do not wait for them.
    runtime.shutdown_background();
    code
}

async fn run(settings: Settings) -> ExitCode {
    let seed = settings.args.seed;
    let listener = match tokio::net::TcpListener::bind(settings.args.listen).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("musement-sim: --listen {}: {error}", settings.args.listen);
            return ExitCode::FAILURE;
        }
    };
    let addr = match listener.local_addr() {
        Ok(addr) => addr,
        Err(error) => {
            eprintln!("musement-sim: {error}");
            return ExitCode::FAILURE;
        }
    };
    let mut out = match OrdersOut::open(settings.args.orders_out.as_ref()) {
        Ok(out) => out,
        Err(error) => {
            eprintln!("musement-sim: --orders-out: {error}");
            return ExitCode::FAILURE;
        }
    };
    // Separate streams per concern, so changing one knob does not reshuffle the others.
    let plans = world::plan(&settings, &mut fastrand::Rng::with_seed(seed));
    let counters = Arc::new(Counters::default());
    let pusher = match Pusher::new(&settings, seed ^ 0x5745_4248_4f4f_4b53, counters.clone()) {
        Ok(pusher) => pusher,
        Err(error) => {
            eprintln!("musement-sim: {error}");
            return ExitCode::FAILURE;
        }
    };
    let world = Arc::new(Mutex::new(World::default()));
    let api = api::Api::new(
        &settings,
        seed ^ 0x4150_4946_4155_4c54,
        world.clone(),
        counters.clone(),
        pusher.clone(),
    );
    let server = tokio::spawn(api.serve(listener));
    eprintln!(
        "musement-sim: API on http://{addr}{} (seed {seed}, {} orders, {} items); webhooks {}",
        musement_wire::PREFIX,
        plans.len(),
        settings.items,
        match settings.args.webhook_url.join(", ") {
            urls if urls.is_empty() => "off".to_owned(),
            urls => urls,
        },
    );

    let write_truth = |phase: Phase| {
        let value = {
            let world = world.lock().unwrap_or_else(|e| e.into_inner());
            truth::truth(&world, &counters, seed, phase)
        };
        if let Some(path) = &settings.args.truth
            && let Err(error) = truth::write(path, &value)
        {
            eprintln!(
                "musement-sim: cannot write the truth to {}: {error}",
                path.display()
            );
        }
    };

    let played = async {
        play(&plans, &settings, &world, &pusher, &mut out).await;
        pusher.idle().await;
    };
    // While playing, the truth so far, for anyone watching (`compare` waits for `settled`).
    let running = async {
        if settings.args.truth.is_none() {
            return std::future::pending().await;
        }
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            write_truth(Phase::Running);
        }
    };
    let played = async {
        tokio::select! {
            () = played => {}
            () = running => {}
        }
    };
    let settled = tokio::select! {
        () = played => true,
        () = stop_signal() => false,
    };
    if !settled {
        write_truth(Phase::Interrupted);
        eprintln!(
            "musement-sim: interrupted before every lifecycle ended ({} webhook copies pending)",
            pusher.pending()
        );
        server.abort();
        return ExitCode::FAILURE;
    }
    write_truth(Phase::Settled);
    eprintln!("musement-sim: settled: {}", counters.json());
    match settings.args.linger {
        Linger::For(duration) if duration.is_zero() => {}
        Linger::For(duration) => {
            tokio::select! {
                () = tokio::time::sleep(duration) => {}
                () = stop_signal() => {}
            }
        }
        Linger::Forever => stop_signal().await,
    }
    server.abort();
    write_truth(Phase::Finished);
    eprintln!("musement-sim: finished: {}", counters.json());
    ExitCode::SUCCESS
}

/// Plays every order's creation and every lifecycle step at its time.
async fn play(
    plans: &[OrderPlan],
    settings: &Settings,
    world: &Mutex<World>,
    pusher: &Arc<Pusher>,
    out: &mut OrdersOut,
) {
    enum Event {
        Create(usize),
        Step {
            order: usize,
            item: usize,
            step: usize,
        },
    }
    let mut events: Vec<(Duration, Event)> = Vec::new();
    for (o, plan) in plans.iter().enumerate() {
        events.push((plan.created_after, Event::Create(o)));
        for (i, item) in plan.items.iter().enumerate() {
            for (s, step) in item.steps.iter().enumerate().skip(1) {
                let event = Event::Step {
                    order: o,
                    item: i,
                    step: s,
                };
                events.push((plan.created_after + step.after, event));
            }
        }
    }
    // Stable: a creation comes before its own zero-delay steps.
    events.sort_by_key(|(at, _)| *at);
    let start = Instant::now();
    for (at, event) in events {
        tokio::time::sleep_until(start + at).await;
        let webhooks = {
            let mut world = world.lock().unwrap_or_else(|e| e.into_inner());
            match event {
                Event::Create(o) => world.create(&plans[o], settings),
                Event::Step { order, item, step } => {
                    let status = plans[order].items[item].steps[step].status.clone();
                    let voucher_delay = plans[order].items[item].voucher_delay;
                    world
                        .apply(plans[order].uuid, item, status, voucher_delay)
                        .into_iter()
                        .collect()
                }
            }
        };
        if let Event::Create(o) = event {
            out.announce(&plans[o].uuid.to_string());
        }
        for webhook in webhooks {
            pusher.push(webhook);
        }
    }
}

/// Where created order UUIDs go: standard output or a file, one per line, flushed at once.
struct OrdersOut {
    sink: Box<dyn Write + Send>,
    broken: bool,
}

impl OrdersOut {
    fn open(path: Option<&PathBuf>) -> std::io::Result<Self> {
        let sink: Box<dyn Write + Send> = match path {
            Some(path) => Box::new(std::fs::File::create(path)?),
            None => Box::new(std::io::stdout()),
        };
        Ok(Self {
            sink,
            broken: false,
        })
    }

    /// Writes one UUID; a closed pipe is reported once and the run goes on.
    fn announce(&mut self, uuid: &str) {
        if self.broken {
            return;
        }
        if let Err(error) = writeln!(self.sink, "{uuid}").and_then(|()| self.sink.flush()) {
            eprintln!("musement-sim: cannot write order UUIDs any more: {error}");
            self.broken = true;
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn stop_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}
