use std::path::Path;

use super::*;

const MINIMAL: &str = r#"
[cloud_manager]
public_key = "pub"
private_key = "very-secret-key"

[[org]]
id = "5f0c1234567890abcdef1234"
name = "payments"
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("/etc/linkwatch/test.toml"))
}

/// Parses `text`, expects an error, and returns its (line, column, key, message).
fn error(text: &str) -> (usize, usize, String, String) {
    match parse(text) {
        Err(ConfigError::Invalid {
            file,
            line,
            column,
            key,
            message,
        }) => {
            assert_eq!(file, Path::new("/etc/linkwatch/test.toml"));
            (line, column, key, message)
        }
        Err(e) => panic!("unexpected error: {e}"),
        Ok(_) => panic!("config was accepted:\n{text}"),
    }
}

#[test]
fn the_example_file_parses() {
    // Its secrets are files under ${CREDENTIALS_DIRECTORY}, as systemd's LoadCredential= makes them.
    let credentials = tempfile::tempdir().unwrap();
    for (name, value) in [
        ("cm-key", "example-key"),
        ("slack-url", "https://hooks.slack.com/services/T0/B0/X"),
        ("smtp-password", "smtp"),
        ("webhook-secret", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
        ("atlas-key", "atlas-example-key"),
        ("heartbeat-url", "https://hc-ping.com/0d3c57a1"),
    ] {
        std::fs::write(credentials.path().join(name), value).unwrap();
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/linkwatch.example.toml");
    let options = LoadOptions {
        credentials_dir: Some(credentials.path().to_owned()),
        ..LoadOptions::default()
    };
    let config = Config::load_with(&path, &options).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.orgs.len(), 2);
    assert_eq!(config.orgs[1].schedule, Schedule::Every(Duration::from_secs(30)));
    assert_eq!(config.orgs[0].schedule, Schedule::Every(Duration::from_secs(60)));
    assert_eq!(config.channels[0].kind, ChannelKind::Console);
    let kinds: Vec<&str> = config.channels.iter().map(|c| c.kind.as_str()).collect();
    assert_eq!(kinds, ["console", "slack", "email", "webhook"]);
    assert_eq!(config.routes.len(), 3);
    assert_eq!(config.routes[1].remind_every, Some(Duration::from_secs(4 * 3600)));
    assert_eq!(config.migrations.len(), 1);
    assert_eq!(config.migrations[0].org, config.orgs[0].id);
    assert_eq!(config.reports[0].channels, ["ops", "dba-mail"]);
    assert_eq!(
        config.heartbeat.as_ref().map(|h| h.every),
        Some(Duration::from_secs(60))
    );
    assert_eq!(
        config.database.sqlite_path(),
        Some(Path::new("/var/lib/linkwatch/linkwatch.db"))
    );
}

#[test]
fn the_compose_config_parses_and_matches_the_simulator() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/compose.toml");
    let config = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.orgs.len(), 4);
    assert!(
        matches!(&*config.credentials[0], Credential::ApiKey { public_key, private_key }
        if public_key == crate::demo::SIMULATE_PUBLIC_KEY && private_key.expose() == crate::demo::SIMULATE_PRIVATE_KEY)
    );
    assert_eq!(config.http_listen, Some("0.0.0.0:9187".parse().unwrap()));
}

/// The "ha" profile's config: the compose config on PostgreSQL, with the password the compose
/// file gives both instances.
#[test]
fn the_compose_ha_config_parses_and_differs_only_in_its_database() {
    // SAFETY: no other test reads this variable.
    unsafe { std::env::set_var("LINKWATCH_DATABASE_PASSWORD", "linkwatch-demo") };
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let ha = Config::load(&dir.join("compose-ha.toml")).unwrap_or_else(|e| panic!("{e}"));
    let single = Config::load(&dir.join("compose.toml")).unwrap_or_else(|e| panic!("{e}"));
    let Database::Postgres(target) = &ha.database else {
        panic!("{} is not PostgreSQL", ha.database)
    };
    assert_eq!(target.url().as_str(), "postgres://linkwatch@postgres:5432/linkwatch");
    assert_eq!(target.password.as_ref().map(|p| p.expose()), Some("linkwatch-demo"));
    assert_eq!(ha.leader_lease, Duration::from_secs(15));
    let orgs = |c: &Config| -> Vec<(String, String, Schedule)> {
        c.orgs
            .iter()
            .map(|o| (o.id.to_string(), o.name.clone(), o.schedule.clone()))
            .collect()
    };
    assert_eq!(orgs(&ha), orgs(&single));
    let channels = |c: &Config| -> Vec<String> { c.channels.iter().map(|ch| ch.name.clone()).collect() };
    assert_eq!(channels(&ha), channels(&single));
    assert_eq!(ha.http_listen, single.http_listen);
    assert_eq!(ha.cloud_manager.base_url, single.cloud_manager.base_url);
}

#[test]
fn defaults() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(
        c.cloud_manager.base_url.as_str(),
        "https://cloud.mongodb.com/api/public/v1.0/"
    );
    assert_eq!(
        c.cloud_manager.token_url.as_str(),
        "https://cloud.mongodb.com/api/oauth/token"
    );
    assert_eq!(c.poll.schedule, Schedule::Every(Duration::from_secs(60)));
    assert_eq!(c.poll.timeout, Duration::from_secs(15));
    assert_eq!(c.poll.concurrency, 8);
    assert_eq!(c.poll.failures_before_alert, 3);
    assert_eq!(c.poll.confirm_checks, 1);
    assert_eq!(c.database.sqlite_path(), Some(Path::new(DEFAULT_DATABASE)));
    assert_eq!(c.retention, Duration::from_secs(90 * 86_400));
    assert_eq!(c.shutdown_timeout, Duration::from_secs(10));
    assert_eq!(c.http_listen, None);
    assert_eq!(c.credentials.len(), 1);
}

#[test]
fn malformed_toml_names_line_and_column() {
    let (line, column, _, message) = error("[cloud_manager]\npublic_key = \"unterminated\n");
    // toml points at the end of the line, where the closing quote is missing.
    assert_eq!((line, column), (2, 27));
    assert!(message.contains("string"), "{message}");
}

#[test]
fn unknown_keys_are_rejected_with_their_path() {
    let (line, column, key, message) = error(&format!("{MINIMAL}\n[poll]\nevery = \"1m\"\ninterval = \"5m\"\n"));
    assert_eq!((line, column), (12, 1));
    assert_eq!(key, "poll.interval");
    assert!(message.contains("unknown key `interval`"), "{message}");
    let (_, _, key, message) = error(&format!("{MINIMAL}nmae = \"x\"\n"));
    assert_eq!(key, "org[0].nmae");
    assert!(message.contains("nmae"), "{message}");
}

#[test]
fn org_ids_must_be_24_lowercase_hex() {
    for bad in ["5F0C1234567890ABCDEF1234", "5f0c1234", "5f0c1234567890abcdef123g"] {
        let (line, column, key, message) = error(&MINIMAL.replace("5f0c1234567890abcdef1234", bad));
        assert_eq!((line, column, key.as_str()), (7, 6, "org[0].id"), "{bad}");
        assert!(message.contains("24 lowercase hex"), "{message}");
    }
}

#[test]
fn duplicate_ids_and_names_are_rejected() {
    let dup_id = format!("{MINIMAL}\n[[org]]\nid = \"5f0c1234567890abcdef1234\"\nname = \"other\"\n");
    let (line, _, key, message) = error(&dup_id);
    assert_eq!((line, key.as_str()), (11, "org[1].id"));
    assert!(message.contains("already used by org \"payments\""), "{message}");
    let dup_name = format!("{MINIMAL}\n[[org]]\nid = \"5f0c1234567890abcdef9999\"\nname = \"payments\"\n");
    let (line, _, key, _) = error(&dup_name);
    assert_eq!((line, key.as_str()), (12, "org[1].name"));
}

#[test]
fn durations_and_cron_are_checked() {
    let (line, _, key, message) = error(&format!("{MINIMAL}\n[poll]\nevery = \"5 parsecs\"\n"));
    assert_eq!((line, key.as_str()), (11, "poll.every"));
    assert!(message.contains("invalid duration \"5 parsecs\""), "{message}");
    let (_, _, key, message) = error(&format!("{MINIMAL}\n[poll]\ncron = \"*/5 * * * *\"\n"));
    assert_eq!(key, "poll.cron");
    assert!(message.contains("has 5 fields"), "{message}");
    let (_, _, _, message) = error(&format!("{MINIMAL}\n[poll]\ncron = \"0 */5 * * * nonsense\"\n"));
    assert!(message.contains("invalid cron"), "{message}");
    let (_, _, _, message) = error(&format!("{MINIMAL}\n[poll]\ncron = \"0 * * * * *\"\nevery = \"1m\"\n"));
    assert!(message.contains("not both"), "{message}");
    let c = parse(&format!("{MINIMAL}\n[poll]\ncron = \"0 */5 * * * *\"\n")).unwrap();
    assert!(matches!(c.orgs[0].schedule, Schedule::Cron(_)));
    let (_, _, key, _) = error(&format!("{MINIMAL}\n[poll]\nconcurrency = 0\n"));
    assert_eq!(key, "poll.concurrency");
}

#[test]
fn secret_files_and_variables() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("cm-key");
    std::fs::write(&key_file, "from-a-file\n").unwrap();
    let text = MINIMAL.replace(
        "private_key = \"very-secret-key\"",
        &format!("private_key_file = \"{}\"", key_file.display()),
    );
    let c = parse(&text).unwrap();
    assert_eq!(
        *c.credentials[0],
        Credential::ApiKey {
            public_key: "pub".into(),
            private_key: Secret::new("from-a-file")
        }
    );

    let missing = text.replace("cm-key", "no-such-file");
    let (line, _, key, message) = error(&missing);
    assert_eq!((line, key.as_str()), (4, "cloud_manager.private_key_file"));
    assert!(
        message.contains("cannot read") && message.contains("no-such-file"),
        "{message}"
    );

    let env = MINIMAL.replace(
        "private_key = \"very-secret-key\"",
        "private_key_env = \"LINKWATCH_TEST_UNSET_VARIABLE\"",
    );
    let (_, _, key, message) = error(&env);
    assert_eq!(key, "cloud_manager.private_key_env");
    assert!(
        message.contains("LINKWATCH_TEST_UNSET_VARIABLE is not set"),
        "{message}"
    );

    let both = MINIMAL.replace(
        "private_key = \"very-secret-key\"",
        "private_key = \"a\"\nprivate_key_env = \"B\"",
    );
    assert!(error(&both).3.contains("only one of"));
}

#[test]
fn credentials_directory_is_expanded() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cm-key"), "from-systemd").unwrap();
    // SAFETY: only this test sets CREDENTIALS_DIRECTORY.
    unsafe { std::env::set_var("CREDENTIALS_DIRECTORY", dir.path()) };
    let text = MINIMAL.replace(
        "private_key = \"very-secret-key\"",
        "private_key_file = \"${CREDENTIALS_DIRECTORY}/cm-key\"",
    );
    let c = parse(&text).unwrap();
    assert!(
        matches!(&*c.credentials[0], Credential::ApiKey { private_key, .. } if private_key.expose() == "from-systemd")
    );
}

#[test]
fn credentials_must_be_complete_and_orgs_must_have_one() {
    let (_, _, key, message) = error(&MINIMAL.replace("private_key = \"very-secret-key\"\n", ""));
    assert_eq!(key, "cloud_manager.private_key");
    assert!(message.contains("missing"), "{message}");
    let no_cred = "[[org]]\nid = \"5f0c1234567890abcdef1234\"\nname = \"payments\"\n";
    let (line, _, key, message) = error(no_cred);
    assert_eq!((line, key.as_str()), (2, "org[0]"));
    assert!(message.contains("no credential"), "{message}");
    let (_, _, _, message) =
        error(&MINIMAL.replace("public_key = \"pub\"", "public_key = \"pub\"\nclient_id = \"sa\""));
    assert!(message.contains("not both"), "{message}");
}

#[test]
fn orgs_share_a_credential_and_may_override_it() {
    let text = format!(
        "{MINIMAL}\n[[org]]\nid = \"5f0c1234567890abcdef5678\"\nname = \"b\"\n\
         [[org]]\nid = \"5f0c1234567890abcdef9999\"\nname = \"c\"\nclient_id = \"mdb_sa_id_1\"\nclient_secret = \"mdb_sa_sk_x\"\n"
    );
    let c = parse(&text).unwrap();
    assert_eq!(c.credentials.len(), 2);
    assert!(Arc::ptr_eq(&c.orgs[0].credential, &c.orgs[1].credential));
    assert!(
        matches!(&*c.orgs[2].credential, Credential::ServiceAccount { client_id, .. } if client_id == "mdb_sa_id_1")
    );
}

#[test]
fn secrets_never_reach_debug_output() {
    let c = parse(MINIMAL).unwrap();
    let debug = format!("{c:?}");
    assert!(!debug.contains("very-secret-key"), "{debug}");
    assert!(debug.contains("[redacted]"));
}

#[test]
fn errors_render_as_file_line_column_key() {
    let e = parse(&MINIMAL.replace("5f0c1234567890abcdef1234", "nope")).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("/etc/linkwatch/test.toml:7:6: org[0].id: \"nope\" is not an org id"),
        "{e}"
    );
}

const SLACK: &str = "\n[[channel]]\nname = \"ops\"\nkind = \"slack\"\nwebhook_url = \"https://hooks.slack.com/services/T0/B0/SECRETPART\"\n";

#[test]
fn channels_of_every_kind() {
    let text = format!(
        "{MINIMAL}{SLACK}\n[[channel]]\nname = \"mail\"\nkind = \"email\"\nsmtp_url = \"smtp://mail.example.com:587?tls=required\"\n\
         username = \"linkwatch\"\npassword = \"smtp-secret\"\nfrom = \"linkwatch <lw@example.com>\"\nto = [\"dba@example.com\"]\n\
         \n[[channel]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"https://automation.example.com/lw\"\nsecret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n"
    );
    let c = parse(&text).unwrap();
    let kinds: Vec<&str> = c.channels.iter().map(|c| c.kind.as_str()).collect();
    assert_eq!(kinds, ["slack", "email", "webhook"]);
    assert!(matches!(&c.channels[1].kind, ChannelKind::Email(e) if e.to == ["dba@example.com"]));
    let debug = format!("{c:?}");
    for secret in ["SECRETPART", "smtp-secret", "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"] {
        assert!(!debug.contains(secret), "{secret} in {debug}");
    }
}

#[test]
fn channel_keys_of_another_kind_are_rejected() {
    let text = format!("{MINIMAL}{SLACK}url = \"https://x.example.com\"\n");
    let (line, _, key, message) = error(&text);
    assert_eq!((line, key.as_str()), (14, "channel[0].url"));
    assert!(message.contains("not a setting of a slack channel"), "{message}");
    let (_, _, key, _) = error(&format!("{MINIMAL}\n[[channel]]\nname = \"x\"\nkind = \"pager\"\n"));
    assert_eq!(key, "channel[0].kind");
}

#[test]
fn bad_channel_values_are_reported_without_secrets() {
    let (_, _, key, message) = error(&format!(
        "{MINIMAL}\n[[channel]]\nname = \"x\"\nkind = \"slack\"\nwebhook_url = \"not a url SECRET\"\n"
    ));
    assert_eq!(key, "channel[0].webhook_url");
    assert!(!message.contains("SECRET"), "{message}");
    let email = |extra: &str| {
        format!(
            "{MINIMAL}\n[[channel]]\nname = \"m\"\nkind = \"email\"\nsmtp_url = \"smtp://h\"\nfrom = \"a@example.com\"\n{extra}"
        )
    };
    assert!(error(&email("to = []\n")).3.contains("at least one address"));
    assert!(error(&email("")).3.contains("needs `to`"));
    let (_, _, key, message) = error(&email("to = [\"not an address\"]\n"));
    assert_eq!(key, "channel[0].to");
    assert!(message.contains("not an email address"), "{message}");
    let (_, _, key, _) = error(&email("to = [\"a@example.com\"]\nusername = \"u\"\n"));
    assert_eq!(key, "channel[0].username");
    let (_, _, _, message) = error(&format!(
        "{MINIMAL}\n[[channel]]\nname = \"h\"\nkind = \"webhook\"\nurl = \"https://x.example.com\"\nsecret = \"whsec_!!!\"\n"
    ));
    assert!(message.contains("base64"), "{message}");
}

#[test]
fn slack_webhooks_need_https_except_on_loopback() {
    let slack =
        |url: &str| format!("{MINIMAL}\n[[channel]]\nname = \"ops\"\nkind = \"slack\"\nwebhook_url = \"{url}\"\n");
    let (line, column, key, message) = error(&slack("http://hooks.slack.com/services/T0/B0/SECRETPART"));
    assert_eq!((line, column, key.as_str()), (13, 15, "channel[0].webhook_url"));
    assert!(message.contains("https://"), "{message}");
    assert!(!message.contains("SECRETPART"), "{message}");
    for url in [
        "https://hooks.slack.com/services/T0/B0/X",
        "http://127.0.0.1:8080/hook",
        "http://127.1.2.3/hook",
        "http://localhost:9000/hook",
        "http://[::1]:9000/hook",
    ] {
        parse(&slack(url)).unwrap_or_else(|e| panic!("{url}: {e}"));
    }
}

#[test]
fn smtp_logins_need_tls_except_on_loopback() {
    let email = |url: &str, login: &str| {
        format!(
            "{MINIMAL}\n[[channel]]\nname = \"m\"\nkind = \"email\"\nsmtp_url = \"{url}\"\n{login}\
             from = \"a@example.com\"\nto = [\"b@example.com\"]\n"
        )
    };
    let login = "username = \"u\"\npassword = \"hunter2\"\n";
    for (url, login) in [
        ("smtp://mail.example.com:587", login),
        ("smtp://mail.example.com:587?tls=opportunistic", login),
        ("smtp://u:hunter2@mail.example.com:587", ""),
    ] {
        let (line, _, key, message) = error(&email(url, login));
        assert_eq!((line, key.as_str()), (13, "channel[0].smtp_url"), "{url}");
        assert!(message.contains("tls=required"), "{message}");
        assert!(!message.contains("hunter2"), "{message}");
    }
    for (url, login) in [
        ("smtp://mail.example.com:587?tls=required", login),
        ("smtps://mail.example.com", login),
        ("smtp://mail.example.com:25", ""),
        ("smtp://127.0.0.1:2525", login),
        ("smtp://localhost:25?tls=opportunistic", login),
        ("smtp://u:p@[::1]:25", ""),
    ] {
        parse(&email(url, login)).unwrap_or_else(|e| panic!("{url}: {e}"));
    }
}

#[test]
fn routes_are_checked_against_channels_and_orgs() {
    let route = |body: &str| format!("{MINIMAL}{SLACK}\n[[route]]\n{body}\n");
    let c = parse(&route("channels = [\"ops\"]\nevents = [\"status_changed\"]\nto = [\"SYNCED\"]\norgs = [\"payments\"]\nremind_every = \"4h\"")).unwrap();
    assert_eq!(
        c.routes[0].orgs.as_ref().unwrap()[0].as_str(),
        "5f0c1234567890abcdef1234"
    );
    assert_eq!(c.routes[0].remind_every, Some(Duration::from_secs(4 * 3600)));

    let (line, _, key, message) = error(&route("channels = [\"ops\", \"pager\"]"));
    assert_eq!((line, key.as_str()), (16, "route[0].channels"));
    assert!(message.contains("no channel is named \"pager\""), "{message}");
    let (_, _, key, message) = error(&route("channels = [\"ops\"]\norgs = [\"billing\"]"));
    assert_eq!(key, "route[0].orgs");
    assert!(message.contains("could never match"), "{message}");
    let (_, _, key, message) = error(&route(
        "channels = [\"ops\"]\nevents = [\"check_failing\"]\nto = [\"SYNCED\"]",
    ));
    assert_eq!(key, "route[0].to");
    assert!(message.contains("can never match"), "{message}");
    let (_, _, key, _) = error(&route("channels = [\"ops\"]\nevents = [\"status_chagned\"]"));
    assert_eq!(key, "route[0].events[0]");
    assert!(error(&route("channels = []")).3.contains("names no channel"));
    assert!(
        error(&route("channels = [\"ops\"]\nremind_every = \"10s\""))
            .3
            .contains("at least 1m")
    );
    assert!(
        error(&route(
            "channels = [\"ops\"]\nevents = [\"first_seen\"]\nremind_every = \"1h\""
        ))
        .3
        .contains("selects neither")
    );
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn any_text_is_a_config_or_a_located_error(text in "(?s).{0,400}") {
            let errors = match parse(&text) {
                Ok(_) => vec![],
                Err(ConfigError::Several(all)) => all,
                Err(e) => vec![e],
            };
            for e in errors {
                match e {
                    ConfigError::Invalid { line, column, .. } => {
                        prop_assert!(line >= 1 && line <= text.lines().count().max(1) + 1);
                        prop_assert!(column >= 1);
                    }
                    e => prop_assert!(false, "unexpected error kind: {e}"),
                }
            }
        }

        /// Valid TOML with arbitrary values where the schema expects something specific.
        #[test]
        fn arbitrary_values_in_a_valid_shape(
            id in ".{0,30}",
            every in ".{0,12}",
            url in ".{0,40}",
            n in any::<i64>(),
        ) {
            let q = |s: &str| toml::Value::String(s.to_owned()).to_string();
            let text = format!(
                "[cloud_manager]\nbase_url = {}\npublic_key = \"p\"\nprivate_key = \"k\"\n[poll]\nevery = {}\nconcurrency = {n}\n[[org]]\nid = {}\nname = \"x\"\n",
                q(&url), q(&every), q(&id)
            );
            // Accepted, it says what the file says; refused, it names the value that is wrong,
            // where it is, and nothing else.
            let errors = match parse(&text) {
                Ok(c) => {
                    prop_assert_eq!(c.orgs[0].id.as_str(), id.as_str());
                    prop_assert_eq!(i64::try_from(c.poll.concurrency).ok(), Some(n));
                    prop_assert_eq!(c.cloud_manager.base_url.as_str().trim_end_matches('/'), url.trim_end_matches('/'));
                    vec![]
                }
                Err(ConfigError::Several(all)) => all,
                Err(e) => vec![e],
            };
            for e in errors { match e {
                ConfigError::Invalid { file, line, key, message, .. } => {
                    prop_assert_eq!(file, Path::new("/etc/linkwatch/test.toml"));
                    let at = match key.as_str() {
                        "cloud_manager.base_url" => 2,
                        "poll.every" => 6,
                        "poll.concurrency" => 7,
                        "org[0].id" => 9,
                        other => return Err(TestCaseError::fail(format!("{other}: {message}"))),
                    };
                    prop_assert_eq!(line, at, "{}: {}", key, message);
                    prop_assert!(!message.is_empty());
                }
                e => return Err(TestCaseError::fail(format!("not a located error: {e}"))),
            } }
        }
    }
}

#[test]
fn durations_are_bounded() {
    let (line, _, key, message) = error(&format!("{MINIMAL}\n[poll]\ntimeout = \"0s\"\n"));
    assert_eq!((line, key.as_str()), (11, "poll.timeout"));
    assert!(message.contains("more than 0s"), "{message}");
    let (_, _, key, message) = error(&format!("{MINIMAL}\n[poll]\ntimeout = \"2h\"\n"));
    assert_eq!(key, "poll.timeout");
    assert!(message.contains("at most 1h"), "{message}");
    let text = MINIMAL.replace("[cloud_manager]\n", "[cloud_manager]\nconnect_timeout = \"0ms\"\n");
    let (_, _, key, _) = error(&text);
    assert_eq!(key, "cloud_manager.connect_timeout");
    // Ten years is the most any duration may say; the next day is refused.
    parse(&format!("retention = \"3650d\"\n{MINIMAL}")).unwrap();
    let (line, _, key, message) = error(&format!("retention = \"3651d\"\n{MINIMAL}"));
    assert_eq!((line, key.as_str()), (1, "retention"));
    assert!(message.contains("at most 10 years"), "{message}");
}

#[test]
fn a_postgres_database_with_its_password_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("db-password");
    std::fs::write(&password, "s3cret-db\n").unwrap();
    let text = format!(
        "database = \"postgres://linkwatch@db.internal:5432/linkwatch\"\ndatabase_password_file = \"{}\"\nleader_lease = \"20s\"\n{MINIMAL}",
        password.display()
    );
    let config = parse(&text).unwrap();
    assert_eq!(config.leader_lease, Duration::from_secs(20));
    let Database::Postgres(target) = &config.database else {
        panic!("{:?}", config.database)
    };
    assert_eq!(target.password.as_ref().map(Secret::expose), Some("s3cret-db"));
    assert!(!format!("{config:?}").contains("s3cret-db"));
    assert_eq!(
        config.database.to_string(),
        "postgres://linkwatch@db.internal:5432/linkwatch"
    );

    let (line, _, key, message) = error(&format!(
        "database = \"postgres://lw:inline@db/linkwatch\"\ndatabase_password_file = \"{}\"\n{MINIMAL}",
        password.display()
    ));
    assert_eq!((line, key.as_str()), (2, "database_password"));
    assert!(message.contains("one place"), "{message}");
    let (line, _, key, _) = error(&format!("database = \"mysql://db/linkwatch\"\n{MINIMAL}"));
    assert_eq!((line, key.as_str()), (1, "database"));
    let (_, _, key, message) = error(&format!("leader_lease = \"1s\"\n{MINIMAL}"));
    assert_eq!(key, "leader_lease");
    assert!(message.contains("at least 3s"), "{message}");
}

const ATLAS: &str = r#"
[atlas]
public_key = "atlas-pub"
private_key = "atlas-secret"
"#;

fn migration(org: &str, group: &str, id: &str, extra: &str) -> String {
    format!("\n[[migration]]\nname = \"rs0\"\norg = \"{org}\"\ngroup_id = \"{group}\"\nid = \"{id}\"\n{extra}\n")
}

const GROUP: &str = "6f0c00000000000000000c01";
const MIGRATION: &str = "6F1D00000000000000000D01";

#[test]
fn migrations_are_read_with_their_org_by_name_or_id() {
    let text = format!(
        "{MINIMAL}{ATLAS}cutover_window = \"48h\"\ndeadline_warnings = [\"1h\", \"12h\"]\n{}",
        migration("payments", GROUP, MIGRATION, "lag_alert = \"10m\"")
    );
    let config = parse(&text).unwrap();
    let atlas = config.atlas.unwrap();
    assert_eq!(atlas.base_url.as_str(), "https://cloud.mongodb.com/api/atlas/v2/");
    assert_eq!(atlas.token_url.as_str(), "https://cloud.mongodb.com/api/oauth/token");
    assert_eq!(atlas.every, Duration::from_secs(60));
    assert_eq!(atlas.api_version, "2023-01-01");
    assert_eq!(atlas.cutover_window, Duration::from_secs(48 * 3600));
    assert_eq!(
        atlas.deadline_warnings,
        [Duration::from_secs(12 * 3600), Duration::from_secs(3600)]
    );
    assert!(!format!("{atlas:?}").contains("atlas-secret"));
    let m = &config.migrations[0];
    assert_eq!(m.org.as_str(), "5f0c1234567890abcdef1234");
    assert_eq!(m.id, MIGRATION.to_ascii_lowercase());
    assert_eq!(m.lag_alert, Some(Duration::from_secs(600)));
    let by_id = parse(&format!(
        "{MINIMAL}{ATLAS}{}",
        migration("5f0c1234567890abcdef1234", GROUP, MIGRATION, "")
    ))
    .unwrap();
    assert_eq!(by_id.migrations[0].org, m.org);
    // `api_version` is a date, or the config says where it is wrong.
    let pinned = parse(&format!("{MINIMAL}{ATLAS}api_version = \"2025-03-12\"\n")).unwrap();
    assert_eq!(pinned.atlas.unwrap().api_version, "2025-03-12");
    for bad in ["2025-13-01", "latest", "2025-3-1", "2023-01-01+json\\r\\nX: y"] {
        let e = parse(&format!("{MINIMAL}{ATLAS}api_version = \"{bad}\"\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("atlas.api_version") && e.contains("is a date"), "{bad}: {e}");
    }
    // The defaults: 120 h, warnings at 24 h, 6 h and 1 h.
    let plain = parse(&format!("{MINIMAL}{ATLAS}")).unwrap().atlas.unwrap();
    assert_eq!(plain.cutover_window, Duration::from_secs(120 * 3600));
    assert_eq!(plain.deadline_warnings.len(), 3);
}

#[test]
fn migration_mistakes_name_the_line_and_key() {
    let (line, _, key, message) = error(&format!("{MINIMAL}{}", migration("payments", GROUP, MIGRATION, "")));
    // Without [atlas] a migration needs a key of its own (or a [[credentials]] set's).
    assert_eq!((line, key.as_str()), (11, "migration[0]"));
    assert!(
        message.contains("no credential") && message.contains("in [atlas]"),
        "{message}"
    );

    let (line, _, key, message) = error(&format!(
        "{MINIMAL}{ATLAS}{}",
        migration("billing", GROUP, MIGRATION, "")
    ));
    assert_eq!((line, key.as_str()), (16, "migration[0].org"));
    assert!(
        message.contains("no [[org]] has the name or id \"billing\""),
        "{message}"
    );

    let (_, _, key, message) = error(&format!(
        "{MINIMAL}{ATLAS}{}",
        migration("payments", "abc", MIGRATION, "")
    ));
    assert_eq!(key, "migration[0].group_id");
    assert!(message.contains("24 hex"), "{message}");

    let (_, _, key, _) = error(&format!("{MINIMAL}{ATLAS}{}", migration("payments", GROUP, "6f1d", "")));
    assert_eq!(key, "migration[0].id");

    let twice = format!(
        "{MINIMAL}{ATLAS}{}{}",
        migration("payments", GROUP, MIGRATION, ""),
        migration("payments", GROUP, MIGRATION, "").replace("rs0", "rs1")
    );
    let (_, _, key, message) = error(&twice);
    assert_eq!(key, "migration[1].id");
    assert!(message.contains("already followed as \"rs0\""), "{message}");

    let (_, _, key, _) = error(&format!(
        "{MINIMAL}{ATLAS}{}",
        migration("payments", GROUP, MIGRATION, "lag_alert = \"0s\"")
    ));
    assert_eq!(key, "migration[0].lag_alert");

    let (_, _, key, message) = error(&format!("{MINIMAL}{ATLAS}deadline_warnings = [\"200h\"]\n"));
    assert_eq!(key, "atlas.deadline_warnings");
    assert!(message.contains("less than cutover_window (5days)"), "{message}");

    // [atlas] without a key is fine while every migration brings its own; one that does not
    // is named.
    let (_, _, key, message) = error(&format!(
        "{MINIMAL}\n[atlas]\nevery = \"1m\"\n{}",
        migration("payments", GROUP, MIGRATION, "")
    ));
    assert_eq!(key, "migration[0]");
    assert!(message.contains("no credential"), "{message}");

    let (_, _, key, _) = error(&format!("{MINIMAL}{ATLAS}every = \"500ms\"\n"));
    assert_eq!(key, "atlas.every");
}

#[test]
fn a_route_can_page_only_on_failed_or_expired_migrations() {
    let text = format!(
        "{MINIMAL}\n[[channel]]\nname = \"c\"\nkind = \"console\"\n\n[[route]]\nchannels = [\"c\"]\nevents = [\"migration_status_changed\"]\nto = [\"FAILED\", \"EXPIRED\"]\n"
    );
    let config = parse(&text).unwrap();
    let router = crate::router::Router::new(&config);
    let org = &config.orgs[0].id;
    let changed = |to: &str| crate::detect::Event::MigrationStatusChanged {
        migration: "rs0".into(),
        from: Some("WORKING".into()),
        to: to.into(),
        from_lasted_s: Some(1),
        migration_hosts: Vec::new(),
    };
    assert_eq!(router.route(org, &changed("FAILED")), ["c"]);
    assert!(router.route(org, &changed("COMPLETE")).is_empty());
}

#[test]
fn http_basic_auth() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("page-password");
    std::fs::write(&file, "s3cret\n").unwrap();
    let with = |lines: &str| format!("[http]\nlisten = \"127.0.0.1:9187\"\n{lines}\n{MINIMAL}");

    let c = parse(&with("")).unwrap();
    assert_eq!(c.http_auth, None);

    let c = parse(&with(&format!(
        "username = \"ops\"\npassword_file = \"{}\"",
        file.display()
    )))
    .unwrap();
    let auth = c.http_auth.expect("login configured");
    assert_eq!((auth.username.as_str(), auth.password.expose()), ("ops", "s3cret"));
    assert!(!format!("{auth:?}").contains("s3cret"));

    let (line, column, key, message) = error(&with("username = \"ops\""));
    assert_eq!((line, column, key.as_str()), (3, 12, "http.username"));
    assert!(message.contains("set a password too"), "{message}");

    let (line, _, key, message) = error(&with(&format!("password_file = \"{}\"", file.display())));
    assert_eq!((line, key.as_str()), (3, "http.username"));
    assert!(message.contains("without a username"), "{message}");

    let (_, _, key, message) = error(&with(&format!(
        "username = \"a:b\"\npassword_file = \"{}\"",
        file.display()
    )));
    assert_eq!(key, "http.username");
    assert!(message.contains("no colon"), "{message}");

    let (line, _, key, message) = error(&with(
        "username = \"ops\"\npassword_env = \"LINKWATCH_TEST_UNSET_PAGE\"",
    ));
    assert_eq!((line, key.as_str()), (4, "http.password_env"));
    assert!(message.contains("is not set"), "{message}");
}

#[test]
fn reports_name_known_channels_and_a_valid_cron() {
    let report = |body: &str| format!("{MINIMAL}{SLACK}\n[[report]]\n{body}\n");
    let c = parse(&report("cron = \"0 0 9 * * Mon-Fri\"\nchannels = [\"ops\"]")).unwrap();
    assert_eq!(c.reports[0].name, "0 0 9 * * Mon-Fri", "unnamed: its cron names it");
    assert_eq!(c.reports[0].channels, ["ops"]);
    let c = parse(&report(
        "name = \"daily\"\ncron = \"0 0 9 * * *\"\nchannels = [\"ops\"]",
    ))
    .unwrap();
    assert_eq!(c.reports[0].name, "daily");
    let c = parse(&format!(
        "{MINIMAL}{SLACK}\n[[channel]]\nname = \"mail\"\nkind = \"console\"\n\n[[report]]\ncron = \"0 0 9 * * *\"\nchannels = [\"ops\", \"mail\", \"ops\"]\n"
    ))
    .unwrap();
    assert_eq!(c.reports[0].channels, ["ops", "mail"], "each channel once");

    let (line, column, key, message) = error(&report("cron = \"0 0 9 * * *\"\nchannels = [\"ops\", \"pager\"]"));
    assert_eq!((line, column, key.as_str()), (17, 20, "report[0].channels"));
    assert!(
        message.contains("no channel is named \"pager\" (channels: ops)"),
        "{message}"
    );
    let (_, _, key, message) = error(&report("cron = \"0 9 * * *\"\nchannels = [\"ops\"]"));
    assert_eq!(key, "report[0].cron");
    assert!(message.contains("has 5 fields"), "{message}");
    let (_, _, key, message) = error(&report("cron = \"0 0 9 * * *\"\nchannels = []"));
    assert_eq!(
        (key.as_str(), message.as_str()),
        ("report[0].channels", "names no channel")
    );
    let twice = format!(
        "{}\n[[report]]\ncron = \"0 0 9 * * *\"\nchannels = [\"ops\"]\n",
        report("cron = \"0 0 9 * * *\"\nchannels = [\"ops\"]")
    );
    let (_, _, key, message) = error(&twice);
    assert_eq!(key, "report[1].name");
    assert!(message.contains("give each a `name`"), "{message}");
}

#[test]
fn a_heartbeat_url_is_checked_without_being_shown() {
    let beat = |body: &str| format!("{MINIMAL}\n[heartbeat]\n{body}\n");
    let c = parse(&beat("url = \"https://hc-ping.com/0d3c57a1-secret\"\nevery = \"5m\"")).unwrap();
    let h = c.heartbeat.as_ref().unwrap();
    assert_eq!(
        (h.every, h.timeout),
        (Duration::from_secs(300), Duration::from_secs(10))
    );
    assert_eq!(h.shown, "https://hc-ping.com");
    assert!(!format!("{c:?}").contains("0d3c57a1-secret"));

    let (_, _, key, message) = error(&beat("url = \"ftp://hc-ping.com/0d3c57a1-secret\""));
    assert_eq!(
        (key.as_str(), message.as_str()),
        ("heartbeat.url", "must be an http:// or https:// URL")
    );
    let (_, _, key, message) = error(&beat("url = \"hc-ping.com/0d3c57a1-secret\""));
    assert_eq!(key, "heartbeat.url");
    assert!(!message.contains("0d3c57a1-secret"), "{message}");
    let (line, _, key, _) = error(&beat("every = \"1m\""));
    assert_eq!((line, key.as_str()), (10, "heartbeat.url"));
    let (_, _, key, _) = error(&beat(
        "url = \"https://hc-ping.com/x\"\nevery = \"10s\"\ntimeout = \"20s\"",
    ));
    assert_eq!(key, "heartbeat.timeout");
}

#[test]
fn the_fail_url_is_the_url_plus_fail_unless_one_is_given() {
    let beat = |body: &str| format!("{MINIMAL}\n[heartbeat]\n{body}\n");
    let c = parse(&beat("url = \"https://hc-ping.com/0d3c57a1-secret/?rid=1\"")).unwrap();
    let h = c.heartbeat.as_ref().unwrap();
    assert_eq!(h.fail_url.expose(), "https://hc-ping.com/0d3c57a1-secret/fail?rid=1");
    assert_eq!(h.fail_shown, "https://hc-ping.com");

    let c = parse(&beat(
        "url = \"https://push.example/api/push/s3cr3tpush?status=up\"\nfail_url = \"https://push.example/api/push/s3cr3tpush?status=down\"",
    ))
    .unwrap();
    let h = c.heartbeat.as_ref().unwrap();
    assert_eq!(
        h.fail_url.expose(),
        "https://push.example/api/push/s3cr3tpush?status=down"
    );
    assert!(!format!("{c:?}").contains("s3cr3tpush"));

    let (line, _, key, message) = error(&beat(
        "url = \"https://hc-ping.com/x\"\nfail_url = \"ftp://hc-ping.com/x\"",
    ));
    assert_eq!(
        (line, key.as_str(), message.as_str()),
        (12, "heartbeat.fail_url", "must be an http:// or https:// URL")
    );
    let (_, _, key, _) = error(&beat(
        "url = \"https://hc-ping.com/x\"\nfail_url = \"https://a/\"\nfail_url_env = \"X\"",
    ));
    assert_eq!(key, "heartbeat.fail_url");
}

#[test]
fn a_channel_send_is_bounded_to_five_minutes() {
    let text = format!("{MINIMAL}{SLACK}timeout = \"6m\"\n");
    let (_, _, key, message) = error(&text);
    assert_eq!(key, "channel[0].timeout");
    assert!(message.contains("at most 5m"), "{message}");
    let c = parse(&format!("{MINIMAL}{SLACK}timeout = \"5m\"\n")).unwrap();
    assert_eq!(c.channels[0].timeout, std::time::Duration::from_secs(300));
}

#[test]
fn an_instance_name_is_a_plain_word() {
    assert_eq!(parse(MINIMAL).unwrap().instance_name, host_name());
    let named = parse(&format!("instance_name = \"watcher-east.1\"\n{MINIMAL}")).unwrap();
    assert_eq!(named.instance_name, "watcher-east.1");
    for bad in ["", "two words", "a\\u001b[31m", &"x".repeat(65)] {
        let (line, _, key, message) = error(&format!("instance_name = \"{bad}\"\n{MINIMAL}"));
        assert_eq!((line, key.as_str()), (1, "instance_name"), "{bad}");
        assert!(message.contains("letters, digits"), "{message}");
    }
}

/// A table taken out for its own mistake is reported once: what names it is not wrong too, and
/// the tables after it keep the index they have in the file.
#[test]
fn a_broken_table_is_reported_once_and_the_rest_keep_their_place() {
    let text = format!(
        "{MINIMAL}\n[[org]]\nid = \"not-an-id\"\nname = \"billing\"\n\n\
         [[org]]\nid = \"5f0c1234567890abcdef1236\"\nname = \"search\"\nevery = \"0s\"\n\n\
         [[channel]]\nname = \"ops\"\nkind = \"console\"\n\n\
         [[route]]\nchannels = [\"ops\"]\norgs = [\"billing\"]\n\n\
         [atlas]\npublic_key = \"p\"\nprivate_key = \"k\"\n\n\
         [[migration]]\nname = \"rs0\"\norg = \"billing\"\ngroup_id = \"6f0c00000000000000000c01\"\n\
         id = \"6f1d00000000000000000d01\"\n"
    );
    let Err(ConfigError::Several(all)) = parse(&text) else {
        panic!("two mistakes expected: {:?}", parse(&text).err());
    };
    let keys: Vec<String> = all
        .iter()
        .map(|e| match e {
            ConfigError::Invalid { key, .. } => key.clone(),
            other => other.to_string(),
        })
        .collect();
    assert_eq!(keys, ["org[1].id", "org[2].every"], "{all:?}");
}

#[test]
fn a_timezone_is_an_iana_name_and_poll_s_needs_its_cron() {
    let report = |body: &str| format!("{MINIMAL}{SLACK}\n[[report]]\n{body}\nchannels = [\"ops\"]\n");
    let c = parse(&report("cron = \"0 0 9 * * *\"\ntimezone = \"Europe/Berlin\"")).unwrap();
    assert_eq!(c.reports[0].cron.zone_name(), "Europe/Berlin");
    let c = parse(&report("cron = \"0 0 9 * * *\"")).unwrap();
    assert_eq!(c.reports[0].cron.zone_name(), "UTC", "UTC unless set");

    let (line, _, key, message) = error(&report("cron = \"0 0 9 * * *\"\ntimezone = \"Europe/Berln\""));
    assert_eq!((line, key.as_str()), (17, "report[0].timezone"));
    assert!(
        message.contains("unknown time zone \"Europe/Berln\"; did you mean \"Europe/Berlin\"?"),
        "{message}"
    );
    let (_, _, _, message) = error(&report("cron = \"0 0 9 * * *\"\ntimezone = \"europe/berlin\""));
    assert!(message.contains("did you mean \"Europe/Berlin\"?"), "{message}");
    let (_, _, _, message) = error(&report("cron = \"0 0 9 * * *\"\ntimezone = \"CEST+2\""));
    assert!(message.contains("an IANA name such as"), "{message}");

    let c = parse(&format!(
        "{MINIMAL}\n[poll]\ncron = \"0 0 9 * * *\"\ntimezone = \"America/New_York\"\n"
    ))
    .unwrap();
    assert_eq!(c.poll.schedule.to_string(), "cron \"0 0 9 * * *\" (America/New_York)");
    let (line, column, key, message) = error(&format!("{MINIMAL}\n[poll]\ntimezone = \"Europe/Berlin\"\n"));
    assert_eq!((line, column, key.as_str()), (11, 12, "poll.timezone"));
    assert!(message.contains("applies to `cron` only"), "{message}");
}

/// Two customers in one file: an org with its own Ops Manager and key, orgs sharing a
/// `[[credentials]]` set, the rest on `[cloud_manager]`; migrations with their own Atlas key.
#[test]
fn orgs_and_migrations_may_each_have_their_own_instance_and_key() {
    let text = r#"
[cloud_manager]
public_key = "pub"
private_key = "very-secret-key"

[[credentials]]
name = "acme"
base_url = "https://om.acme.example/api/public/v1.0"
public_key = "acme-pub"
private_key = "acme-secret"

[[credentials]]
name = "acme-atlas"
client_id = "mdb_sa_id_acme"
client_secret = "acme-sa-secret"

[[org]]
id = "5f0c1234567890abcdef1234"
name = "payments"

[[org]]
id = "5f0c1234567890abcdef0001"
name = "acme-1"
credentials = "acme"

[[org]]
id = "5f0c1234567890abcdef0002"
name = "acme-2"
credentials = "acme"

[[org]]
id = "5f0c1234567890abcdef0003"
name = "globex"
base_url = "https://om.globex.example:8443/api/public/v1.0/"
public_key = "globex-pub"
private_key = "globex-secret"

[atlas]
public_key = "atlas-pub"
private_key = "atlas-secret"

[[migration]]
name = "payments-rs"
org = "payments"
group_id = "6f0c00000000000000000c01"
id = "6f1d00000000000000000d01"

[[migration]]
name = "acme-rs"
org = "acme-1"
group_id = "6f0c00000000000000000c02"
id = "6f1d00000000000000000d02"
credentials = "acme-atlas"
"#;
    let c = parse(text).unwrap();
    let by = |name: &str| c.orgs.iter().find(|o| o.name == name).unwrap();
    assert_eq!(
        by("payments").endpoint.label(),
        "https://cloud.mongodb.com/api/public/v1.0"
    );
    assert_eq!(by("acme-1").endpoint.label(), "https://om.acme.example/api/public/v1.0");
    assert_eq!(
        by("acme-1").endpoint.token_url.as_str(),
        "https://om.acme.example/api/oauth/token"
    );
    assert!(Arc::ptr_eq(&by("acme-1").endpoint, &by("acme-2").endpoint));
    assert!(Arc::ptr_eq(&by("acme-1").credential, &by("acme-2").credential));
    assert_eq!(by("acme-1").credential.label(), "api key acme-pub");
    assert_eq!(
        by("globex").endpoint.label(),
        "https://om.globex.example:8443/api/public/v1.0"
    );
    assert_eq!(by("globex").credential.label(), "api key globex-pub");
    // One session per distinct instance and key.
    assert_eq!(c.sessions().len(), 3);
    let m = |name: &str| c.migrations.iter().find(|m| m.name == name).unwrap();
    assert_eq!(m("payments-rs").credential.label(), "api key atlas-pub");
    assert_eq!(m("acme-rs").credential.label(), "service account mdb_sa_id_acme");
    assert_eq!(m("acme-rs").endpoint.label(), "https://cloud.mongodb.com/api/atlas/v2");
    assert_eq!(c.atlas_sessions().len(), 2);
    assert!(!format!("{c:?}").contains("acme-secret"));
    assert!(!format!("{c:?}").contains("acme-sa-secret"));
}

/// A base URL without its API's path would make every org read "no migration link": named at
/// its line, wherever it is written.
#[test]
fn a_base_url_without_its_api_path_is_a_mistake_at_its_line() {
    let (line, _, key, message) = error(&MINIMAL.replace(
        "[cloud_manager]\n",
        "[cloud_manager]\nbase_url = \"https://om.example.com:8080\"\n",
    ));
    assert_eq!((line, key.as_str()), (3, "cloud_manager.base_url"));
    assert!(message.contains("ends in `/api/public/v1.0`"), "{message}");
    assert!(message.contains("https://om.example.com/api/public/v1.0"), "{message}");

    let (line, _, key, message) = error(&format!(
        "{MINIMAL}base_url = \"https://om.example.com/api/atlas/v2\"\n"
    ));
    assert_eq!((line, key.as_str()), (9, "org[0].base_url"));
    assert!(message.contains("ends in `/api/public/v1.0`"), "{message}");

    let (_, _, key, message) = error(&format!(
        "{MINIMAL}\n[atlas]\nbase_url = \"https://cloud.mongodb.com/api/public/v1.0\"\npublic_key = \"a\"\nprivate_key = \"b\"\n"
    ));
    assert_eq!(key, "atlas.base_url");
    assert!(message.contains("ends in `/api/atlas/v2`"), "{message}");

    let (_, _, key, message) = error(&format!("{MINIMAL}credentials = \"acme\"\n"));
    assert_eq!(key, "org[0].credentials");
    assert!(
        message.contains("no [[credentials]] named \"acme\" (the file has none)"),
        "{message}"
    );
}

/// The default key belongs to the default instance: an org asked elsewhere must name its own,
/// or a service account's secret would be posted to another customer's token endpoint.
#[test]
fn an_org_on_another_instance_never_borrows_the_default_key() {
    let (line, _, key, message) = error(&format!(
        "{MINIMAL}base_url = \"https://om.acme.example/api/public/v1.0\"\n"
    ));
    assert_eq!((line, key.as_str()), (7, "org[0]"));
    assert!(
        message.contains("is asked at https://om.acme.example/api/public/v1.0 but names no key"),
        "{message}"
    );
    assert!(
        message.contains("[cloud_manager]'s key is for https://cloud.mongodb.com/api/public/v1.0"),
        "{message}"
    );
    let set = "\n[[credentials]]\nname = \"acme\"\nbase_url = \"https://om.acme.example/api/public/v1.0\"\n";
    let (_, _, key, message) = error(&format!("{MINIMAL}credentials = \"acme\"\n{set}"));
    assert_eq!(key, "org[0]");
    assert!(message.contains("names no key of its own"), "{message}");
    let (_, _, key, message) = error(&MINIMAL.replace(
        "[cloud_manager]\n",
        "[cloud_manager]\nbase_url = \"https://admin:pw@om.example/api/public/v1.0\"\n",
    ));
    assert_eq!(key, "cloud_manager.base_url");
    assert!(message.contains("has a user or password in it"), "{message}");
    assert!(!message.contains("pw@"), "{message}");
}
