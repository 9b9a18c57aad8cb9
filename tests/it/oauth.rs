//! OAuth service accounts: one token reused until it expires, refreshed once on a 401.

use std::sync::atomic::Ordering;

use linkwatch::outcome::FailureClass;
use linkwatch::simulator::TokenBehavior;

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

/// Runs `n` client-only checks of alpha at once, as many orgs sharing one service account would
/// when their slots fall together, and returns their outcomes.
async fn concurrent_checks(t: &TestApp, n: usize) -> Vec<linkwatch::outcome::CheckOutcome> {
    let mut checks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let app = t.app.clone();
        checks.spawn(async move {
            let org = linkwatch::config::OrgId::parse(ORG_A).unwrap();
            app.checker
                .client
                .check_counted(&org, &app.config.orgs[0].endpoint, &app.config.credentials[0])
                .await
                .0
        });
    }
    checks.join_all().await
}

fn token_requests(t: &TestApp) -> u64 {
    t.sim.counters().token_requests.load(Ordering::SeqCst)
}

#[tokio::test]
async fn a_huge_expires_in_neither_panics_nor_breaks_the_next_check() {
    let t = spawn_app_with(service_account(CLIENT_SECRET)).await;
    t.sim.add_service_account(CLIENT_ID, CLIENT_SECRET);
    t.sim.set_token_behavior(TokenBehavior::Grant {
        expires_in: Some(u64::MAX.into()),
    });
    assert_eq!(t.check(ORG_A).await.outcome, Ok("NOT_SYNCED".into()));
    assert_eq!(t.check(ORG_A).await.outcome, Ok("NOT_SYNCED".into()));
    assert_eq!(token_requests(&t), 1, "the token is reused");
    // A token that claims to live forever is still renewed when it is refused.
    t.sim.revoke_tokens();
    assert_eq!(t.check(ORG_A).await.outcome, Ok("NOT_SYNCED".into()));
    assert_eq!(token_requests(&t), 2);
}

#[tokio::test]
async fn many_checks_after_expiry_make_one_token_request() {
    let t = spawn_app_with(service_account(CLIENT_SECRET)).await;
    t.sim.add_service_account(CLIENT_ID, CLIENT_SECRET);
    // The first token says it lives a microsecond, so every check after this one (each takes an
    // HTTP round trip, far longer) finds it due for renewal.
    t.sim.set_token_behavior(TokenBehavior::Grant {
        expires_in: Some(1e-6.into()),
    });
    assert_eq!(t.check(ORG_A).await.outcome, Ok("NOT_SYNCED".into()));
    assert_eq!(token_requests(&t), 1);
    t.sim.set_token_behavior(TokenBehavior::default());
    for outcome in concurrent_checks(&t, 10).await {
        assert_eq!(outcome, Ok("NOT_SYNCED".into()));
    }
    assert_eq!(token_requests(&t), 2, "ten checks after expiry, one token request");
}

#[tokio::test]
async fn many_checks_refused_with_one_revoked_token_renew_it_once() {
    let t = spawn_app_with(service_account(CLIENT_SECRET)).await;
    t.sim.add_service_account(CLIENT_ID, CLIENT_SECRET);
    assert_eq!(t.check(ORG_A).await.outcome, Ok("NOT_SYNCED".into()));
    t.sim.revoke_tokens();
    // Every check sends the revoked token and gets 401; the first to renew it wins, the others
    // reuse the new token instead of minting one each.
    for outcome in concurrent_checks(&t, 10).await {
        assert_eq!(outcome, Ok("NOT_SYNCED".into()));
    }
    assert_eq!(token_requests(&t), 2, "ten 401s with one token, one renewal");
}

#[tokio::test]
async fn a_refusing_token_endpoint_is_backed_off_then_recovers() {
    let refusals = [
        (TokenBehavior::refuse(401, "invalid_client"), FailureClass::Unauthorized),
        (TokenBehavior::refuse(400, "invalid_client"), FailureClass::Unauthorized),
        (
            TokenBehavior::Refuse {
                http: 429,
                error: "rate_limited".into(),
                retry_after: Some("1".into()),
            },
            FailureClass::RateLimited,
        ),
        (
            TokenBehavior::refuse(503, "temporarily_unavailable"),
            FailureClass::ServerError,
        ),
    ];
    for (refusal, class) in refusals {
        let t = spawn_app_with(service_account(CLIENT_SECRET)).await;
        t.sim.add_service_account(CLIENT_ID, CLIENT_SECRET);
        t.sim.set_token_behavior(refusal.clone());
        for _ in 0..10 {
            let failure = t.check(ORG_A).await.outcome.unwrap_err();
            assert_eq!(failure.class, class, "{refusal:?}: {failure:?}");
        }
        // The backoff starts at a second; ten checks in a row fit in it on any machine that
        // runs this test, and a slow one may see the second attempt.
        let asked = token_requests(&t);
        assert!(
            (1..=2).contains(&asked),
            "{refusal:?}: 10 checks made {asked} token requests"
        );
        assert_eq!(t.sim.requests(), 0, "no status request without a token");

        t.sim.set_token_behavior(TokenBehavior::default());
        wait_until(std::time::Duration::from_secs(10), "a check with a token", || async {
            t.check(ORG_A).await.outcome.is_ok()
        })
        .await;
        assert!(
            token_requests(&t) <= asked + 1,
            "{refusal:?}: one request after the backoff"
        );
        t.sim.stop().await;
    }
}

#[tokio::test]
async fn an_unreachable_token_endpoint_is_backed_off() {
    // A listener that accepts connections and closes them at once: a connection error, counted.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = accepted.clone();
    let door = tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            drop(socket);
        }
    });
    let mut setup = service_account(CLIENT_SECRET);
    setup.credential += &format!("\ntoken_url = \"http://127.0.0.1:{port}/api/oauth/token\"");
    let t = spawn_app_with(setup).await;
    for _ in 0..10 {
        let failure = t.check(ORG_A).await.outcome.unwrap_err();
        assert_eq!(failure.class, FailureClass::Connection, "{failure:?}");
    }
    let tried = accepted.load(Ordering::SeqCst);
    assert!((1..=2).contains(&tried), "10 checks made {tried} connections");
    door.abort();
}

#[tokio::test]
async fn an_org_the_account_cannot_reach_costs_no_token_per_check_and_spares_the_others() {
    let t = spawn_app_with(service_account(CLIENT_SECRET)).await;
    t.sim.add_service_account(CLIENT_ID, CLIENT_SECRET);
    // The service account has no access to alpha: Cloud Manager answers 401 to any token.
    t.sim.deny_tokens(ORG_A);
    for _ in 0..20 {
        let failure = t.check(ORG_A).await.outcome.unwrap_err();
        assert_eq!(failure.class, FailureClass::Unauthorized, "{failure:?}");
        assert!(
            failure.explain().contains("no access to this org"),
            "{}",
            failure.explain()
        );
        assert_eq!(t.check(ORG_B).await.outcome, Ok("SYNCED".into()));
    }
    // The first token, and one renewal that shows a fresh token does not help.
    let asked = token_requests(&t);
    assert!(asked <= 2, "40 checks made {asked} token requests");
    // Alpha's refusals did not stop a revoked token from being renewed for beta.
    t.sim.revoke_tokens();
    assert_eq!(t.check(ORG_B).await.outcome, Ok("SYNCED".into()));
    assert_eq!(token_requests(&t), asked + 1);
}

/// Each unreachable org renews the token once to learn that it lacks access; that is remembered
/// for the service account, not for the token, so the next org's renewal does not make the
/// first one ask again.
#[tokio::test]
async fn several_orgs_the_account_cannot_reach_cost_no_token_per_check() {
    let t = spawn_app_with(service_account(CLIENT_SECRET)).await;
    t.sim.add_service_account(CLIENT_ID, CLIENT_SECRET);
    t.sim.deny_tokens(ORG_A);
    t.sim.deny_tokens(ORG_B);
    for _ in 0..10 {
        for org in [ORG_A, ORG_B] {
            let failure = t.check(org).await.outcome.unwrap_err();
            assert_eq!(failure.class, FailureClass::Unauthorized, "{failure:?}");
        }
    }
    // The first token, and one renewal per org that shows a fresh token does not help.
    let asked = token_requests(&t);
    assert_eq!(
        asked, 3,
        "20 checks of two unreachable orgs made {asked} token requests"
    );
}

#[tokio::test]
async fn a_refused_renewal_keeps_the_token_for_the_orgs_it_works_for() {
    let t = spawn_app_with(service_account(CLIENT_SECRET)).await;
    t.sim.add_service_account(CLIENT_ID, CLIENT_SECRET);
    assert_eq!(t.check(ORG_B).await.outcome, Ok("SYNCED".into()));
    // Alpha now refuses the token, and the token endpoint refuses to renew it for a minute.
    t.sim.deny_tokens(ORG_A);
    t.sim.set_token_behavior(TokenBehavior::Refuse {
        http: 429,
        error: "rate_limited".into(),
        retry_after: Some("60".into()),
    });
    assert!(t.check(ORG_A).await.outcome.is_err());
    for _ in 0..10 {
        assert_eq!(t.check(ORG_B).await.outcome, Ok("SYNCED".into()));
        assert!(t.check(ORG_A).await.outcome.is_err());
    }
    let asked = token_requests(&t);
    assert!(asked <= 2, "{asked} token requests during the backoff");
}

#[tokio::test]
async fn a_non_positive_expires_in_does_not_cost_a_token_per_check() {
    for expires_in in [serde_json::json!(0), serde_json::json!(-5), serde_json::json!("0")] {
        let t = spawn_app_with(service_account(CLIENT_SECRET)).await;
        t.sim.add_service_account(CLIENT_ID, CLIENT_SECRET);
        t.sim.set_token_behavior(TokenBehavior::Grant {
            expires_in: Some(expires_in.clone()),
        });
        for _ in 0..10 {
            assert_eq!(t.check(ORG_A).await.outcome, Ok("NOT_SYNCED".into()));
        }
        assert_eq!(token_requests(&t), 1, "expires_in {expires_in}: the token is reused");
        t.sim.stop().await;
    }
}
