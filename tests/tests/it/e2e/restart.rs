//! The SQLite file outlives the process: keys and cache entries survive a restart, and keys are
//! stored only as hashes.

use sluice_tests::{FakeUpstream, TestGateway, fake_config};

use crate::e2e::header;

#[tokio::test]
async fn keys_and_cache_survive_a_restart_and_secrets_are_not_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("sluice.db");
    let db = db.to_str().unwrap();
    let up = FakeUpstream::start().await;
    let config = fake_config(&up.base_url);

    let gw = TestGateway::start_with_db(&config, db).await;
    let key = gw.create_key("t1").await;
    let r = gw.chat(&key, "gpt-test", "remember me").await;
    assert_eq!(header(&r, "x-sluice-cache"), "miss");
    drop(gw);

    let gw = TestGateway::start_with_db(&config, db).await;
    let r = gw.chat(&key, "gpt-test", "remember me").await;
    assert_eq!(r.status(), 200, "the key must survive a restart");
    assert_eq!(
        header(&r, "x-sluice-cache"),
        "hit",
        "the cache must survive a restart"
    );
    assert_eq!(up.calls(), 1);
    drop(gw);

    // Read every byte SQLite wrote: the secret must not be there, its hash must.
    let mut bytes = Vec::new();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        bytes.extend(std::fs::read(entry.unwrap().path()).unwrap());
    }
    let contains = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    assert!(
        !contains(key.as_bytes()),
        "the secret key is stored in clear"
    );
    let hash = sluice::keys::KeyHash::of(&key).to_hex();
    assert!(contains(hash.as_bytes()), "the key's hash should be stored");
}
