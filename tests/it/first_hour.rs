//! A DBA's first hour: every mistake of a file in one `check`, no secret read where none is
//! needed, `${CREDENTIALS_DIRECTORY}` from a shell.

use crate::helpers::*;

/// `linkwatch ARGS --config CONFIG`, run to its end.
async fn run(args: &[&str], config: &std::path::Path) -> std::process::Output {
    linkwatch()
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .await
        .unwrap()
}

const SEVERAL_MISTAKES: &str = r#"database = "linkwatch.db"

[cloud_manager]
public_key = "abc"
private_key_env = "LINKWATCH_TEST_NEVER_SET_1"

[poll]
concurrency = "eight"

[[org]]
id = "5f0c1234567890abcdef1234"
name = "payments"
evry = "1m"

[[channel]]
name = "ops"
kind = "slack"
webhok_url = "https://hooks.slack.com/services/T/B/x"

[[channel]]
name = "mail"
kind = "email"
smtp_url = "smtp://localhost"
from = "linkwatch@example.com"
to = ["dba@example.com"]
username = "u"
password_env = "LINKWATCH_TEST_NEVER_SET_2"

[[route]]
channels = ["ops", "pager"]
"#;

#[tokio::test]
async fn check_prints_every_mistake_of_the_file_at_once_sorted_by_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("linkwatch.toml");
    std::fs::write(&path, SEVERAL_MISTAKES).unwrap();
    let out = run(&["check"], &path).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let file = path.display().to_string();
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with(&file)).collect();
    let expected = [
        (
            5,
            "cloud_manager.private_key_env: environment variable LINKWATCH_TEST_NEVER_SET_1 is not set",
        ),
        (
            8,
            "poll.concurrency: expected a whole number, found the string \"eight\"",
        ),
        (13, "org[0].evry: unknown key `evry`; did you mean `every`?"),
        // Only the keys of a slack channel are candidates, and the key it would have missed
        // is not a second mistake.
        (
            18,
            "channel[0].webhok_url: unknown key `webhok_url`; did you mean `webhook_url`?",
        ),
        (
            27,
            "channel[1].password_env: environment variable LINKWATCH_TEST_NEVER_SET_2 is not set",
        ),
        // "ops" had a mistake of its own and is not reported again here.
        (30, "route[0].channels: no channel is named \"pager\""),
    ];
    assert_eq!(lines.len(), expected.len(), "{stderr}");
    for (line, (number, text)) in lines.iter().zip(expected) {
        assert!(line.starts_with(&format!("{file}:{number}:")), "{line}\n{stderr}");
        assert!(line.contains(text), "{line} lacks {text}");
    }
    assert!(stderr.contains("6 mistakes in the config"), "{stderr}");
    assert!(!stderr.contains("invalid type"), "serde's words leak: {stderr}");
}

#[tokio::test]
async fn history_reads_no_secret_but_the_databases() {
    let t = spawn_app().await;
    t.check(ORG_A).await;
    t.app.store.close().await;
    // The same file, with every secret taken from variables this shell does not have.
    let text = std::fs::read_to_string(&t.config_path).unwrap().replace(
        &format!("private_key = \"{PRIVATE_KEY}\""),
        "private_key_env = \"LINKWATCH_TEST_NEVER_SET_3\"",
    );
    assert!(
        text.contains("LINKWATCH_TEST_NEVER_SET_3"),
        "the test's config changed shape"
    );
    let text = format!(
        "{text}\n[[channel]]\nname = \"team\"\nkind = \"slack\"\nwebhook_url_file = \"${{CREDENTIALS_DIRECTORY}}/slack\"\n"
    );
    std::fs::write(&t.config_path, text).unwrap();
    let out = run(&["history"], &t.config_path).await;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("alpha"), "{stdout}");
    // `run` still refuses what it cannot read.
    let out = run(&["once"], &t.config_path).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("LINKWATCH_TEST_NEVER_SET_3 is not set"), "{stderr}");
}

#[tokio::test]
async fn check_from_a_shell_reads_credentials_from_the_folder_it_is_given() {
    let dir = tempfile::tempdir().unwrap();
    let credentials = dir.path().join("credentials");
    std::fs::create_dir(&credentials).unwrap();
    let path = dir.path().join("linkwatch.toml");
    std::fs::write(
        &path,
        "database = \"linkwatch.db\"\n[cloud_manager]\npublic_key = \"abc\"\n\
         private_key_file = \"${CREDENTIALS_DIRECTORY}/cm-key\"\n\
         [[org]]\nid = \"5f0c1234567890abcdef1234\"\nname = \"payments\"\n",
    )
    .unwrap();
    let check = |dir: Option<&std::path::Path>| {
        let mut c = linkwatch();
        c.arg("check").arg("--config").arg(&path);
        if let Some(d) = dir {
            c.arg("--credentials-dir").arg(d);
        }
        c.output()
    };

    // Without the folder: the rest is checked, and the secret is named as not read, with how.
    let out = check(None).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("secrets not read here"), "{stdout}");
    assert!(
        stdout.contains(":4: cloud_manager.private_key_file:") && stdout.contains("--credentials-dir"),
        "{stdout}"
    );

    // With it, a missing file is an error, and a present one is read.
    let out = check(Some(&credentials)).await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot read") && stderr.contains("cm-key"), "{stderr}");
    std::fs::write(credentials.join("cm-key"), "the-private-key\n").unwrap();
    let out = check(Some(&credentials)).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!stdout.contains("not read"), "{stdout}");
}

/// `check --online` asks once per org with that org's key: the good key's org shows its status,
/// the wrong key's org is refused and explained, and the exit code says so.
#[tokio::test]
async fn check_online_tells_a_working_key_from_a_wrong_one() {
    let t = spawn_app().await;
    t.sim.set(ORG_A, linkwatch::simulator::Behavior::status("SYNCED"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("linkwatch.toml");
    let write = |beta_key: &str| {
        std::fs::write(
            &path,
            format!(
                "database = \"{db}\"\n[cloud_manager]\nbase_url = \"{base}\"\npublic_key = \"{PUBLIC_KEY}\"\n\
                 private_key = \"{PRIVATE_KEY}\"\n\n[[org]]\nid = \"{ORG_A}\"\nname = \"alpha\"\n\n\
                 [[org]]\nid = \"{ORG_B}\"\nname = \"beta\"\npublic_key = \"{PUBLIC_KEY}\"\nprivate_key = \"{beta_key}\"\n",
                db = dir.path().join("never-made.db").display(),
                base = t.sim.base_url(),
            ),
        )
        .unwrap()
    };
    write("not-the-private-key");
    let out = run(&["check", "--online"], &path).await;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    let row = |name: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with("org") && l.contains(&format!(" {name} ")))
            .unwrap_or_else(|| panic!("no row for {name}: {stdout}"))
            .to_owned()
    };
    assert!(row("alpha").contains("SYNCED"), "{stdout}");
    assert!(row("beta").contains("FAILED (unauthorized)"), "{stdout}");
    assert!(
        stdout.contains("beta: Cloud Manager rejected the credentials"),
        "the refusal is explained: {stdout}"
    );
    assert!(stderr.contains("1 of 2 refused"), "{stderr}");
    // Nothing was stored: the database is not even made.
    assert!(!dir.path().join("never-made.db").exists());

    write(PRIVATE_KEY);
    let out = run(&["check", "--online"], &path).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("every key and id works"), "{stdout}");
}
