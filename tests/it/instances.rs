//! Several customers in one daemon: each org and each live migration asked at its own instance
//! with its own key, sessions never shared, one instance down touching only its orgs.

use linkwatch::outcome::FailureClass;
use linkwatch::simulator::{Behavior, LiveMigrationBehavior, Simulator, Tuning};

use crate::helpers::*;

const ORG_C: &str = "5f0c00000000000000000c03";
const MIGRATION_C: &str = "6f1d00000000000000000d03";
const GLOBEX_PUBLIC: &str = "globex-public";
const GLOBEX_PRIVATE: &str = "globex-private-key-89";
const GLOBEX_ATLAS_PUBLIC: &str = "globex-atlas-public";
const GLOBEX_ATLAS_PRIVATE: &str = "globex-atlas-private-12";

#[tokio::test]
async fn two_customers_are_each_asked_at_their_own_instance_with_their_own_keys() {
    // Globex runs its own Ops Manager (and owns its own Atlas organization): a second server
    // that knows only Globex's keys and org; the default one knows neither.
    let globex = Simulator::start(([127, 0, 0, 1], 0).into(), Tuning::default())
        .await
        .unwrap();
    globex.add_api_key(GLOBEX_PUBLIC, GLOBEX_PRIVATE);
    globex.add_api_key(GLOBEX_ATLAS_PUBLIC, GLOBEX_ATLAS_PRIVATE);
    globex.set(ORG_C, Behavior::status("SYNCED"));
    globex.set_live_migration(MIGRATION_C, LiveMigrationBehavior::state("WORKING", false, Some(30)));
    let port = free_port();
    let tables = format!(
        "[[credentials]]\nname = \"globex\"\nbase_url = \"{}\"\npublic_key = \"{GLOBEX_PUBLIC}\"\nprivate_key = \"{GLOBEX_PRIVATE}\"\n\n\
         [[credentials]]\nname = \"globex-atlas\"\nbase_url = \"{}\"\npublic_key = \"{GLOBEX_ATLAS_PUBLIC}\"\nprivate_key = \"{GLOBEX_ATLAS_PRIVATE}\"\n\n\
         [[org]]\nid = \"{ORG_C}\"\nname = \"gamma\"\ncredentials = \"globex\"\n\n\
         [[channel]]\nname = \"console\"\nkind = \"console\"\n",
        globex.base_url(),
        globex.atlas_base_url()
    );
    let (_, first) = one_live_migration().unwrap();
    let migrations = format!(
        "{first}\n[[migration]]\nname = \"gamma-rs\"\norg = \"gamma\"\ngroup_id = \"{GROUP}\"\nid = \"{MIGRATION_C}\"\ncredentials = \"globex-atlas\"\n"
    );
    let t = spawn_app_with(Setup {
        channels: tables,
        atlas: Some((String::new(), migrations)),
        top: http_listen(port),
        ..Setup::default()
    })
    .await;
    t.sim
        .set_live_migration(MIGRATION_A, LiveMigrationBehavior::state("WORKING", false, Some(5)));

    assert_eq!(t.check(ORG_A).await.outcome, Ok("NOT_SYNCED".into()));
    assert_eq!(t.check(ORG_C).await.outcome, Ok("SYNCED".into()));
    assert_eq!(globex.requests_for(ORG_C), 1);
    assert_eq!(t.sim.requests_for(ORG_C), 0, "gamma was asked at the default instance");
    assert_eq!(globex.requests_for(ORG_A), 0, "alpha was asked at Globex's instance");
    let ours = t.check_live_migration("payments-rs0").await;
    let theirs = t.check_live_migration("gamma-rs").await;
    assert_eq!(ours.outcome.map(|r| r.status), Ok("WORKING".into()));
    assert_eq!(theirs.outcome.map(|r| r.status), Ok("WORKING".into()));
    assert_eq!(t.sim.live_migration_requests(), 1);
    assert_eq!(globex.live_migration_requests(), 1);

    // `check` says where and with which key each is asked.
    let out = linkwatch()
        .arg("check")
        .arg("--config")
        .arg(&t.config_path)
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let line = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_default()
            .to_owned()
    };
    assert!(line("gamma ").contains(&globex.base_url()), "{text}");
    assert!(line("gamma ").contains("api key globex-public"), "{text}");
    assert!(line("alpha ").contains(&t.sim.base_url()), "{text}");
    assert!(line("gamma-rs ").contains(&globex.atlas_base_url()), "{text}");
    assert!(line("gamma-rs ").contains("api key globex-atlas-public"), "{text}");
    assert!(!text.contains(GLOBEX_PRIVATE), "{text}");

    // Globex's instance goes away: only gamma fails; alpha is asked as before.
    let globex_url = globex.base_url();
    globex.stop().await;
    let failed = t.check(ORG_C).await.outcome.unwrap_err();
    assert_eq!(failed.class, FailureClass::Connection, "{failed:?}");
    assert_eq!(t.check(ORG_A).await.outcome, Ok("NOT_SYNCED".into()));
    // /metrics (served by the running daemon) tells the instances apart.
    let running = t.run();
    let url = format!("http://127.0.0.1:{port}/metrics");
    let gamma = || async {
        let text = reqwest::get(&url).await.ok()?.text().await.ok()?;
        text.lines()
            .find(|l| l.starts_with("linkwatch_org_status{") && l.contains("org_name=\"gamma\""))
            .map(str::to_owned)
    };
    wait_until(std::time::Duration::from_secs(20), "metrics served", || async {
        gamma().await.is_some()
    })
    .await;
    let line = gamma().await.unwrap();
    assert!(line.contains(&format!("instance_url=\"{globex_url}\"")), "{line}");
    // The JSON API (and the page's instance filter) name each org's instance too.
    let status: serde_json::Value =
        reqwest::get(format!("http://127.0.0.1:{port}/api/v1/status?instance={globex_url}"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    let orgs = status["orgs"].as_array().unwrap();
    assert_eq!(orgs.len(), 1, "{status}");
    assert_eq!(orgs[0]["name"], "gamma");
    assert_eq!(orgs[0]["instance"], globex_url.as_str());
    // Its deep link goes to its own Ops Manager's console, not the default one.
    let origin = globex_url.trim_end_matches("/api/public/v1.0");
    assert_eq!(
        orgs[0]["console_url"],
        format!("{origin}/v2#/org/{ORG_C}/projects").as_str(),
        "{status}"
    );
    running.stop(std::time::Duration::from_secs(20)).await;
}

/// A wrong `token_url` answers 404: that is the token endpoint's failure, not "the org has no
/// migration link".
#[tokio::test]
async fn a_wrong_token_url_reads_as_a_token_failure_not_a_missing_link() {
    let setup = Setup {
        credential: "client_id = \"mdb_sa_id_0123456789\"\nclient_secret = \"mdb_sa_sk_secret\"".into(),
        ..Setup::default()
    };
    let t = spawn_app_with(setup).await;
    t.sim.add_service_account("mdb_sa_id_0123456789", "mdb_sa_sk_secret");
    let wrong = format!("{}/oauth/tokens", t.sim.base_url());
    let text = std::fs::read_to_string(&t.config_path).unwrap().replace(
        "[cloud_manager]\n",
        &format!("[cloud_manager]\ntoken_url = \"{wrong}\"\n"),
    );
    std::fs::write(&t.config_path, text).unwrap();
    let out = linkwatch()
        .args(["check", "--online", "--config"])
        .arg(&t.config_path)
        .output()
        .await
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("the OAuth token endpoint issued no token"), "{said}");
    assert!(said.contains(&wrong), "{said}");
    assert!(!said.contains("no migration link"), "{said}");
}
