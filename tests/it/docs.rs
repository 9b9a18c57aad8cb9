//! ARCHITECTURE.md, README.md and the decision records (`docs/decisions/*.md`) name tests and files
//! as their proof and their map: each name in backticks that looks like a path of this
//! repository, or like a function of a test or source module (`edge::a_silent_smtp_server_...`,
//! `store::checks::tests::...`, `report::jobs::due`), must exist, and ARCHITECTURE.md lists every
//! record and links none that is missing, so that the documents cannot drift from the code
//! unnoticed.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The texts in single backticks of `doc`.
fn quoted(doc: &str) -> Vec<String> {
    doc.split("```")
        .step_by(2)
        .flat_map(|outside_code_blocks| {
            outside_code_blocks
                .split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The file of module `path` (segments) under `base`, with how many segments it took.
fn module_file(base: &Path, path: &[&str]) -> Option<(PathBuf, usize)> {
    (1..=path.len()).rev().find_map(|n| {
        let dir = path[..n].iter().fold(base.to_path_buf(), |d, s| d.join(s));
        [dir.with_extension("rs"), dir.join("mod.rs")]
            .into_iter()
            .find(|f| f.is_file())
            .map(|f| (f, n))
    })
}

/// What is wrong with `name` as a reference, if it is one: `None` when it exists or is not a
/// reference to this repository at all.
fn missing(name: &str) -> Option<String> {
    let name = name.trim_end_matches("()").trim_end_matches(',');
    let repo_dirs = [
        "src/",
        "tests/",
        "config/",
        "migrations/",
        "benches/",
        ".ci/",
        "docs/",
        "deploy/",
    ];
    if repo_dirs.iter().any(|d| name.starts_with(d)) {
        if name.contains(['{', '*', ' ', '<']) {
            return None;
        }
        let path = name.split(':').next().unwrap_or(name);
        return (!root().join(path).exists()).then(|| format!("no such path: {path}"));
    }
    let segments: Vec<&str> = name.split("::").collect();
    let plain = |s: &&str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    };
    if segments.len() < 2 || !segments.iter().take(segments.len() - 1).all(plain) {
        return None;
    }
    let last = *segments.last()?;
    if last == "*" || !plain(&last) {
        // A whole module's tests, or a type or constant (`Store::apply`): not checked.
        return None;
    }
    // A test of the integration binary, or an item of a source module (defined there, or in
    // one of its children and re-exported).
    let mut files = Vec::new();
    for base in [root().join("tests/it"), root().join("src")] {
        if let Some((file, used)) = module_file(&base, &segments) {
            if segments[used..].iter().all(|s| *s == "tests") {
                continue;
            }
            let dir = file.with_extension("");
            if let Ok(children) = std::fs::read_dir(&dir) {
                files.extend(children.flatten().map(|c| c.path()));
            }
            files.push(file);
        }
    }
    if files.is_empty() {
        // Not a path of this repository (a crate's item), or a module itself.
        return None;
    }
    let defined = files.iter().any(|f| {
        let text = std::fs::read_to_string(f).unwrap_or_default();
        [format!("fn {last}("), format!("fn {last}<"), format!("mod {last}")]
            .iter()
            .any(|d| text.contains(d.as_str()))
    });
    (!defined).then(|| format!("{name}: no `fn {last}` where it points"))
}

/// The decision records, `docs/decisions/NNNN-title.md`, as paths from the repository's root.
fn decision_records() -> Vec<String> {
    let mut records: Vec<String> = std::fs::read_dir(root().join("docs/decisions"))
        .unwrap()
        .flatten()
        .map(|e| format!("docs/decisions/{}", e.file_name().to_string_lossy()))
        .filter(|p| p.ends_with(".md"))
        .collect();
    records.sort();
    records
}

#[test]
fn the_documents_name_only_tests_and_paths_that_exist() {
    let mut wrong = Vec::new();
    let docs = ["ARCHITECTURE.md".to_owned(), "README.md".to_owned()];
    for doc in docs.into_iter().chain(decision_records()) {
        let text = std::fs::read_to_string(root().join(&doc)).unwrap();
        for name in quoted(&text) {
            if let Some(why) = missing(&name) {
                wrong.push(format!("{doc}: {why}"));
            }
        }
    }
    // Every record is listed in ARCHITECTURE.md, and every record it links exists.
    let architecture = std::fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap();
    let linked: Vec<&str> = architecture
        .split("](")
        .skip(1)
        .filter_map(|rest| rest.split(')').next())
        .filter(|target| target.starts_with("docs/decisions/"))
        .collect();
    for target in &linked {
        if !root().join(target).is_file() {
            wrong.push(format!("ARCHITECTURE.md: no such record: {target}"));
        }
    }
    for record in decision_records() {
        if !linked.contains(&record.as_str()) {
            wrong.push(format!("ARCHITECTURE.md: does not list {record}"));
        }
    }
    wrong.dedup();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn a_wrong_name_is_found() {
    assert!(missing("edge::no_such_test_anywhere").is_some());
    assert!(missing("src/no/such/file.rs").is_some());
    assert_eq!(missing("edge::notify_test_names_a_refused_login"), None);
    assert_eq!(missing("src/outside.rs"), None);
    assert_eq!(missing("report::jobs::due"), None);
    assert_eq!(
        missing("dispatch::step::tests::a_send_ends_within_its_own_bound_and_within_its_claim"),
        None
    );
    assert!(missing("store::checks::tests::no_such_unit_test").is_some());
    assert_eq!(missing("Store::apply"), None, "types are not checked");
}
