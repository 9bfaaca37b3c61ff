// k6 load test for a Sluice deployment (staging): the same scenarios as `sluice loadtest`.
//
//   k6 run -e URL=https://staging.example.com -e KEY=sk-sluice-… infra/k6/sluice.js
//   k6 run -e URL=… -e KEY=… -e RATE=50 -e DURATION=5m -e REPEAT=0.3 infra/k6/sluice.js
//
// Environment (all but KEY optional):
//   URL        base URL; requests go to URL/v1/chat/completions          (http://127.0.0.1:8080)
//   KEY        gateway key, sent as `Authorization: Bearer KEY`
//   MODEL      model name                                                 (gpt-4o-mini)
//   RATE       open model: requests started per second, an integer (constant-arrival-rate);
//              without it, the closed model below
//   MAX_VUS    open model: most requests in flight; k6 counts a start that finds them all busy
//              in `dropped_iterations`                                      (1000)
//   VUS        closed model: virtual users, each sending its next request when the last one is
//              answered (constant-vus)                                      (1)
//   DURATION   how long, k6 style: 30s, 5m                                  (30s)
//   REPEAT     share of requests (0–1) reusing one of ten prompts, so they can be cache hits (0)
//   STREAM     1 or true: `"stream": true`; each answer must end with `data: [DONE]`
//   MAX_TOKENS sets `max_tokens`
//   BODY       JSON file to start from; the prompt replaces `{{prompt}}` in the last user message,
//              or is appended to it (as `sluice loadtest --body`)
//   TIMEOUT    per request                                                  (60s)
//   ERROR_RATE threshold on http_req_failed                                 (0.01)
//   P95_MS, P99_MS  thresholds on http_req_duration, only when set (none by default: a
//              latency goal belongs to the deployment under test, and a shared machine's
//              timing must not fail a correctness check)
//
// Thresholds fail the run (exit code 99): http_req_failed, the `answer_ok` check rate (a 2xx
// answer that is JSON, or a stream ending with [DONE]), and http_req_duration p95/p99 when
// asked for. Custom metrics: `sluice_cache_hits` (rate of `x-sluice-cache: hit` or `coalesced`), `sluice_ttfb`
// (streams: k6's time to first byte of the response), `sluice_errors` (count, tagged by status).

import http from 'k6/http';
import exec from 'k6/execution';
import { check } from 'k6';
import { Counter, Rate, Trend } from 'k6/metrics';

const env = (name, fallback) => {
  const v = __ENV[name];
  return v === undefined || v === '' ? fallback : v;
};

const KEY = env('KEY', '');
if (!KEY) {
  throw new Error('set KEY to a gateway key: k6 run -e KEY=sk-sluice-… infra/k6/sluice.js');
}
const BASE = env('URL', 'http://127.0.0.1:8080').replace(/\/+$/, '');
const ENDPOINT = BASE.endsWith('/chat/completions')
  ? BASE
  : BASE.endsWith('/v1')
    ? `${BASE}/chat/completions`
    : `${BASE}/v1/chat/completions`;
const RATE = env('RATE', '');
const DURATION = env('DURATION', '30s');
const REPEAT = Number(env('REPEAT', '0'));
const REPEAT_POOL = 10;
const STREAM_ASKED = ['1', 'true', 'yes'].includes(env('STREAM', '').toLowerCase());
const TIMEOUT = env('TIMEOUT', '60s');
if (!(REPEAT >= 0 && REPEAT <= 1)) {
  throw new Error(`REPEAT=${__ENV.REPEAT}: a share between 0 and 1`);
}

function scenario() {
  if (RATE) {
    const rate = Number(RATE);
    if (!Number.isInteger(rate) || rate < 1) {
      throw new Error(`RATE=${RATE}: whole requests per second, at least 1`);
    }
    const maxVUs = Number(env('MAX_VUS', '1000'));
    return {
      executor: 'constant-arrival-rate',
      rate,
      timeUnit: '1s',
      duration: DURATION,
      preAllocatedVUs: Math.min(rate, maxVUs),
      maxVUs,
    };
  }
  return { executor: 'constant-vus', vus: Number(env('VUS', '1')), duration: DURATION };
}

function latencyThresholds() {
  const limits = [];
  for (const [name, stat] of [['P95_MS', 'p(95)'], ['P99_MS', 'p(99)']]) {
    const ms = env(name, '');
    if (!ms) continue;
    if (!(Number(ms) > 0)) throw new Error(`${name}=${ms}: milliseconds, above 0`);
    limits.push(`${stat}<${Number(ms)}`);
  }
  return limits.length ? { http_req_duration: limits } : {};
}

export const options = {
  scenarios: { [RATE ? 'open_model' : 'closed_model']: scenario() },
  thresholds: {
    http_req_failed: [`rate<${env('ERROR_RATE', '0.01')}`],
    'checks{check:answer_ok}': ['rate>0.99'],
    ...latencyThresholds(),
    // Always true: listed so the end-of-test summary shows errors per status.
    'sluice_errors{status:429}': ['count>=0'],
    'sluice_errors{status:502}': ['count>=0'],
    'sluice_errors{status:503}': ['count>=0'],
    'sluice_errors{status:504}': ['count>=0'],
    'sluice_errors{status:truncated}': ['count>=0'],
    'sluice_errors{status:invalid_json}': ['count>=0'],
    'sluice_errors{status:transport}': ['count>=0'],
  },
  // `count` too: the summary export then says how many streams were timed.
  summaryTrendStats: ['count', 'avg', 'min', 'med', 'p(95)', 'p(99)', 'max'],
};

const cacheHits = new Rate('sluice_cache_hits');
const ttfb = new Trend('sluice_ttfb', true);
const errors = new Counter('sluice_errors');

const PLACEHOLDER = '{{prompt}}';
const MARK = '__sluice_loadtest_prompt__';

function markText(text) {
  if (text.includes(PLACEHOLDER)) return text.replace(PLACEHOLDER, MARK);
  if (text.trim() === '') return MARK;
  return `${text}\n\n${MARK}`;
}

// k6 resolves a relative `open()` path against the script's directory; BODY means one in the
// directory k6 was started from (as `sluice loadtest --body` does), which the shell passes as PWD.
function bodyPath(path) {
  if (path.startsWith('/')) return path;
  const cwd = __ENV.PWD;
  if (!cwd) throw new Error(`BODY=${path}: no PWD to resolve it against; give an absolute path`);
  return `${cwd.replace(/\/+$/, '')}/${path}`;
}

// The request body with a hole for the prompt (the same rules as `sluice loadtest --body`).
function template() {
  const path = env('BODY', '');
  const body = path
    ? JSON.parse(open(bodyPath(path)))
    : { messages: [{ role: 'user', content: PLACEHOLDER }] };
  if (body === null || typeof body !== 'object' || Array.isArray(body)) {
    throw new Error('BODY: the body must be a JSON object');
  }
  body.model = env('MODEL', body.model || 'gpt-4o-mini');
  if (STREAM_ASKED) body.stream = true;
  const maxTokens = env('MAX_TOKENS', '');
  if (maxTokens) body.max_tokens = Number(maxTokens);
  if (!Array.isArray(body.messages)) throw new Error('BODY: the body needs a `messages` array');
  const users = body.messages.filter((m) => m && m.role === 'user');
  const last = users[users.length - 1];
  if (!last) {
    body.messages.push({ role: 'user', content: MARK });
  } else if (typeof last.content === 'string') {
    last.content = markText(last.content);
  } else if (Array.isArray(last.content)) {
    const texts = last.content.filter((p) => p && p.type === 'text');
    const part = texts[texts.length - 1];
    if (part) part.text = markText(typeof part.text === 'string' ? part.text : '');
    else last.content.push({ type: 'text', text: MARK });
  } else {
    last.content = MARK;
  }
  const text = JSON.stringify(body);
  const [head, ...rest] = text.split(MARK);
  if (rest.length !== 1) throw new Error(`BODY must not contain ${MARK}`);
  return { head, tail: rest[0], stream: body.stream === true };
}

// Init context: read once per VU (k6's `open` only works here).
const TEMPLATE = template();

// Request n repeats a pooled prompt when floor((n+1)·share) > floor(n·share): exactly
// floor(N·share) of the first N, evenly spread (the same rule as `sluice loadtest --repeat`).
export function repeatSlot(n, share) {
  const ppm = Math.round(share * 1e6);
  const before = Math.floor((n * ppm) / 1e6);
  const after = Math.floor(((n + 1) * ppm) / 1e6);
  return after > before ? before % REPEAT_POOL : null;
}

export function setup() {
  // Keeps this run's prompts apart from earlier runs' cached answers.
  return { run: Date.now().toString(36) };
}

export default function (data) {
  const n = exec.scenario.iterationInTest;
  const slot = repeatSlot(n, REPEAT);
  const prompt = slot === null
    ? `load test ${data.run}: request ${n}`
    : `load test ${data.run}: repeated prompt ${slot}`;
  const res = http.post(ENDPOINT, TEMPLATE.head + prompt + TEMPLATE.tail, {
    headers: { Authorization: `Bearer ${KEY}`, 'Content-Type': 'application/json' },
    timeout: TIMEOUT,
    tags: { name: 'chat_completions' },
  });

  let answered = false;
  if (res.status >= 200 && res.status < 300) {
    if (TEMPLATE.stream) {
      answered = typeof res.body === 'string' && res.body.trimEnd().endsWith('data: [DONE]');
      if (answered) ttfb.add(res.timings.waiting);
    } else {
      try {
        JSON.parse(res.body);
        answered = true;
      } catch (_) {
        answered = false;
      }
    }
    if (!answered) errors.add(1, { status: TEMPLATE.stream ? 'truncated' : 'invalid_json' });
  } else {
    errors.add(1, { status: res.status === 0 ? 'transport' : String(res.status) });
  }
  check(res, { answer_ok: () => answered });
  if (answered) {
    const header = Object.keys(res.headers).find((k) => k.toLowerCase() === 'x-sluice-cache');
    // A coalesced answer (another identical request's call, shared) is a call saved, as a hit is.
    const cached = header !== undefined ? res.headers[header] : undefined;
    cacheHits.add(cached === 'hit' || cached === 'coalesced');
  }
}
