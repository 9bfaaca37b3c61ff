//! Security checks as tests: every tenant-scoped route refuses another tenant's key, the admin
//! API refuses every credential but the admin key, and job callbacks never reach a private
//! address — by IP literal in any notation, by a name that resolves to one, by a check that
//! passed earlier, or by a redirect.
//!
//! Each test prints what it tried (`security:` lines) for RELIABILITY.md:
//! `cargo test -p sluice-tests --test it e2e::security -- --nocapture`.
//! Keys stored as hashes, secrets in logs and the body limit need the `sluice` binary and
//! are in `cli/tests/it/security.rs`.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use sluice_tests::gateway::ADMIN_KEY;
use sluice_tests::{
    CallbackReceiver, FakeUpstream, TestGateway, fake_config, fake_config_with_jobs,
};

use crate::e2e::{assert_error, header, json};

fn chat_body(prompt: &str) -> Value {
    json!({"model": "gpt-test", "messages": [{"role": "user", "content": prompt}]})
}

/// Polls a job until it is final.
async fn finished_job(gw: &TestGateway, key: &str, id: &str) -> Value {
    for _ in 0..200 {
        let job = json(get(gw, &format!("/v1/jobs/{id}"), key).await).await;
        if job["status"] == "succeeded" || job["status"] == "failed" {
            return job;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("job {id} did not finish");
}

async fn get(gw: &TestGateway, path: &str, key: &str) -> reqwest::Response {
    gw.http
        .get(format!("{}{path}", gw.url))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn tenant_scoped_routes_never_answer_for_another_tenant() {
    let up = FakeUpstream::start().await;
    let config = format!(
        "{}\n[metrics]\nflush_every_ms = 50\n\n\
         [[tenants]]\nname = \"tenant-a\"\nrpm = 1000\nbudget_usd = 10.0\nperiod = \"day\"\n\n\
         [[tenants]]\nname = \"tenant-b\"\nrpm = 1000\nbudget_usd = 10.0\nperiod = \"day\"\n",
        fake_config_with_jobs(&up.base_url, 1)
    );
    let gw = TestGateway::start(&config).await;
    let a_created = gw
        .admin_create(json!({"tenant": "tenant-a", "rpm": 100}))
        .await;
    let b_created = gw
        .admin_create(json!({"tenant": "tenant-b", "rpm": 100}))
        .await;
    let a = a_created["key"].as_str().unwrap();
    let b = b_created["key"].as_str().unwrap();
    let a_id = a_created["id"].as_str().unwrap();
    let mut probes = 0;

    // Cache: each of A's answers, asked again by B, is a miss that reaches the provider.
    let stream_body = json!({"model": "gpt-test", "stream": true,
        "messages": [{"role": "user", "content": "streamed secret of A"}]});
    let cases: [(&str, Value); 4] = [
        ("/v1/chat/completions", chat_body("answer only for A")),
        ("/v1/chat/completions", stream_body),
        (
            "/v1/embeddings",
            json!({"model": "embed-test", "input": "A's text"}),
        ),
        (
            "/v1/messages",
            json!({"model": "gpt-test", "max_tokens": 16,
                   "messages": [{"role": "user", "content": "A via Anthropic"}]}),
        ),
    ];
    let mut a_requests = 0;
    let mut b_requests = 0;
    for (path, body) in &cases {
        let r = gw.post(path, a, body).await;
        assert_eq!(r.status(), 200, "{path}");
        r.bytes().await.unwrap();
        // A's own repeat is a hit, so the entry B must not see exists (a stream's answer is
        // stored just after its last byte, hence the retries).
        let mut cached = false;
        for _ in 0..50 {
            let r = gw.post(path, a, body).await;
            cached = header(&r, "x-sluice-cache") == "hit";
            r.bytes().await.unwrap();
            a_requests += 1;
            if cached {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(cached, "A's own repeat of {path} was never a hit");
        let calls = up.calls();
        let r = gw.post(path, b, body).await;
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(
            header(&r, "x-sluice-cache"),
            "miss",
            "B got A's entry: {path}"
        );
        r.bytes().await.unwrap();
        assert_eq!(up.calls(), calls + 1, "B's request must reach the provider");
        a_requests += 1;
        b_requests += 1;
        probes += 1;
    }

    // Idempotency-Key: the same key and body from B is B's own request, not A's replay.
    let idem = |key: &str| {
        gw.http
            .post(format!("{}/v1/chat/completions", gw.url))
            .bearer_auth(key)
            .header("idempotency-key", "order-1")
            .header("cache-control", "no-cache")
            .json(&chat_body("idempotent"))
            .send()
    };
    let first = idem(a).await.unwrap();
    assert_eq!(first.status(), 200);
    let first = json(first).await;
    let calls = up.calls();
    let r = idem(b).await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("idempotent-replayed").is_none());
    assert_ne!(
        json(r).await["id"],
        first["id"],
        "B got A's stored response"
    );
    assert_eq!(up.calls(), calls + 1);
    a_requests += 1;
    b_requests += 1;
    probes += 1;

    // Jobs: A's job is not found for B, exactly like a job that does not exist.
    let r = gw
        .post(
            "/v1/jobs",
            a,
            &json!({"endpoint": "/v1/chat/completions", "request": chat_body("A's job")}),
        )
        .await;
    assert_eq!(r.status(), 202);
    let job_id = json(r).await["id"].as_str().unwrap().to_owned();
    assert_eq!(finished_job(&gw, a, &job_id).await["status"], "succeeded");
    a_requests += 1; // the job's run is A's request in metrics
    let theirs = assert_error(
        get(&gw, &format!("/v1/jobs/{job_id}"), b).await,
        404,
        "job_not_found",
    )
    .await;
    let missing = assert_error(
        get(&gw, "/v1/jobs/job_doesnotexist0000000000000", b).await,
        404,
        "job_not_found",
    )
    .await;
    assert_eq!(
        theirs["message"].as_str().unwrap().replace(&job_id, "ID"),
        missing["message"]
            .as_str()
            .unwrap()
            .replace("job_doesnotexist0000000000000", "ID"),
        "another tenant's job must look like a missing one"
    );
    probes += 2;

    // Usage: B sees its own key and tenant, none of A's requests or spend.
    let usage = json(get(&gw, "/v1/usage", b).await).await;
    assert_eq!(usage["key_id"], b_created["id"], "{usage}");
    assert_eq!(usage["limits"]["key"]["rpm"]["used"], b_requests, "{usage}");
    assert_eq!(
        usage["limits"]["tenant"]["rpm"]["used"], b_requests,
        "{usage}"
    );
    let text = usage.to_string();
    assert!(
        !text.contains(a_id) && !text.contains("tenant-a"),
        "{usage}"
    );
    let a_usage = json(get(&gw, "/v1/usage", a).await).await;
    let a_spent = a_usage["limits"]["tenant"]["budget"]["spent_usd"].as_f64();
    let b_spent = usage["limits"]["tenant"]["budget"]["spent_usd"].as_f64();
    assert!(a_spent.unwrap() > b_spent.unwrap(), "{a_usage} vs {usage}");
    probes += 1;

    // Metrics: B's series count B's requests only, and B cannot ask for A's.
    let total = a_requests + b_requests;
    let mut all = Value::Null;
    for _ in 0..200 {
        all = json(get(&gw, "/v1/metrics?group_by=tenant", ADMIN_KEY).await).await;
        if all["totals"]["requests"] == total {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(all["totals"]["requests"], total, "{all}");
    for group_by in ["model", "provider"] {
        let mine = json(get(&gw, &format!("/v1/metrics?group_by={group_by}"), b).await).await;
        assert_eq!(mine["totals"]["requests"], b_requests, "{mine}");
        assert!(!mine.to_string().contains("tenant-a"), "{mine}");
        probes += 1;
    }
    for query in ["tenant=tenant-a", "group_by=tenant"] {
        let r = get(&gw, &format!("/v1/metrics?{query}"), b).await;
        assert_error(r, 400, "invalid_request").await;
        probes += 1;
    }
    // Prometheus text carries no tenant or key labels at all.
    let prom = gw
        .http
        .get(format!("{}/metrics", gw.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(prom.contains("sluice_requests_total"), "{prom}");
    for needle in ["tenant-a", "tenant-b", a_id, "tenant="] {
        assert!(!prom.contains(needle), "/metrics shows `{needle}`");
    }
    probes += 1;

    // Request logs: no HTTP route serves them (`sluice logs` reads a local file, for
    // operators); these paths are plain 404s for a tenant and the admin alike.
    for path in ["/v1/logs", "/admin/logs", "/logs", "/v1/requests"] {
        for key in [b, ADMIN_KEY] {
            assert_error(get(&gw, path, key).await, 404, "unknown_url").await;
            probes += 1;
        }
    }
    println!(
        "security: tenant isolation: {probes} cross-tenant probes (cache on 4 routes, \
         idempotency, jobs, usage, metrics, prometheus, log routes), all refused or scoped"
    );
}

/// A credential for the admin matrix, and what it must get: 401 or 403 with this code.
struct Credential {
    name: &'static str,
    headers: Vec<(&'static str, String)>,
    status: u16,
    code: &'static str,
}

#[tokio::test]
async fn admin_routes_refuse_every_credential_but_the_admin_key() {
    let gw = TestGateway::start_builtin().await;
    let tenant = gw.admin_create(json!({"tenant": "t1"})).await;
    let tenant_key = tenant["key"].as_str().unwrap().to_owned();
    let tenant_id = tenant["id"].as_str().unwrap().to_owned();
    let revoked = gw.admin_create(json!({"tenant": "t1"})).await;
    let r = gw
        .http
        .delete(format!(
            "{}/admin/keys/{}",
            gw.url,
            revoked["id"].as_str().unwrap()
        ))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let revoked_key = revoked["key"].as_str().unwrap().to_owned();

    let bearer = |k: &str| vec![("authorization", format!("Bearer {k}"))];
    let missing = |name, headers| Credential {
        name,
        headers,
        status: 401,
        code: "missing_api_key",
    };
    let wrong = |name, headers| Credential {
        name,
        headers,
        status: 403,
        code: "admin_key_required",
    };
    let credentials = [
        missing("no header", vec![]),
        missing("empty bearer", vec![("authorization", "Bearer ".into())]),
        missing(
            "basic auth with the admin key",
            vec![("authorization", format!("Basic {ADMIN_KEY}"))],
        ),
        missing(
            "bare admin key, no scheme",
            vec![("authorization", ADMIN_KEY.into())],
        ),
        missing("empty x-api-key", vec![("x-api-key", String::new())]),
        wrong("tenant key", bearer(&tenant_key)),
        wrong(
            "tenant key as x-api-key",
            vec![("x-api-key", tenant_key.clone())],
        ),
        wrong("revoked tenant key", bearer(&revoked_key)),
        wrong(
            "unknown key",
            bearer("sk-sluice-0000000000000000000000000000000000000000"),
        ),
        wrong("admin key plus one char", bearer(&format!("{ADMIN_KEY}x"))),
        wrong(
            "admin key minus one char",
            bearer(&ADMIN_KEY[..ADMIN_KEY.len() - 1]),
        ),
        wrong("admin key upper-cased", bearer(&ADMIN_KEY.to_uppercase())),
        wrong("garbage bytes", bearer("%00;DROP TABLE keys; --")),
        wrong(
            "tenant key with the admin key in x-api-key",
            vec![
                ("authorization", format!("Bearer {tenant_key}")),
                ("x-api-key", ADMIN_KEY.into()),
            ],
        ),
    ];
    let routes: [(Method, String, Option<Value>); 5] = [
        (Method::GET, "/admin/keys".into(), None),
        (
            Method::POST,
            "/admin/keys".into(),
            Some(json!({"tenant": "evil"})),
        ),
        (Method::DELETE, format!("/admin/keys/{tenant_id}"), None),
        (Method::GET, "/admin/usage?tenant=t1".into(), None),
        (Method::GET, "/v1/metrics?group_by=tenant".into(), None),
    ];
    let mut tries = 0;
    for (method, path, body) in &routes {
        for c in &credentials {
            let mut req = gw.http.request(method.clone(), format!("{}{path}", gw.url));
            for (k, v) in &c.headers {
                req = req.header(*k, v);
            }
            if let Some(body) = body {
                req = req.json(body);
            }
            let r = req.send().await.unwrap();
            let (status, code) = match (path.starts_with("/v1/metrics"), c.status) {
                // On /v1/metrics a gateway key is valid but may not group by tenant; anything
                // that is not a key at all is 401 there too.
                (true, 403) if c.name.starts_with("tenant key") => (400, "invalid_request"),
                (true, 403) => (401, "invalid_api_key"),
                _ => (c.status, c.code),
            };
            let got = r.status().as_u16();
            assert_eq!(got, status, "{method} {path} with {}", c.name);
            assert_error(r, status, code).await;
            tries += 1;
        }
    }
    // Nothing happened: the tenant key still works and no key was made for `evil`.
    assert_eq!(
        gw.chat(&tenant_key, "gpt-4o-mini", "still here")
            .await
            .status(),
        200
    );
    let listed = json(get(&gw, "/admin/keys", ADMIN_KEY).await).await;
    assert!(!listed.to_string().contains("evil"), "{listed}");

    // And the admin key is no gateway key on any tenant route.
    let tenant_routes: [(Method, &str, Option<Value>); 6] = [
        (Method::POST, "/v1/chat/completions", Some(chat_body("x"))),
        (
            Method::POST,
            "/v1/embeddings",
            Some(json!({"model": "text-embedding-3-small", "input": "x"})),
        ),
        (
            Method::POST,
            "/v1/jobs",
            Some(json!({"endpoint": "/v1/chat/completions", "request": chat_body("x")})),
        ),
        (Method::GET, "/v1/jobs/job_x", None),
        (Method::GET, "/v1/usage", None),
        (Method::GET, "/v1/models", None),
    ];
    for (method, path, body) in &tenant_routes {
        let mut req = gw
            .http
            .request(method.clone(), format!("{}{path}", gw.url))
            .bearer_auth(ADMIN_KEY);
        if let Some(body) = body {
            req = req.json(body);
        }
        assert_error(req.send().await.unwrap(), 401, "invalid_api_key").await;
        tries += 1;
    }
    let r = gw
        .http
        .post(format!("{}/v1/messages", gw.url))
        .header("x-api-key", ADMIN_KEY)
        .json(&json!({"model": "gpt-4o-mini", "max_tokens": 5,
                      "messages": [{"role": "user", "content": "x"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(json(r).await["error"]["type"], "authentication_error");
    tries += 1;
    println!(
        "security: admin routes: {} routes x {} credentials + {} tenant routes with the admin \
         key = {tries} requests, each 401/403 in OpenAI format",
        routes.len(),
        credentials.len(),
        tenant_routes.len() + 1
    );
}

/// Callback URLs that point to loopback, private, link-local or unique-local addresses, in
/// every notation a URL parser accepts for them.
const PRIVATE_CALLBACKS: &[&str] = &[
    // 127.0.0.0/8
    "http://127.0.0.1/hook",
    "http://127.0.0.0/hook",
    "http://127.1.2.3:8080/hook",
    "http://127.255.255.254/hook",
    "http://2130706433/hook",     // 127.0.0.1 as one decimal number
    "http://0x7f000001/hook",     // … as hex
    "http://0177.0.0.1/hook",     // … with an octal first part
    "http://127.1/hook",          // … shortened
    "https://127.0.0.1:443/hook", // https too
    // 10.0.0.0/8
    "http://10.0.0.0/hook",
    "http://10.1.2.3/hook",
    "http://10.255.255.255/hook",
    "http://0x0a.0.0.1/hook",
    "http://167772161/hook", // 10.0.0.1
    // 172.16.0.0/12
    "http://172.16.0.0/hook",
    "http://172.20.10.5/hook",
    "http://172.31.255.255/hook",
    // 192.168.0.0/16
    "http://192.168.0.0/hook",
    "http://192.168.1.1/hook",
    "http://192.168.255.255/hook",
    // 169.254.0.0/16 (cloud metadata lives here)
    "http://169.254.0.1/hook",
    "http://169.254.169.254/latest/meta-data/",
    "http://169.254.255.255/hook",
    // ::1 and IPv4 loopback/private inside IPv6
    "http://[::1]/hook",
    "http://[0:0:0:0:0:0:0:1]:9000/hook",
    "http://[::ffff:127.0.0.1]/hook",
    "http://[::ffff:10.0.0.1]/hook",
    "http://[::ffff:192.168.0.1]/hook",
    "http://[::ffff:169.254.169.254]/hook",
    "http://[64:ff9b::7f00:1]/hook", // NAT64 of 127.0.0.1
    // fc00::/7
    "http://[fc00::]/hook",
    "http://[fc00::1]/hook",
    "http://[fd00::1]/hook",
    "http://[fd12:3456:789a::1]/hook",
    "http://[fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]/hook",
    // unspecified addresses reach the local host too
    "http://0.0.0.0/hook",
    "http://[::]/hook",
];

/// Public addresses right next to each refused range: accepted, so the refusals above are
/// the ranges and not a blanket "no".
const PUBLIC_NEIGHBOURS: &[&str] = &[
    "http://126.255.255.255/hook",
    "http://128.0.0.1/hook",
    "http://9.255.255.255/hook",
    "http://11.0.0.1/hook",
    "http://172.15.255.255/hook",
    "http://172.32.0.1/hook",
    "http://192.167.255.255/hook",
    "http://192.169.0.1/hook",
    "http://169.253.255.255/hook",
    "http://169.255.0.1/hook",
    "http://[fbff:ffff::1]/hook",
    "http://[fe00::1]/hook",
    "http://[2606:4700::1111]/hook",
];

/// Host names that resolve offline (through `/etc/hosts`) to a non-public address: always
/// `localhost` and its spellings, plus every such name this machine's hosts file lists.
fn private_names() -> Vec<String> {
    let mut names: Vec<String> = ["localhost", "LOCALHOST", "localhost."]
        .map(str::to_owned)
        .to_vec();
    let hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    for line in hosts.lines() {
        let line = line.split('#').next().unwrap_or("");
        let mut fields = line.split_whitespace();
        let Some(ip) = fields.next().and_then(|ip| ip.parse().ok()) else {
            continue;
        };
        if !sluice::jobs::callback::is_public(ip) {
            for name in fields {
                if !names.iter().any(|n| n.eq_ignore_ascii_case(name)) {
                    names.push(name.to_owned());
                }
            }
        }
    }
    names
}

/// Submits a chat job with this callback URL, through `POST /v1/jobs` or through the
/// `Prefer: respond-async` route's header.
async fn submit_with_callback(
    gw: &TestGateway,
    key: &str,
    url: &str,
    via_header: bool,
) -> reqwest::Response {
    if via_header {
        gw.http
            .post(format!("{}/v1/chat/completions", gw.url))
            .bearer_auth(key)
            .header("prefer", "respond-async")
            .header("x-sluice-callback-url", url)
            .json(&chat_body("cb"))
            .send()
            .await
            .unwrap()
    } else {
        gw.post(
            "/v1/jobs",
            key,
            &json!({"endpoint": "/v1/chat/completions", "request": chat_body("cb"),
                    "callback_url": url}),
        )
        .await
    }
}

#[tokio::test]
async fn callbacks_to_private_addresses_are_refused_by_ip_and_by_name() {
    let up = FakeUpstream::start().await;
    // No workers: nothing accepted here is ever delivered, so public test addresses are safe.
    let config = format!(
        "{}\n[jobs]\nworkers = 0\ncallback_secret = \"whsec-sec\"\n",
        fake_config(&up.base_url)
    );
    let gw = TestGateway::start(&config).await;
    let key = gw.create_key("t1").await;
    let names = private_names();
    let mut named: Vec<String> = Vec::new();
    for name in &names {
        named.push(format!("http://{name}/hook"));
        named.push(format!("https://{name}:8443/x?y=1"));
    }
    let mut refused = 0;
    for url in PRIVATE_CALLBACKS
        .iter()
        .map(|u| (*u).to_owned())
        .chain(named.iter().cloned())
    {
        for via_header in [false, true] {
            let r = submit_with_callback(&gw, &key, &url, via_header).await;
            let error = assert_error(r, 400, "invalid_callback_url").await;
            if !via_header {
                assert_eq!(error["param"], "callback_url", "{url}");
            }
            refused += 1;
        }
    }
    let mut accepted = 0;
    for url in PUBLIC_NEIGHBOURS {
        let r = submit_with_callback(&gw, &key, url, false).await;
        assert_eq!(r.status(), 202, "{url} is public");
        accepted += 1;
    }
    // Only the accepted jobs were queued; no refused one reached the queue or the provider.
    let queued = gw
        .deps
        .queue
        .receive(10, Duration::ZERO)
        .await
        .unwrap()
        .len()
        + gw.deps
            .queue
            .receive(10, Duration::ZERO)
            .await
            .unwrap()
            .len();
    assert_eq!(queued, accepted);
    assert_eq!(up.calls(), 0);
    println!(
        "security: callbacks at submission: {} private URLs ({} IP literals, {} via {} host \
         names) x 2 routes = {refused} refused with 400; {accepted} public neighbours accepted",
        PRIVATE_CALLBACKS.len() + named.len(),
        PRIVATE_CALLBACKS.len(),
        named.len(),
        names.len(),
    );
}

#[tokio::test]
async fn callbacks_are_checked_again_at_delivery_and_redirects_are_not_followed() {
    let up = FakeUpstream::start().await;
    let trap = CallbackReceiver::start().await;
    let trap_port = trap.url.trim_start_matches("http://127.0.0.1:");
    let trap_port = &trap_port[..trap_port.find('/').unwrap()];

    // 1. A job accepted while private callbacks were allowed (or while its name resolved to
    // a public address) is delivered by a processor that does not allow them: nothing is
    // sent, and the job itself still succeeds. Two gateways share one database, as a
    // config change or a second process would.
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("cb.db");
    let db = db.to_str().unwrap();
    let lax = TestGateway::start_with_db(&fake_config_with_jobs(&up.base_url, 0), db).await;
    let strict_config = format!(
        "{}\n[jobs]\nworkers = 0\ncallback_secret = \"whsec-sec\"\n",
        fake_config(&up.base_url)
    );
    let strict = TestGateway::start_with_db(&strict_config, db).await;
    let key = lax.create_key("t1").await;
    let late_urls = [
        trap.url.clone(),
        format!("http://localhost:{trap_port}/hook"),
        format!("http://[::ffff:127.0.0.1]:{trap_port}/hook"),
    ];
    for url in &late_urls {
        let r = submit_with_callback(&lax, &key, url, false).await;
        assert_eq!(r.status(), 202, "{url}");
        let id = json(r).await["id"].as_str().unwrap().to_owned();
        let delivered = strict.deps.queue.receive(1, Duration::ZERO).await.unwrap();
        assert_eq!(delivered.len(), 1);
        // `process` returns after the callback was tried.
        let done = strict
            .services
            .processor
            .process(&[delivered[0].body.clone()])
            .await;
        assert_eq!(done, [sluice::jobs::processor::Disposition::Done]);
        assert_eq!(
            finished_job(&strict, &key, &id).await["status"],
            "succeeded"
        );
    }
    assert!(
        trap.received().is_empty(),
        "a private callback was delivered"
    );

    // 2. Redirects are never followed, whatever their target: a receiver that answers 301,
    // 302, 303, 307 or 308 to the trap gets the callback (and its retries), the trap gets
    // nothing. Private callbacks are allowed here so the redirecting receiver is reachable
    // at all; with them refused the trap could not be reached anyway.
    let gw = TestGateway::start(&fake_config_with_jobs(&up.base_url, 1)).await;
    let key = gw.create_key("t1").await;
    let statuses = [301u16, 302, 303, 307, 308];
    let mut redirectors = Vec::new();
    for status in statuses {
        let to = format!("http://127.0.0.1:{trap_port}/stolen?from={status}");
        let hook = CallbackReceiver::start_answering(status, &[("location", &to)]).await;
        let r = submit_with_callback(&gw, &key, &hook.url, false).await;
        assert_eq!(r.status(), 202);
        redirectors.push(hook);
    }
    for hook in &redirectors {
        hook.wait_for(1).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        trap.received().is_empty(),
        "a redirect was followed: {:?}",
        trap.received()
    );
    let mut attempts = 0;
    for hook in &redirectors {
        // A redirect is not a success, so the sender tries three times, then gives up.
        attempts += hook.wait_for(3).await.len();
    }
    assert!(trap.received().is_empty(), "a retry followed a redirect");
    println!(
        "security: callbacks at delivery: {} jobs whose URL turned private delivered nothing; \
         {} redirect statuses, {attempts} delivery attempts answered with a redirect to \
         127.0.0.1, 0 requests reached it",
        late_urls.len(),
        statuses.len()
    );
}
