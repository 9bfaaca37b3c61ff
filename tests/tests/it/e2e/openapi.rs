//! `GET /openapi.json`: the OpenAPI 3.1 document, without a key, for every route, and the
//! answers it describes. (infra/api/schemathesis.sh checks the answers against it in depth.)

use sluice_tests::TestGateway;

use crate::e2e::json;

#[tokio::test]
async fn the_document_is_served_without_a_key_and_lists_every_route() {
    let gw = TestGateway::start_builtin().await;
    let r = gw
        .http
        .get(format!("{}/openapi.json", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    let doc = json(r).await;
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    let operations: usize = paths.values().map(|p| p.as_object().unwrap().len()).sum();
    assert_eq!((paths.len(), operations), (15, 16));
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    // An error as served has the documented shape.
    let r = gw
        .http
        .get(format!("{}/v1/models", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let error = json(r).await;
    let schema = &doc["components"]["schemas"]["ErrorResponse"]["properties"]["error"]["oneOf"][0];
    for field in schema["required"].as_array().unwrap() {
        let field = field.as_str().unwrap();
        assert!(error["error"].get(field).is_some(), "{field} in {error}");
    }
}
