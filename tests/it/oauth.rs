//! OAuth service accounts: one token reused until it expires, refreshed once on a 401.

use std::sync::atomic::Ordering;

use linkwatch::outcome::FailureClass;

use crate::helpers::*;

const CLIENT_ID: &str = "mdb_sa_id_0123456789";
const CLIENT_SECRET: &str = "mdb_sa_sk_secret";

fn service_account(secret: &str) -> Setup {
    Setup {
        credential: format!("client_id = \"{CLIENT_ID}\"\nclient_secret = \"{secret}\""),
        ..Setup::default()
    }
}

#[tokio::test]
async fn one_token_serves_many_checks_and_is_renewed_when_revoked() {
    let t = spawn_app_with(service_account(CLIENT_SECRET)).await;
    t.sim.add_service_account(CLIENT_ID, CLIENT_SECRET);
    for _ in 0..10 {
        assert_eq!(t.check(ORG_A).await.outcome, Ok("NOT_SYNCED".into()));
    }
    assert_eq!(t.sim.counters().token_requests.load(Ordering::SeqCst), 1);
    assert_eq!(t.sim.requests(), 10);
    t.sim.revoke_tokens();
    assert_eq!(t.check(ORG_A).await.outcome, Ok("NOT_SYNCED".into()));
    assert_eq!(t.sim.counters().token_requests.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_wrong_client_secret_is_unauthorized() {
    let t = spawn_app_with(service_account("mdb_sa_sk_wrong")).await;
    t.sim.add_service_account(CLIENT_ID, CLIENT_SECRET);
    let failure = t.check(ORG_A).await.outcome.unwrap_err();
    assert_eq!(failure.class, FailureClass::Unauthorized);
    assert_eq!(failure.error_code.as_deref(), Some("invalid_client"));
    assert_eq!(t.sim.requests(), 0, "no status request without a token");
}
