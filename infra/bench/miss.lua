-- wrk: every request a distinct prompt, so every request is a cache miss that reaches the upstream.
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end
local n = 0
function request()
  n = n + 1
  local body = string.format(
    '{"model":"gpt-test","messages":[{"role":"user","content":"miss %d-%d"}]}', tid or 0, n)
  return wrk.format("POST", nil, nil, body)
end
