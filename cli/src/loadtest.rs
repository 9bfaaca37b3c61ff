//! `sluice loadtest`: a load generator for an OpenAI-style `/v1/chat/completions` endpoint
//! (Sluice, or anything that speaks the same API), for benchmarks and for the smoke load in
//! `infra/test.sh`.
//!
//! Two ways to offer load (see `schedule`):
//! - closed model, `--concurrency N`: N workers, each sending its next request when the last
//!   one is answered. A slower server gets fewer requests (what wrk does).
//! - open model, `--rate R`: R requests start every second whatever the answers do, as
//!   independent users would send them. Latency counts from each request's slot, so a
//!   load generator that falls behind shows it instead of hiding it; a slot that finds
//!   `--max-in-flight` requests outstanding is dropped and counted, never delayed.
//!
//! `--repeat S` makes a share S of the requests reuse one of [`REPEAT_POOL`] prompts (cache
//! hits after their first use); every other prompt is unique to the request and the run.
//! Streams (`--stream`) are read to the end: the first `data:` line gives the time to first
//! byte, and a stream that does not end with `data: [DONE]` is an error (`truncated`).
//!
//! Layout: `schedule` (when requests start), `stats` (outcomes, percentiles, the summary);
//! here: options, request bodies, one request, the progress bar.

mod schedule;
mod stats;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::time::Instant;

use stats::{Load, Outcome, Run, Stats};

/// Prompts that repeated requests draw from, in turn.
pub const REPEAT_POOL: u64 = 10;
/// Model asked for when neither `--model` nor the body file names one.
const DEFAULT_MODEL: &str = "gpt-4o-mini";
/// Replaces `{{prompt}}` in the body file's last user message (see [`BodyTemplate`]).
const PLACEHOLDER: &str = "{{prompt}}";
/// Where the prompt goes in the serialised template; split out once, so each request's
/// body is two copies and the prompt, not a JSON tree rebuilt.
const MARK: &str = "__sluice_loadtest_prompt__";

/// Options of `sluice loadtest`.
#[derive(Args, Debug)]
pub struct LoadtestArgs {
    /// Base URL of the gateway; requests go to `<URL>/v1/chat/completions` (a URL ending in
    /// `/v1` or `/chat/completions` is completed or used as it is).
    #[arg(long, env = "SLUICE_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Gateway key, sent as `Authorization: Bearer KEY`.
    #[arg(long, env = "SLUICE_KEY", hide_env_values = true)]
    key: String,
    /// Model to ask for [default: the body file's `model`, else gpt-4o-mini].
    #[arg(long)]
    model: Option<String>,
    /// Closed model: this many workers, each sending its next request when its last one is
    /// answered [default: 1, unless --rate].
    #[arg(long, conflicts_with = "rate", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    concurrency: Option<u32>,
    /// Open model: start this many requests per second (constant arrival rate), however
    /// slowly they are answered.
    #[arg(long, value_parser = parse_rate)]
    rate: Option<f64>,
    /// Open model: at most this many requests outstanding; a request due while this many are
    /// is not sent and counts as dropped.
    #[arg(long, default_value_t = 1000, requires = "rate", value_parser = clap::value_parser!(u32).range(1..))]
    max_in_flight: u32,
    /// How long to send requests, e.g. 500ms, 30s, 2m (requests under way are then awaited).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Ask for streamed answers; reports the time to the first `data:` line and checks each
    /// stream ends with `data: [DONE]`.
    #[arg(long)]
    stream: bool,
    /// Share of requests (0 to 1) that reuse one of ten prompts, so they can be cache hits.
    #[arg(long, default_value_t = 0.0, value_parser = parse_share)]
    repeat: f64,
    /// JSON request body to start from; each request's prompt replaces `{{prompt}}` in the
    /// last user message, or is appended to it.
    #[arg(long)]
    body: Option<PathBuf>,
    /// Sets `max_tokens` in every request.
    #[arg(long)]
    max_tokens: Option<u32>,
    /// Per request, from sending to the last byte.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    timeout: Duration,
    /// Print the summary as one JSON object on stdout.
    #[arg(long)]
    json: bool,
    /// Exit non-zero when any request failed or was lost, or none was answered (never
    /// because of timing).
    #[arg(long)]
    fail_on_error: bool,
}

/// Parses `500ms`, `5s`, `1.5s`, `2m`, `1h` (a bare number is seconds); more than zero.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let bad = || format!("`{text}` is not a duration like 500ms, 5s or 2m");
    let value: f64 = number.parse().map_err(|_| bad())?;
    let seconds = match unit.trim() {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(bad()),
    };
    if seconds <= 0.0 {
        return Err(format!("`{text}`: the duration must be more than zero"));
    }
    Duration::try_from_secs_f64(seconds).map_err(|_| bad())
}

fn parse_rate(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 && r <= 1_000_000.0 => Ok(r),
        _ => Err(format!(
            "`{text}` is not a rate: requests per second, more than 0"
        )),
    }
}

fn parse_share(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(s) if (0.0..=1.0).contains(&s) => Ok(s),
        _ => Err(format!("`{text}` is not a share between 0 and 1")),
    }
}

/// The chat completions URL for a base URL.
fn endpoint(base: &str) -> Result<String, String> {
    let base = base.trim().trim_end_matches('/');
    let url = if base.ends_with("/chat/completions") {
        base.to_owned()
    } else if base.ends_with("/v1") {
        format!("{base}/chat/completions")
    } else {
        format!("{base}/v1/chat/completions")
    };
    match reqwest::Url::parse(&url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => Ok(url),
        _ => Err(format!("--url {base}: not an http(s) URL")),
    }
}

/// Which pooled prompt request `seq` (0-based) reuses, if any. Request n repeats when
/// `floor((n+1)·share) > floor(n·share)`: exactly `floor(N·share)` of the first N do, spread
/// evenly, and the pool is used in turn. In integers (parts per million), so no rounding.
pub fn repeat_slot(seq: u64, share: f64) -> Option<u64> {
    let ppm = u128::from(sluice::num::f64_to_u64(
        (share.clamp(0.0, 1.0) * 1e6).round(),
    ));
    let before = u128::from(seq) * ppm / 1_000_000;
    let after = (u128::from(seq) + 1) * ppm / 1_000_000;
    (after > before).then_some(sluice::num::u128_to_u64(before) % REPEAT_POOL)
}

/// The prompt of request `seq`. `run` keeps prompts of different runs apart, so every
/// run starts with a cold cache for its own prompts.
fn prompt(run: &str, seq: u64, share: f64) -> String {
    match repeat_slot(seq, share) {
        Some(i) => format!("load test {run}: repeated prompt {i}"),
        None => format!("load test {run}: request {seq}"),
    }
}

/// A request body with a hole for the prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct BodyTemplate {
    head: String,
    tail: String,
    /// The model asked for.
    pub model: String,
    /// Whether the body asks for a stream.
    pub stream: bool,
}

/// Puts [`MARK`] into a text: in place of `{{prompt}}`, or after what is there.
fn mark_text(text: &str) -> String {
    if text.contains(PLACEHOLDER) {
        text.replacen(PLACEHOLDER, MARK, 1)
    } else if text.trim().is_empty() {
        MARK.to_owned()
    } else {
        format!("{text}\n\n{MARK}")
    }
}

impl BodyTemplate {
    /// From a body file's JSON (or the default one-message body) and the options that
    /// override it.
    pub fn new(
        body: Option<Value>,
        model: Option<&str>,
        stream: bool,
        max_tokens: Option<u32>,
    ) -> Result<Self, String> {
        let mut body =
            body.unwrap_or_else(|| json!({"messages": [{"role": "user", "content": PLACEHOLDER}]}));
        let obj = body
            .as_object_mut()
            .ok_or("the body must be a JSON object")?;
        let model = model
            .map(str::to_owned)
            .or_else(|| obj.get("model").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or_else(|| DEFAULT_MODEL.to_owned());
        obj.insert("model".into(), json!(model));
        if stream {
            obj.insert("stream".into(), json!(true));
        }
        let stream = obj.get("stream").and_then(Value::as_bool) == Some(true);
        if let Some(n) = max_tokens {
            obj.insert("max_tokens".into(), json!(n));
        }
        let messages = obj
            .get_mut("messages")
            .and_then(Value::as_array_mut)
            .ok_or("the body needs a `messages` array")?;
        let last_user = messages
            .iter_mut()
            .rev()
            .find(|m| m.get("role").and_then(Value::as_str) == Some("user"));
        match last_user.and_then(Value::as_object_mut) {
            None => messages.push(json!({"role": "user", "content": MARK})),
            Some(message) => {
                let content = message.entry("content").or_insert(Value::Null);
                match content {
                    Value::String(text) => *text = mark_text(text),
                    Value::Array(parts) => {
                        let text_part = parts
                            .iter_mut()
                            .rev()
                            .filter_map(Value::as_object_mut)
                            .find(|p| p.get("type").and_then(Value::as_str) == Some("text"));
                        match text_part {
                            Some(part) => {
                                let text = part.get("text").and_then(Value::as_str).unwrap_or("");
                                let marked = mark_text(text);
                                part.insert("text".into(), json!(marked));
                            }
                            None => parts.push(json!({"type": "text", "text": MARK})),
                        }
                    }
                    other => *other = json!(MARK),
                }
            }
        }
        let text = body.to_string();
        if text.matches(MARK).count() != 1 {
            return Err(format!("the body must not contain `{MARK}`"));
        }
        let (head, tail) = text.split_once(MARK).ok_or("the prompt has no place")?;
        Ok(Self {
            head: head.to_owned(),
            tail: tail.to_owned(),
            model,
            stream,
        })
    }

    /// The body with `prompt` in place (a prompt needs no JSON escaping: see [`prompt`]).
    pub fn render(&self, prompt: &str) -> String {
        let mut out = String::with_capacity(self.head.len() + prompt.len() + self.tail.len());
        out.push_str(&self.head);
        out.push_str(prompt);
        out.push_str(&self.tail);
        out
    }
}

/// Follows an event stream's lines across chunks: when the first `data:` line came, and
/// whether the last one was `data: [DONE]`.
#[derive(Debug, Default)]
pub struct SseWatch {
    line: Vec<u8>,
    /// A `data:` line has been seen.
    pub started: bool,
    done: bool,
}

impl SseWatch {
    /// Feeds a chunk; true when it completed the stream's first `data:` line.
    pub fn feed(&mut self, chunk: &[u8]) -> bool {
        let was_started = self.started;
        for part in chunk.split_inclusive(|&b| b == b'\n') {
            self.line.extend_from_slice(part);
            if part.ends_with(b"\n") {
                self.end_line();
            }
        }
        self.started && !was_started
    }

    fn end_line(&mut self) {
        let line = self.line.trim_ascii();
        if let Some(data) = line.strip_prefix(b"data:") {
            self.started = true;
            self.done = data.trim_ascii() == b"[DONE]";
        }
        self.line.clear();
    }

    /// At the end of the body: whether the stream ended with `data: [DONE]`.
    pub fn finish(&mut self) -> bool {
        if !self.line.is_empty() {
            self.end_line();
        }
        self.done
    }
}

/// Everything one request needs, shared by all.
struct Target {
    client: reqwest::Client,
    url: String,
    key: String,
    body: BodyTemplate,
    run: String,
    repeat: f64,
}

fn error_kind(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else if e.is_body() || e.is_decode() {
        "truncated"
    } else {
        "transport"
    }
}

/// Sends request `seq` and reads its answer to the end; latency counts from `start`.
async fn send_one(target: &Target, seq: u64, start: Instant) -> Outcome {
    let body = target.body.render(&prompt(&target.run, seq, target.repeat));
    let sent = target
        .client
        .post(&target.url)
        .bearer_auth(&target.key)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await;
    let mut response = match sent {
        Ok(r) => r,
        Err(e) => return Outcome::Failed(error_kind(&e).to_owned()),
    };
    let status = response.status();
    let cache = response
        .headers()
        .get("x-sluice-cache")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if !status.is_success() {
        // Read the error body so the connection can be reused.
        let _ = response.bytes().await;
        return Outcome::Failed(status.as_str().to_owned());
    }
    if !target.body.stream {
        return match response.bytes().await {
            Ok(bytes) if serde_json::from_slice::<Value>(&bytes).is_ok() => Outcome::Answered {
                latency: start.elapsed(),
                ttfb: None,
                cache,
            },
            Ok(_) => Outcome::Failed("invalid_json".to_owned()),
            Err(e) => Outcome::Failed(error_kind(&e).to_owned()),
        };
    }
    let mut watch = SseWatch::default();
    let mut ttfb = None;
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if watch.feed(&chunk) {
                    ttfb = Some(start.elapsed());
                }
            }
            Ok(None) => break,
            Err(e) if e.is_timeout() => return Outcome::Failed("timeout".to_owned()),
            Err(_) => return Outcome::Failed("truncated".to_owned()),
        }
    }
    if watch.finish() {
        Outcome::Answered {
            latency: start.elapsed(),
            ttfb,
            cache,
        }
    } else {
        Outcome::Failed("truncated".to_owned())
    }
}

fn lock(stats: &Mutex<Stats>) -> MutexGuard<'_, Stats> {
    stats.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A run id for prompts: different in every run and process.
fn run_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "{:x}",
        sluice::num::u128_to_u64(nanos) ^ (u64::from(std::process::id()) << 40)
    )
}

/// A progress bar on stderr when it is a terminal, redrawn four times a second; nothing
/// otherwise.
fn progress(run: &Run, stats: Arc<Mutex<Stats>>) -> (ProgressBar, tokio::task::JoinHandle<()>) {
    let target = if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr_with_hz(4)
    } else {
        ProgressDrawTarget::hidden()
    };
    let length = sluice::num::u128_to_u64(run.duration.as_millis());
    let bar = ProgressBar::with_draw_target(Some(length), target);
    if let Ok(style) = ProgressStyle::with_template("[{bar:20}] {msg}") {
        bar.set_style(style.progress_chars("=> "));
    }
    let duration = run.duration;
    let ticking = bar.clone();
    let ticker = tokio::spawn(async move {
        let start = Instant::now();
        let mut every = tokio::time::interval(Duration::from_millis(250));
        loop {
            every.tick().await;
            let elapsed = start.elapsed();
            let (sent, ok, failed, outstanding) = {
                let s = lock(&stats);
                (s.sent, s.ok, s.failed(), s.outstanding())
            };
            let rate = ok as f64 / elapsed.as_secs_f64().max(0.001);
            let phase = if elapsed < duration {
                format!(
                    "{:.1}/{:.0} s",
                    elapsed.as_secs_f64(),
                    duration.as_secs_f64()
                )
            } else {
                "waiting for answers".to_owned()
            };
            ticking.set_message(format!(
                "{phase}  {sent} sent  {ok} ok  {failed} err  {outstanding} in flight  {rate:.0}/s"
            ));
            ticking.set_position(sluice::num::u128_to_u64(elapsed.as_millis()).min(length));
        }
    });
    (bar, ticker)
}

/// Stops sending at the first Ctrl-C (requests under way are awaited, the summary printed);
/// exits at the second.
fn stop_on_ctrl_c() -> (watch::Receiver<bool>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(false);
    let task = tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_err() {
            return;
        }
        eprintln!("\nstopping: waiting for requests under way (Ctrl-C again to quit now)");
        let _ = tx.send(true);
        if tokio::signal::ctrl_c().await.is_ok() {
            std::process::exit(130);
        }
    });
    (rx, task)
}

/// `sluice loadtest`.
pub async fn run(args: LoadtestArgs) -> Result<(), String> {
    let url = endpoint(&args.url)?;
    let template = match &args.body {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read --body {}: {e}", path.display()))?;
            let value = serde_json::from_str(&text)
                .map_err(|e| format!("--body {}: not JSON: {e}", path.display()))?;
            Some(value)
        }
        None => None,
    };
    let body = BodyTemplate::new(
        template,
        args.model.as_deref(),
        args.stream,
        args.max_tokens,
    )
    .map_err(|e| match &args.body {
        Some(path) => format!("--body {}: {e}", path.display()),
        None => e,
    })?;
    let load = match args.rate {
        Some(rate) => Load::Open {
            rate,
            max_in_flight: args.max_in_flight,
        },
        None => Load::Closed {
            concurrency: args.concurrency.unwrap_or(1),
        },
    };
    let connections = match load {
        Load::Closed { concurrency } => concurrency,
        Load::Open { max_in_flight, .. } => max_in_flight,
    };
    let client = reqwest::Client::builder()
        .timeout(args.timeout)
        .connect_timeout(args.timeout.min(Duration::from_secs(10)))
        .pool_max_idle_per_host(connections as usize)
        .tcp_nodelay(true)
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
    let run = Run {
        url: url.clone(),
        model: body.model.clone(),
        load,
        duration: args.duration,
        stream: body.stream,
        repeat: args.repeat,
    };
    let target = Arc::new(Target {
        client,
        url,
        key: args.key,
        body,
        run: run_id(),
        repeat: args.repeat,
    });
    let stats = Arc::new(Mutex::new(Stats::default()));
    let seqs = Arc::new(AtomicU64::new(0));
    // One request: counted as sent before it starts, its outcome recorded when it ends.
    let send = {
        let stats = Arc::clone(&stats);
        move |start: Instant| {
            let (target, stats) = (Arc::clone(&target), Arc::clone(&stats));
            let seq = seqs.fetch_add(1, Ordering::Relaxed);
            lock(&stats).start();
            async move {
                let outcome = send_one(&target, seq, start).await;
                lock(&stats).record(outcome);
            }
        }
    };

    let (stop, ctrl_c) = stop_on_ctrl_c();
    let stopped = stop.clone();
    let (bar, ticker) = progress(&run, Arc::clone(&stats));
    let started = Instant::now();
    let tally = match load {
        Load::Closed { concurrency } => {
            schedule::closed_loop(concurrency, args.duration, stop, send).await
        }
        Load::Open {
            rate,
            max_in_flight,
        } => schedule::open_loop(rate, args.duration, max_in_flight, stop, send).await,
    };
    let elapsed = started.elapsed();
    ticker.abort();
    ctrl_c.abort();
    bar.finish_and_clear();

    let mut summary = lock(&stats).summary(run, tally, elapsed);
    summary.interrupted = *stopped.borrow();
    if args.json {
        println!("{}", summary.to_json());
    } else {
        print!("{summary}");
    }
    match summary.failure() {
        Some(why) if args.fail_on_error => Err(format!("load test failed: {why}")),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert_eq!(parse_duration(" 10s "), Ok(Duration::from_secs(10)));
        for bad in ["", "s", "5x", "-1s", "0s", "1.2.3s", "5 sec", "ms500"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} parsed");
        }
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("nan").is_err());
        assert_eq!(parse_rate("250.5"), Ok(250.5));
        assert!(parse_share("1.01").is_err());
        assert_eq!(parse_share("0.3"), Ok(0.3));
    }

    #[test]
    fn the_endpoint_is_completed_from_a_base_url() {
        let want = "http://127.0.0.1:8080/v1/chat/completions";
        for base in [
            "http://127.0.0.1:8080",
            "http://127.0.0.1:8080/",
            "http://127.0.0.1:8080/v1",
            "http://127.0.0.1:8080/v1/chat/completions",
        ] {
            assert_eq!(endpoint(base).as_deref(), Ok(want), "{base}");
        }
        assert_eq!(
            endpoint("https://gw.example.com/prod").as_deref(),
            Ok("https://gw.example.com/prod/v1/chat/completions")
        );
        assert!(endpoint("127.0.0.1:8080").is_err());
        assert!(endpoint("ftp://x").is_err());
    }

    #[test]
    fn the_repeated_share_is_exact_and_spread_evenly() {
        for share in [0.0, 0.1, 0.3, 0.5, 0.999, 1.0] {
            let n = 1000;
            let repeats = (0..n).filter(|&s| repeat_slot(s, share).is_some()).count();
            assert_eq!(
                repeats,
                (n as f64 * share).floor() as usize,
                "share {share}"
            );
        }
        // Half: every other request, the pool in turn.
        let slots: Vec<_> = (0..6).map(|s| repeat_slot(s, 0.5)).collect();
        assert_eq!(slots, [None, Some(0), None, Some(1), None, Some(2)]);
        // All repeated: the pool cycles.
        assert_eq!(repeat_slot(REPEAT_POOL, 1.0), Some(0));
        assert_eq!(prompt("r1", 3, 0.0), "load test r1: request 3");
        assert_eq!(prompt("r1", 1, 0.5), "load test r1: repeated prompt 0");
    }

    #[test]
    fn the_default_body_is_one_user_message() {
        let t = BodyTemplate::new(None, None, false, None).unwrap();
        let body: Value = serde_json::from_str(&t.render("hello there")).unwrap();
        assert_eq!(
            body,
            json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello there"}]})
        );
        assert!(!t.stream);
        let t = BodyTemplate::new(None, Some("fast"), true, Some(16)).unwrap();
        let body: Value = serde_json::from_str(&t.render("x")).unwrap();
        assert_eq!(body["model"], "fast");
        assert_eq!(body["stream"], true);
        assert_eq!(body["max_tokens"], 16);
        assert!(t.stream);
    }

    #[test]
    fn a_body_file_keeps_its_fields_and_gets_the_prompt_in_its_last_user_message() {
        let file = json!({
            "model": "gpt-4o",
            "temperature": 0.2,
            "stream": true,
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "first"},
                {"role": "assistant", "content": "ok"},
                {"role": "user", "content": "Question: {{prompt}}?"},
            ],
        });
        let t = BodyTemplate::new(Some(file), None, false, None).unwrap();
        assert_eq!(t.model, "gpt-4o");
        assert!(t.stream, "the file asked for a stream");
        let body: Value = serde_json::from_str(&t.render("p1")).unwrap();
        assert_eq!(body["temperature"], 0.2);
        assert_eq!(body["messages"][1]["content"], "first");
        assert_eq!(body["messages"][3]["content"], "Question: p1?");

        // No placeholder: appended. Array content: into the last text part.
        let file = json!({"messages": [{"role": "user", "content": "Summarise this."}]});
        let t = BodyTemplate::new(Some(file), Some("m"), false, None).unwrap();
        let body: Value = serde_json::from_str(&t.render("p2")).unwrap();
        assert_eq!(body["messages"][0]["content"], "Summarise this.\n\np2");
        let file = json!({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "Describe"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        ]}]});
        let t = BodyTemplate::new(Some(file), None, false, None).unwrap();
        let body: Value = serde_json::from_str(&t.render("p3")).unwrap();
        assert_eq!(body["messages"][0]["content"][0]["text"], "Describe\n\np3");
        assert_eq!(body["messages"][0]["content"][1]["type"], "image_url");

        // No user message: one is added.
        let file = json!({"messages": [{"role": "system", "content": "s"}]});
        let t = BodyTemplate::new(Some(file), None, false, None).unwrap();
        let body: Value = serde_json::from_str(&t.render("p4")).unwrap();
        assert_eq!(
            body["messages"][1],
            json!({"role": "user", "content": "p4"})
        );

        assert!(BodyTemplate::new(Some(json!([1])), None, false, None).is_err());
        assert!(BodyTemplate::new(Some(json!({"input": "x"})), None, false, None).is_err());
    }

    #[test]
    fn a_stream_must_end_with_done() {
        let full = b"data: {\"a\":1}\n\ndata: {\"b\":2}\n\ndata: [DONE]\n\n";
        // However the bytes are cut into chunks.
        for cut in 1..full.len() {
            let mut w = SseWatch::default();
            let (a, b) = full.split_at(cut);
            let first_in_a = w.feed(a);
            let first_in_b = w.feed(b);
            assert!(first_in_a ^ first_in_b, "cut {cut}");
            assert_eq!(first_in_a, cut >= 14, "cut {cut}");
            assert!(w.finish(), "cut {cut}");
        }
        let mut w = SseWatch::default();
        w.feed(b"data: {\"a\":1}\n\n");
        assert!(!w.finish(), "no [DONE]: truncated");
        let mut w = SseWatch::default();
        w.feed(b"data: [DONE]\n\ndata: {\"late\":1}\n\n");
        assert!(!w.finish(), "data after [DONE]");
        let mut w = SseWatch::default();
        w.feed(b": comment\r\nevent: x\r\ndata: [DONE]");
        assert!(w.finish(), "CRLF lines, last line without a newline");
        assert!(!SseWatch::default().finish());
    }
}
