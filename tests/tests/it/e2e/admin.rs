//! The admin API: guarded by the admin key; keys are shown once and stored only as hashes.

use serde_json::json;
use sluice_tests::{FakeUpstream, TestGateway, fake_config, gateway::ADMIN_KEY};

use crate::e2e::{assert_error, json};

#[tokio::test]
async fn admin_routes_need_the_admin_key() {
    let gw = TestGateway::start_builtin().await;
    let user_key = gw.create_key("t1").await;
    let url = format!("{}/admin/keys", gw.url);
    let r = gw.http.get(&url).send().await.unwrap();
    assert_error(r, 401, "missing_api_key").await;
    let r = gw
        .http
        .get(&url)
        .bearer_auth(&user_key)
        .send()
        .await
        .unwrap();
    assert_error(r, 403, "admin_key_required").await;
    let r = gw
        .http
        .post(&url)
        .bearer_auth(&user_key)
        .json(&json!({"tenant": "evil"}))
        .send()
        .await
        .unwrap();
    assert_error(r, 403, "admin_key_required").await;
    let r = gw
        .http
        .delete(format!("{url}/key_x"))
        .bearer_auth("sk-sluice-nope")
        .send()
        .await
        .unwrap();
    assert_error(r, 403, "admin_key_required").await;
    // And the admin key is not a gateway key.
    let r = gw.chat(ADMIN_KEY, "gpt-4o-mini", "hi").await;
    assert_error(r, 401, "invalid_api_key").await;
}

#[tokio::test]
async fn create_list_and_revoke() {
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(&fake_config(&up.base_url)).await;
    let created = gw
        .admin_create(json!({"tenant": "t1", "rpm": 10, "budget_usd": 0.5, "period": "day"}))
        .await;
    let secret = created["key"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("sk-sluice-"));
    assert_eq!(created["tenant"], "t1");
    assert_eq!(created["rpm"], 10);
    assert_eq!(created["budget_usd"], 0.5);
    assert_eq!(created["period"], "day");

    let r = gw.chat(&secret, "gpt-test", "hi").await;
    assert_eq!(r.status(), 200);

    let url = format!("{}/admin/keys", gw.url);
    let listed = json(
        gw.http
            .get(&url)
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .unwrap(),
    )
    .await;
    let text = listed.to_string();
    assert!(
        !text.contains(&secret),
        "a listing must never contain a secret"
    );
    let entry = &listed["data"].as_array().unwrap()[0];
    assert_eq!(entry["id"], id);
    assert_eq!(entry["revoked_at"], serde_json::Value::Null);
    assert!(entry.get("key").is_none());

    let r = gw
        .http
        .delete(format!("{url}/{id}"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(json(r).await["revoked"], true);
    let r = gw.chat(&secret, "gpt-test", "hi again").await;
    assert_error(r, 401, "invalid_api_key").await;
    let r = gw
        .http
        .delete(format!("{url}/{id}"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_error(r, 404, "key_not_found").await;
    let listed = json(
        gw.http
            .get(&url)
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(listed["data"][0]["revoked_at"].is_u64());
}

#[tokio::test]
async fn bad_key_specs_get_400() {
    let gw = TestGateway::start_builtin().await;
    let url = format!("{}/admin/keys", gw.url);
    for spec in [
        json!({}),
        json!({"tenant": ""}),
        json!({"tenant": "t", "budget_usd": 1.0}),
        json!({"tenant": "t", "budget_usd": -1.0, "period": "day"}),
        json!({"tenant": "t", "period": "week", "budget_usd": 1.0}),
        json!({"tenant": "t", "rpm": 0}),
        json!({"tenant": "t", "rpm": "ten"}),
        json!({"tenant": "t", "surprise": true}),
    ] {
        let r = gw
            .http
            .post(&url)
            .bearer_auth(ADMIN_KEY)
            .json(&spec)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{spec}");
        let body = json(r).await;
        assert_eq!(body["error"]["type"], "invalid_request_error", "{spec}");
    }
}
