-- wrk: the same request every time, so all but the first are cache hits.
wrk.method = "POST"
wrk.body = '{"model":"gpt-test","messages":[{"role":"user","content":"the same question"}]}'
