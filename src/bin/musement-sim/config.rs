//! The command line: every knob of the world, the webhook pusher and the API faults, checked
//! into [`Settings`] (one line naming the flag on a bad value, exit 2).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// A simulated Musement partner API on loopback: orders whose items move through realistic
/// lifecycles, webhooks pushed to a URL with faults (drops, duplicates, delays), and an API
/// answering `POST /login` and `GET /orders/{uuid}` with faults (5xx, 429, timeouts).
///
/// Prints each order's UUID on standard output when it is created (pipe it into
/// `orderwatch watch -`), logs to standard error, and writes the truth (every item's final
/// status and version, and counters) as JSON. Durations use humantime syntax (`250ms`, `2s`);
/// a range is `MIN..MAX` (uniform) or a single duration. A flag given twice takes the last value.
#[derive(Debug, Parser)]
#[command(
    name = "musement-sim",
    version,
    args_override_self = true,
    args_conflicts_with_subcommands = true
)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Seed of every random choice (orders, lifecycles, faults).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// How many orders to create (at most 10000000).
    #[arg(long, default_value_t = 20)]
    pub orders: usize,
    /// How many items in all, spread over the orders (at least one each, at most 20000000);
    /// default 2 per order.
    #[arg(long)]
    pub items: Option<usize>,
    /// Orders are created at random times within this window from the start.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub create_over: Duration,
    /// Share of each lifecycle, as NAME=WEIGHT pairs: instant (P0D, PENDING→OK), confirm
    /// (PENDING→OK after the supplier confirms), ko (PENDING→KO), refund (…OK→REFUND_STARTED→
    /// REFUNDED), cancel-error (…OK→CANCELLATION_ERROR→OK or REFUNDED). The weights may add up
    /// to at most 4294967295.
    #[arg(
        long,
        default_value = "instant=40,confirm=25,ko=10,refund=15,cancel-error=10"
    )]
    pub mix: String,
    /// Instant confirmation: PENDING to OK.
    #[arg(long, default_value = "0ms..100ms", value_parser = Span::parse)]
    pub instant_delay: Span,
    /// Need-confirmation items: PENDING to the supplier's answer (OK or KO).
    #[arg(long, default_value = "500ms..3s", value_parser = Span::parse)]
    pub confirm_delay: Span,
    /// OK to REFUND_STARTED (refund lifecycle) or to CANCELLATION_ERROR (cancel-error).
    #[arg(long, default_value = "1s..3s", value_parser = Span::parse)]
    pub cancel_after: Span,
    /// REFUND_STARTED to REFUNDED.
    #[arg(long, default_value = "200ms..1s", value_parser = Span::parse)]
    pub refund_delay: Span,
    /// CANCELLATION_ERROR until Customer Care resolves it (to OK or REFUNDED, even odds).
    #[arg(long, default_value = "500ms..2s", value_parser = Span::parse)]
    pub resolve_delay: Span,
    /// OK until the voucher URL appears in the order (no webhook for that).
    #[arg(long, default_value = "0ms", value_parser = Span::parse)]
    pub voucher_delay: Span,
    /// `product.max_confirmation_time` of need-confirmation items (ISO-8601 duration, e.g.
    /// PT30M or P2D).
    #[arg(long, default_value = "PT30M")]
    pub max_confirmation_time: String,

    /// Where webhooks go (http:// on loopback, or https://); none = no webhooks at all.
    /// Repeated, the attempts take the URLs in turn (round-robin, as a load balancer in front
    /// of several receivers would spread them).
    #[arg(long)]
    pub webhook_url: Vec<String>,
    /// Basic auth username sent with every webhook (needs a password).
    #[arg(long, requires = "webhook_password")]
    pub webhook_user: Option<String>,
    /// Basic auth password sent with every webhook.
    #[arg(
        long,
        env = "MUSEMENT_SIM_WEBHOOK_PASSWORD",
        hide_env_values = true,
        requires = "webhook_user"
    )]
    pub webhook_password: Option<String>,
    /// Fraction of webhooks dropped for good (never sent).
    #[arg(long, default_value_t = 0.0)]
    pub drop: f64,
    /// Fraction of webhooks sent twice (the copy with its own delay).
    #[arg(long, default_value_t = 0.0)]
    pub duplicate: f64,
    /// Each copy waits this long before its first attempt: a range reorders webhooks.
    #[arg(long, default_value = "0ms", value_parser = Span::parse)]
    pub webhook_delay: Span,
    /// Waits before each retry of a webhook that got no 200 (`none` for no retries); after the
    /// last one the webhook is given up.
    #[arg(long, default_value = "1s,2s,4s,8s,16s", value_parser = parse_schedule)]
    pub retry_schedule: Schedule,
    /// Limit on one webhook request.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub webhook_timeout: Duration,
    /// Do not push REFUND_STARTED (the newest guide's trigger list omits it; it is then only
    /// visible by polling).
    #[arg(long)]
    pub no_refund_started_webhook: bool,

    /// Address of the API (loopback only; port 0 picks one). It is printed on standard error.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// The client id `POST /login` accepts.
    #[arg(long, default_value = "sim-client")]
    pub client_id: String,
    /// The client secret `POST /login` accepts.
    #[arg(
        long,
        env = "MUSEMENT_SIM_CLIENT_SECRET",
        hide_env_values = true,
        hide_default_value = true,
        default_value = "sim-secret"
    )]
    pub client_secret: String,
    /// Lifetime of a bearer token (at least 1s; `expires_in` states it in whole seconds); an
    /// expired token gets 401.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub token_ttl: Duration,
    /// Fraction of API requests answered 5xx (500, 502 or 503).
    #[arg(long, default_value_t = 0.0)]
    pub api_5xx: f64,
    /// Fraction of API requests answered 429 with Retry-After.
    #[arg(long, default_value_t = 0.0)]
    pub api_429: f64,
    /// Fraction of API requests that hang for --api-hang (the client times out).
    #[arg(long, default_value_t = 0.0)]
    pub api_timeout: f64,
    /// How long a hanging request hangs before it is answered 504.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub api_hang: Duration,
    /// The Retry-After of a 429, in seconds.
    #[arg(long, default_value_t = 1)]
    pub retry_after: u64,
    /// Added to every API answer.
    #[arg(long, default_value = "0ms", value_parser = Span::parse)]
    pub api_latency: Span,
    /// `GET /orders` shows the state as of this long ago (a lagging read replica), while its
    /// `Date` says now.
    #[arg(long, default_value = "0ms", value_parser = parse_duration)]
    pub api_read_lag: Duration,

    /// Keep serving the API this long after every lifecycle ended and every webhook was
    /// delivered or given up (so a reconciler can finish); `forever` = until SIGINT/SIGTERM.
    #[arg(long, default_value = "0s", value_parser = parse_linger)]
    pub linger: Linger,
    /// Write the truth JSON here: every second while running, when settled, and with the final
    /// counters at exit.
    #[arg(long)]
    pub truth: Option<PathBuf>,
    /// Write created order UUIDs here, one per line, instead of standard output.
    #[arg(long)]
    pub orders_out: Option<PathBuf>,
}

/// Other things the binary does besides simulating.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Compare an orderwatch database with the truth: one summary line; exit 0 when every
    /// item agrees, 1 when not (yet), 2 when a file cannot be read.
    Compare(crate::compare::CompareArgs),
}

/// A uniform range of durations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub min: Duration,
    pub max: Duration,
}

impl Span {
    /// `250ms`, or `100ms..2s`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (min, max) = match text.split_once("..") {
            Some((min, max)) => (parse_duration(min)?, parse_duration(max)?),
            None => {
                let one = parse_duration(text)?;
                (one, one)
            }
        };
        if min > max {
            return Err(format!("{text:?}: the minimum is above the maximum"));
        }
        Ok(Self { min, max })
    }

    /// A uniform draw from the range.
    pub fn sample(&self, rng: &mut fastrand::Rng) -> Duration {
        let spread = (self.max - self.min).as_micros() as u64;
        self.min + Duration::from_micros(rng.u64(0..=spread))
    }
}

/// Retry waits of the webhook pusher.
pub type Schedule = Vec<Duration>;

/// How long to serve after settling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Linger {
    For(Duration),
    Forever,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|e| format!("{text:?}: {e}"))
}

fn parse_schedule(text: &str) -> Result<Schedule, String> {
    if text.trim() == "none" {
        return Ok(Vec::new());
    }
    text.split(',').map(parse_duration).collect()
}

fn parse_linger(text: &str) -> Result<Linger, String> {
    if text.trim() == "forever" {
        Ok(Linger::Forever)
    } else {
        parse_duration(text).map(Linger::For)
    }
}

/// The lifecycles an item can follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    Instant,
    Confirm,
    Ko,
    Refund,
    CancelError,
}

impl Kind {
    const ALL: [Kind; 5] = [
        Kind::Instant,
        Kind::Confirm,
        Kind::Ko,
        Kind::Refund,
        Kind::CancelError,
    ];

    fn name(self) -> &'static str {
        match self {
            Kind::Instant => "instant",
            Kind::Confirm => "confirm",
            Kind::Ko => "ko",
            Kind::Refund => "refund",
            Kind::CancelError => "cancel-error",
        }
    }
}

/// Most orders one run plans.
const MAX_ORDERS: usize = 10_000_000;
/// Most items one run plans.
const MAX_ITEMS: usize = 2 * MAX_ORDERS;

/// The checked arguments.
#[derive(Debug)]
pub struct Settings {
    pub args: Args,
    /// Lifecycle weights, in [`Kind::ALL`] order.
    pub mix: Vec<(Kind, u32)>,
    /// Total items.
    pub items: usize,
}

impl Settings {
    /// Checks `args`; the error names the flag.
    pub fn check(args: Args) -> Result<Self, String> {
        let mix = parse_mix(&args.mix)?;
        if args.orders == 0 {
            return Err("--orders: must be at least 1".into());
        }
        if args.orders > MAX_ORDERS {
            return Err(format!(
                "--orders: {} is more than {MAX_ORDERS}; the world is planned in memory",
                args.orders
            ));
        }
        // MAX_ORDERS * 2 <= MAX_ITEMS: the default never overflows nor exceeds the limit.
        let items = args.items.unwrap_or(args.orders * 2);
        if items > MAX_ITEMS {
            return Err(format!(
                "--items: {items} is more than {MAX_ITEMS}; the world is planned in memory"
            ));
        }
        if items < args.orders {
            return Err(format!(
                "--items: {items} is fewer than --orders ({}); every order has an item",
                args.orders
            ));
        }
        for (flag, value) in [
            ("--drop", args.drop),
            ("--duplicate", args.duplicate),
            ("--api-5xx", args.api_5xx),
            ("--api-429", args.api_429),
            ("--api-timeout", args.api_timeout),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return Err(format!("{flag}: {value} is not a fraction between 0 and 1"));
            }
        }
        if args.api_5xx + args.api_429 + args.api_timeout > 1.0 {
            return Err("--api-5xx + --api-429 + --api-timeout: must add up to at most 1".into());
        }
        if args.token_ttl < Duration::from_secs(1) {
            return Err("--token-ttl: must be at least 1s (expires_in is in seconds)".into());
        }
        if !args.listen.ip().is_loopback() {
            return Err(format!(
                "--listen: {} is not a loopback address; the simulator serves 127.0.0.1 only",
                args.listen
            ));
        }
        for url in &args.webhook_url {
            check_webhook_url(url)?;
        }
        check_iso_duration(&args.max_confirmation_time)
            .map_err(|e| format!("--max-confirmation-time: {e}"))?;
        Ok(Self { args, mix, items })
    }
}

fn parse_mix(text: &str) -> Result<Vec<(Kind, u32)>, String> {
    let mut mix: Vec<(Kind, u32)> = Kind::ALL.iter().map(|k| (*k, 0)).collect();
    for pair in text.split(',').filter(|p| !p.trim().is_empty()) {
        let (name, weight) = pair
            .split_once('=')
            .ok_or_else(|| format!("--mix: {pair:?} is not NAME=WEIGHT"))?;
        let slot = mix
            .iter_mut()
            .find(|(kind, _)| kind.name() == name.trim())
            .ok_or_else(|| {
                format!(
                    "--mix: unknown lifecycle {:?} (instant, confirm, ko, refund, cancel-error)",
                    name.trim()
                )
            })?;
        slot.1 = weight
            .trim()
            .parse()
            .map_err(|_| format!("--mix: weight {weight:?} of {name} is not a whole number"))?;
    }
    if mix.iter().all(|(_, weight)| *weight == 0) {
        return Err("--mix: every weight is 0".into());
    }
    // Items draw a number below the total weight, a u32.
    if mix
        .iter()
        .try_fold(0u32, |total, (_, weight)| total.checked_add(*weight))
        .is_none()
    {
        return Err(format!(
            "--mix: the weights add up to more than {}",
            u32::MAX
        ));
    }
    Ok(mix)
}

/// An ISO-8601 duration as orderwatch reads `max_confirmation_time` (`P0D`, `PT30M`, `P2D`).
fn check_iso_duration(text: &str) -> Result<(), String> {
    // The whole text: `iso8601::duration` ignores what follows a valid prefix.
    match iso8601::parsers::parse_duration(text.as_bytes()) {
        Ok(([], _)) => Ok(()),
        _ => Err(format!(
            "{text:?} is not an ISO-8601 duration (e.g. P0D, PT30M, P2D)"
        )),
    }
}

/// A webhook URL must not send the Basic auth password in clear beyond this machine.
fn check_webhook_url(url: &str) -> Result<(), String> {
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e| format!("--webhook-url: {url:?}: {e}"))?;
    match uri.scheme_str() {
        Some("https") => Ok(()),
        Some("http") => {
            let host = uri.host().unwrap_or("").trim_matches(['[', ']']);
            let loopback = host == "localhost"
                || host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            if loopback {
                Ok(())
            } else {
                Err(format!(
                    "--webhook-url: {url:?}: plain http:// only to a loopback address; use https://"
                ))
            }
        }
        _ => Err(format!(
            "--webhook-url: {url:?}: not an http:// or https:// URL"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_and_schedules_parse() {
        let span = Span::parse("100ms..2s").unwrap();
        assert_eq!(
            (span.min, span.max),
            (Duration::from_millis(100), Duration::from_secs(2))
        );
        assert_eq!(Span::parse("5ms").unwrap().max, Duration::from_millis(5));
        assert!(Span::parse("2s..1s").is_err());
        assert!(Span::parse("soon").is_err());
        assert_eq!(parse_schedule("none").unwrap(), Vec::<Duration>::new());
        assert_eq!(parse_schedule("1ms,2ms").unwrap().len(), 2);
        assert_eq!(parse_linger("forever").unwrap(), Linger::Forever);
    }

    #[test]
    fn mix_names_its_errors() {
        assert!(parse_mix("instant=1").is_ok());
        assert!(parse_mix("bogus=1").unwrap_err().contains("bogus"));
        assert!(parse_mix("instant=x").unwrap_err().contains("instant"));
        assert!(parse_mix("instant=0").unwrap_err().contains("every weight"));
        assert!(parse_mix("instant=4294967295").is_ok());
        let error = parse_mix("instant=4294967295,ko=1").unwrap_err();
        assert!(error.starts_with("--mix: the weights add up"), "{error}");
        assert!(
            parse_mix("instant=4294967296")
                .unwrap_err()
                .contains("instant")
        );
    }

    #[test]
    fn max_confirmation_times_are_iso_8601_durations() {
        for good in ["P0D", "PT30M", "P2D", "P1DT12H", "PT0S"] {
            assert!(check_iso_duration(good).is_ok(), "{good}");
        }
        for bad in ["", "30m", "soon", "P", "PT30Mxyz", " PT30M"] {
            assert!(check_iso_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn webhook_urls_stay_on_loopback_unless_https() {
        assert!(check_webhook_url("http://127.0.0.1:8080/webhooks/musement").is_ok());
        assert!(check_webhook_url("https://partner.example/webhook").is_ok());
        assert!(check_webhook_url("http://partner.example/webhook").is_err());
        assert!(check_webhook_url("ftp://127.0.0.1/").is_err());
    }

    #[test]
    fn samples_stay_in_range() {
        let span = Span::parse("10ms..20ms").unwrap();
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..1000 {
            let d = span.sample(&mut rng);
            assert!(d >= span.min && d <= span.max, "{d:?}");
        }
    }
}
