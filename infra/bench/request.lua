-- wrk: one benchmark row. Set by the environment (see run.sh):
--   BODY    "miss" (every prompt distinct), "same" (one prompt: cache hits after the first)
--   MODEL   model name; STREAM "1" asks for a streamed answer; KEY the bearer key; RUN a
--   run id that keeps each row's prompts apart from every other row's. TURNS (default 0)
--   puts that many earlier user/assistant exchanges (~300 bytes each) before the prompt: a
--   conversation, as most real requests are.
-- done() prints one JSON line with the row's counts and latency percentiles (µs); answers with
-- a status of 400 or more count as `non_2xx` (wrk has no per-status count without a Lua call
-- per response, which would slow it down).
local body_kind = os.getenv("BODY") or "miss"
local model = os.getenv("MODEL") or "gpt-test"
local stream = os.getenv("STREAM") == "1"
local run = os.getenv("RUN") or "0"
local key = os.getenv("KEY") or "sk-bench"

local counter = 1
function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
end

local turns = tonumber(os.getenv("TURNS") or "0")
local earlier = ""
for i = 1, turns do
  earlier = earlier .. string.format(
    '{"role":"user","content":"Question %d: what does the gateway do with a request it has seen before, and with one it has not?"},' ..
    '{"role":"assistant","content":"Answer %d: a request seen before is answered from the cache; one not seen before goes to a provider, and its answer is stored."},',
    i, i)
end

local function body_for(prompt)
  local extra = stream and ',"stream":true' or ''
  return string.format('{"model":"%s","messages":[%s{"role":"user","content":"%s"}]%s}',
    model, earlier, prompt, extra)
end

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. key
wrk.body = body_for("bench " .. run .. " the same question")

-- Only distinct prompts need a Lua call per request; the same prompt is wrk's static request.
if body_kind == "miss" then
  local n = 0
  function request()
    n = n + 1
    return wrk.format(nil, nil, nil, body_for(string.format("bench %s miss %d-%d", run, tid, n)))
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,' ..
    '"max_us":%d,"mean_us":%.1f,"errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d,' ..
    '"non_2xx":%d}}\n',
    summary.requests, summary.duration, summary.bytes, latency:percentile(50),
    latency:percentile(90), latency:percentile(99), latency.max, latency.mean,
    e.connect, e.read, e.write, e.timeout, e.status))
end
