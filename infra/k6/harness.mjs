// Runs infra/k6/sluice.js without k6 (not installable here): its k6 imports are swapped for
// small stand-ins (`http.post` through curl, metrics and checks recorded in memory), then the
// init code, `setup()` and ITERATIONS calls of the default function run one after another.
// It checks the script's own logic (body template, repeat rule, stream and error handling,
// options) against a real gateway, not k6's scheduling or thresholds.
//
//   node infra/k6/harness.mjs infra/k6/sluice.js ITERATIONS   (env as for k6: URL, KEY, …)
// Prints one JSON object: options, check counts, metric samples.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';

const [script, iterations = '20'] = process.argv.slice(2);
const dir = mkdtempSync(join(tmpdir(), 'k6-harness-'));
const state = { iteration: 0, checks: {}, metrics: {} };
globalThis.__k6harness = state;
globalThis.__ENV = { ...process.env };
globalThis.open = (path) => readFileSync(path, 'utf8');

const stubs = {
  'k6/http': `
    import { execFileSync } from 'node:child_process';
    import { readFileSync, mkdtempSync } from 'node:fs';
    import { join } from 'node:path';
    import { tmpdir } from 'node:os';
    const dir = mkdtempSync(join(tmpdir(), 'k6-http-'));
    export default {
      post(url, body, params) {
        const args = ['-s', '-o', join(dir, 'body'), '-D', join(dir, 'head'),
          '-w', '%{http_code} %{time_starttransfer}', '--max-time', '60',
          '--data-binary', '@-', url];
        for (const [k, v] of Object.entries(params.headers || {})) args.unshift('-H', k + ': ' + v);
        let out = '000 0';
        try { out = execFileSync('curl', args, { input: body }).toString(); } catch (_) {}
        const [code, start] = out.trim().split(' ');
        const headers = {};
        let text = '';
        try {
          text = readFileSync(join(dir, 'body'), 'utf8');
          for (const line of readFileSync(join(dir, 'head'), 'utf8').split('\\r\\n').slice(1)) {
            const i = line.indexOf(':');
            if (i > 0) headers[line.slice(0, i).replace(/(^|-)([a-z])/g, (m) => m.toUpperCase())] = line.slice(i + 1).trim();
          }
        } catch (_) {}
        globalThis.__k6harness.bodies = (globalThis.__k6harness.bodies || []).concat([JSON.parse(body)]);
        return { status: Number(code), body: text, headers, timings: { waiting: Number(start) * 1000 } };
      },
    };`,
  'k6/execution': `
    export default { scenario: { get iterationInTest() { return globalThis.__k6harness.iteration; } } };`,
  'k6': `
    export function check(value, checks) {
      for (const [name, fn] of Object.entries(checks)) {
        const c = globalThis.__k6harness.checks[name] ||= { passes: 0, fails: 0 };
        if (fn(value)) c.passes++; else c.fails++;
      }
    }`,
  'k6/metrics': `
    function metric(kind) {
      return class {
        constructor(name) { this.name = name; globalThis.__k6harness.metrics[name] = { kind, samples: [] }; }
        add(value, tags) { globalThis.__k6harness.metrics[this.name].samples.push(tags ? [Number(value), tags] : Number(value)); }
      };
    }
    export const Counter = metric('counter');
    export const Rate = metric('rate');
    export const Trend = metric('trend');`,
};

let source = readFileSync(script, 'utf8');
for (const [name, code] of Object.entries(stubs)) {
  const file = join(dir, name.replace(/\//g, '_') + '.mjs');
  writeFileSync(file, code);
  source = source.replaceAll(`from '${name}';`, `from '${pathToFileURL(file)}';`);
}
const copy = join(dir, 'script.mjs');
writeFileSync(copy, source);
try {
  const mod = await import(pathToFileURL(resolve(copy)));
  const data = mod.setup ? mod.setup() : undefined;
  for (let i = 0; i < Number(iterations); i++) {
    state.iteration = i;
    mod.default(data);
  }
  const bodies = state.bodies || [];
  console.log(JSON.stringify({
    options: mod.options,
    checks: state.checks,
    metrics: state.metrics,
    first_body: bodies[0],
    distinct_prompts: new Set(bodies.map((b) => JSON.stringify(b.messages))).size,
  }));
} finally {
  rmSync(dir, { recursive: true, force: true });
}
