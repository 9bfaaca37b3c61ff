//! Structured logs: one JSON object per line on stdout (CloudWatch on Lambda, the terminal or
//! a collector locally), and with [`init_with_file`] the same lines appended to a file, which
//! `sluice logs --request-id` searches. `SLUICE_LOG` takes `RUST_LOG` syntax, default `info`.
//!
//! Every line written while a request is served carries its `request_id` at the top level:
//! the access-log middleware runs the request inside a [`request_span`], and the formatter
//! copies that span's id into each line. Lines outside requests are the plain JSON lines.
//!
//! Every line, in whichever field, has its key-shaped strings (gateway keys, provider keys,
//! bearer tokens, JWTs) replaced by `[REDACTED]` as it is written ([`crate::redact`]): a key a
//! client put in a URL path or a model name never reaches the log.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, Write};
use std::path::Path;
use std::sync::Mutex;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::{Format, Json, Writer};
use tracing_subscriber::fmt::writer::MakeWriterExt;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

/// The field that ties log lines to a request (and to its `x-request-id` header).
const REQUEST_ID: &str = "request_id";

/// Installs the JSON subscriber, writing to stdout only. Call once, first thing in `main`.
pub fn init() {
    install(io::stdout);
}

/// Installs the JSON subscriber, writing every line to stdout and appending it to `path`
/// (created with its directories; never truncated). Call once, first thing in `main`.
pub fn init_with_file(path: &Path) -> io::Result<()> {
    install(io::stdout.and(LogFile::open(path)?));
    Ok(())
}

fn install<W>(writer: W)
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let _ = subscriber(writer).try_init();
}

/// The subscriber [`init`] installs, writing to `writer`: level from `SLUICE_LOG` (default
/// `info`), request ids, redaction. Tests set it as their default to read the lines served
/// requests produce.
pub fn subscriber<W>(writer: W) -> impl Subscriber + Send + Sync + 'static
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_from_env("SLUICE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::registry()
        .with(filter)
        .with(RequestIdLayer)
        .with(json_layer(writer))
}

/// The JSON formatting layer: event fields at the top level, no span objects, plus the
/// request id of the enclosing request span.
fn json_layer<S, W>(writer: W) -> impl Layer<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let format = tracing_subscriber::fmt::format()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false);
    tracing_subscriber::fmt::layer()
        .fmt_fields(NoSpanFields)
        .event_format(WithRequestId(format))
        .with_writer(writer)
}

/// Span fields as the JSON layer keeps them: not at all. Its lines print no span objects
/// (`with_current_span(false)`, `with_span_list(false)`; event fields are written by the JSON
/// format itself) and take the request id from [`RequestIdLayer`], yet the layer formats
/// every new span's fields into JSON with the `FormatFields` it is given: for each request
/// span, work no line read (~1% of the proxying path's CPU, BENCHMARKS.md, issue 18).
struct NoSpanFields;

impl<'w> FormatFields<'w> for NoSpanFields {
    fn format_fields<R: RecordFields>(&self, _writer: Writer<'w>, _fields: R) -> std::fmt::Result {
        Ok(())
    }
}

/// The span a request is served in; lines logged inside it carry `request_id`.
///
/// Its level is ERROR only so that it exists under any `SLUICE_LOG` level (a span filtered
/// out could not lend its id to the warnings inside it); it is never printed itself.
pub fn request_span(request_id: &str) -> tracing::Span {
    tracing::error_span!(target: "sluice::access", "request", request_id)
}

/// A span's `request_id`, kept in the span's extensions for the formatter.
struct SpanRequestId(String);

/// Records the `request_id` field of new spans.
struct RequestIdLayer;

impl<S> Layer<S> for RequestIdLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if attrs.fields().field(REQUEST_ID).is_none() {
            return;
        }
        let mut visitor = RequestIdVisitor(None);
        attrs.record(&mut visitor);
        if let (Some(value), Some(span)) = (visitor.0, ctx.span(id)) {
            span.extensions_mut().insert(SpanRequestId(value));
        }
    }
}

struct RequestIdVisitor(Option<String>);

impl Visit for RequestIdVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == REQUEST_ID {
            self.0 = Some(value.to_owned());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == REQUEST_ID {
            self.0 = Some(format!("{value:?}"));
        }
    }
}

/// The JSON event format, with `"request_id"` first when the event happens inside a request
/// span and does not name its request itself (the access line does), and key-shaped strings
/// redacted.
struct WithRequestId(Format<Json>);

impl<S, N> FormatEvent<S, N> for WithRequestId
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let own_id = event.metadata().fields().field(REQUEST_ID).is_some();
        let span_id = ctx.event_scope().and_then(|scope| {
            scope.into_iter().find_map(|span| {
                span.extensions()
                    .get::<SpanRequestId>()
                    .map(|r| r.0.clone())
            })
        });
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        let line = crate::redact::key_shaped_json(&line);
        let Some(request_id) = span_id.filter(|_| !own_id) else {
            return writer.write_str(&line);
        };
        let rest = line.strip_prefix('{').ok_or(std::fmt::Error)?;
        let id = serde_json::to_string(&request_id).map_err(|_| std::fmt::Error)?;
        let id = crate::redact::key_shaped_json(&id);
        let comma = if rest.starts_with('}') { "" } else { "," };
        write!(writer, "{{\"{REQUEST_ID}\":{id}{comma}{rest}")
    }
}

/// A log file opened for appending. The formatter hands over each line whole, and it is
/// written under a lock with one `write` on an `O_APPEND` descriptor, so lines from threads
/// (and from other processes appending to the same file) never interleave.
pub struct LogFile(Mutex<File>);

impl LogFile {
    /// Opens `path` for appending, creating it and its parent directories.
    pub fn open(path: &Path) -> io::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Self(Mutex::new(file)))
    }
}

impl<'a> MakeWriter<'a> for LogFile {
    type Writer = LogFileLine<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LogFileLine(&self.0)
    }
}

/// One line on its way into a [`LogFile`].
pub struct LogFileLine<'a>(&'a Mutex<File>);

impl Write for LogFileLine<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_all(buf)?;
        Ok(buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        // A panic elsewhere while holding the lock leaves the file itself usable.
        let mut file = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        file.write_all(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Copies the lines of one request from a JSON log to `out`, reading line by line (a log
/// can be large). Lines that are not JSON, or not about that request, are skipped. Returns
/// how many lines were copied.
pub fn copy_request_lines(
    mut log: impl BufRead,
    request_id: &str,
    out: &mut impl Write,
) -> io::Result<usize> {
    let mut line = Vec::new();
    let mut found = 0;
    loop {
        line.clear();
        if log.read_until(b'\n', &mut line)? == 0 {
            return Ok(found);
        }
        // Parse only lines that can match: most lines are about other requests.
        let Ok(text) = std::str::from_utf8(line.trim_ascii_end()) else {
            continue;
        };
        if !text.contains(request_id) {
            continue;
        }
        let is_match = serde_json::from_str::<serde_json::Value>(text)
            .ok()
            .is_some_and(|v| v.get(REQUEST_ID).and_then(|v| v.as_str()) == Some(request_id));
        if is_match {
            out.write_all(text.as_bytes())?;
            out.write_all(b"\n")?;
            found += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use serde_json::Value;
    use tracing_subscriber::layer::SubscriberExt;

    /// A writer that collects the formatted lines in memory.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn lines(&self) -> Vec<Value> {
            String::from_utf8(self.0.lock().unwrap().clone())
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect()
        }
    }

    fn with_subscriber(f: impl FnOnce()) -> Vec<Value> {
        let out = Captured::default();
        let sink = out.clone();
        let subscriber = tracing_subscriber::registry()
            .with(RequestIdLayer)
            .with(json_layer(move || sink.clone()));
        tracing::subscriber::with_default(subscriber, f);
        out.lines()
    }

    #[test]
    fn lines_inside_a_request_carry_its_id_and_others_are_unchanged() {
        let lines = with_subscriber(|| {
            tracing::info!(target: "sluice::test", answer = 42, "outside");
            let span = request_span("req_abc");
            let _entered = span.enter();
            tracing::warn!(target: "sluice::test", "inside");
            tracing::info_span!("nested").in_scope(|| tracing::info!("deeper"));
            tracing::info!(target: "sluice::access", request_id = "req_abc", "request");
        });
        let outside = &lines[0];
        assert_eq!(outside["message"], "outside");
        assert_eq!(outside["answer"], 42);
        assert!(outside.get("request_id").is_none() && outside.get("span").is_none());
        let keys: Vec<&str> = outside
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys.len(), 5, "{keys:?}"); // timestamp, level, message, answer, target

        for line in &lines[1..] {
            assert_eq!(line["request_id"], "req_abc", "{line}");
            assert!(line.get("span").is_none(), "{line}");
        }
        assert_eq!(lines[1]["level"], "WARN");
        assert_eq!(lines[2]["message"], "deeper");
        // The access line names its request itself: the id is not doubled.
        let raw = serde_json::to_string(&lines[3]).unwrap();
        assert_eq!(raw.matches("request_id").count(), 1);
    }

    #[test]
    fn key_shaped_strings_are_redacted_in_every_field_of_every_line() {
        let key = format!("sk-sluice-{}", "k3Y".repeat(11));
        let google = format!("AIza{}", "g".repeat(35));
        let lines = with_subscriber(|| {
            tracing::info!(target: "sluice::test", model = %google, "outside {google}");
            let span = request_span("req_abc");
            let _entered = span.enter();
            tracing::warn!(target: "sluice::test", path = %format!("/v1/jobs/{key}"), "no job {key}");
        });
        let raw: Vec<String> = lines.iter().map(Value::to_string).collect();
        for line in &raw {
            assert!(
                !line.contains(&key[10..]) && !line.contains(&google[4..]),
                "{line}"
            );
        }
        assert_eq!(lines[0]["model"], "[REDACTED]");
        assert_eq!(lines[0]["message"], "outside [REDACTED]");
        assert_eq!(lines[1]["path"], "/v1/jobs/[REDACTED]");
        assert_eq!(lines[1]["message"], "no job [REDACTED]");
        assert_eq!(lines[1]["request_id"], "req_abc");
    }

    #[test]
    fn a_spawned_task_keeps_the_request_id_when_instrumented() {
        use tracing::Instrument;
        let lines = with_subscriber(|| {
            let span = request_span("req_task");
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            rt.block_on(async { tracing::info!("stream finished") }.instrument(span));
        });
        assert_eq!(lines[0]["request_id"], "req_task");
    }

    #[test]
    fn the_log_file_is_appended_to_whole_lines_from_many_writers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/sluice.log");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "{\"earlier\":true}\n").unwrap();
        // Two handles stand for two processes sharing the file.
        let files = [
            Arc::new(LogFile::open(&path).unwrap()),
            Arc::new(LogFile::open(&path).unwrap()),
        ];
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let file = Arc::clone(&files[t % 2]);
                std::thread::spawn(move || {
                    for i in 0..200 {
                        let line = format!(
                            "{{\"thread\":{t},\"i\":{i},\"pad\":\"{}\"}}\n",
                            "x".repeat(5000)
                        );
                        file.make_writer().write_all(line.as_bytes()).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "{\"earlier\":true}", "never truncated");
        assert_eq!(lines.len(), 1 + 8 * 200);
        for l in &lines[1..] {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|_| panic!("torn line: {l}"));
            assert_eq!(v["pad"].as_str().unwrap().len(), 5000);
        }
    }

    #[test]
    fn opening_creates_the_directories() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new/dir/sluice.log");
        let file = LogFile::open(&path).unwrap();
        file.make_writer().write_all(b"{}\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{}\n");
    }

    #[test]
    fn copying_a_request_picks_its_lines_only() {
        let log = concat!(
            "{\"message\":\"sluice listening\"}\n",
            "{\"request_id\":\"req_a\",\"message\":\"request\",\"status\":200}\n",
            "not json req_a\n",
            "{\"request_id\":\"req_ab\",\"message\":\"request\"}\n",
            "{\"request_id\":\"req_b\",\"note\":\"mentions req_a\"}\n",
            "{\"request_id\":\"req_a\",\"message\":\"stream finished\"}",
        );
        let mut bytes = log.as_bytes().to_vec();
        bytes.splice(0..0, b"\xff\xfe req_a not UTF-8\n".iter().copied());
        let mut out = Vec::new();
        let n = copy_request_lines(bytes.as_slice(), "req_a", &mut out).unwrap();
        assert_eq!(n, 2);
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].contains("\"status\":200"));
        assert!(lines[1].contains("stream finished"));

        let mut out = Vec::new();
        assert_eq!(
            copy_request_lines(log.as_bytes(), "req_zzz", &mut out).unwrap(),
            0
        );
        assert!(out.is_empty());
    }
}
