//! HTTP Digest as Cloud Manager does it: the simulator checks every hash, nonce and count.

use std::sync::atomic::Ordering;

use linkwatch::outcome::FailureClass;
use linkwatch::simulator::Behavior;

use crate::helpers::*;

#[tokio::test]
async fn nonce_reuse_keeps_checks_at_about_one_request() {
    let t = spawn_app().await;
    for _ in 0..20 {
        assert_eq!(t.check(ORG_A).await.outcome, Ok("NOT_SYNCED".into()));
    }
    let requests = t.sim.requests();
    assert!(requests <= 22, "20 checks cost {requests} requests");
    assert_eq!(t.sim.counters().authorized.load(Ordering::SeqCst), 20);
    assert_eq!(t.sim.counters().challenges.load(Ordering::SeqCst), 1);
    // linkwatch counts the same requests the server saw.
    let (outcome, counted) = t.check_counted(ORG_A).await;
    assert!(outcome.is_ok());
    assert_eq!((counted, t.sim.requests()), (1, requests + 1));
}

#[tokio::test]
async fn a_stale_nonce_is_recovered_within_the_check() {
    let t = spawn_app().await;
    t.check(ORG_A).await;
    t.sim.expire_nonces();
    let before = t.sim.requests();
    let (outcome, counted) = t.check_counted(ORG_A).await;
    assert_eq!(outcome, Ok("NOT_SYNCED".into()));
    assert_eq!(
        counted,
        t.sim.requests() - before,
        "linkwatch's count matches the server's"
    );
    assert_eq!(t.sim.counters().stale.load(Ordering::SeqCst), 1);
    assert!(t.sim.requests() - before <= 3);
    let current = t.app.store.current().await.unwrap();
    assert!(current.iter().all(|c| c.consecutive_failures == 0));
    // The new nonce is reused again afterwards.
    let before = t.sim.requests();
    t.check(ORG_A).await;
    assert_eq!(t.sim.requests() - before, 1);
}

#[tokio::test]
async fn a_wrong_key_fails_as_unauthorized() {
    let t = spawn_app_with(Setup {
        credential: format!("public_key = \"{PUBLIC_KEY}\"\nprivate_key = \"not-the-key\""),
        ..Setup::default()
    })
    .await;
    let failure = t.check(ORG_A).await.outcome.unwrap_err();
    assert_eq!(failure.class, FailureClass::Unauthorized);
    assert_eq!(failure.http_status, Some(401));
    assert_eq!(t.sim.counters().authorized.load(Ordering::SeqCst), 0);
    // The message says what to do, and never shows the key.
    let last_error = t.app.store.current().await.unwrap()[0].last_error.clone().unwrap();
    assert!(last_error.contains("Organization Owner"), "{last_error}");
    assert!(!last_error.contains("not-the-key"));
}

#[tokio::test]
async fn concurrent_checks_on_one_credential_all_succeed() {
    let t = spawn_app().await;
    t.sim.set(ORG_B, Behavior::status("SYNCED"));
    for _ in 0..10 {
        let (a, b) = tokio::join!(t.check(ORG_A), t.check(ORG_B));
        assert_eq!(a.outcome, Ok("NOT_SYNCED".to_owned()));
        assert_eq!(b.outcome, Ok("SYNCED".to_owned()));
    }
    // The session is shared and reused: about one request per check, not a challenge each.
    let requests = t.sim.requests();
    assert!(requests < 30, "{requests} requests for 20 checks");
}
