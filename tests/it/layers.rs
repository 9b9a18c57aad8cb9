//! The layers stay one-way: this reads the `crate::` and `super::` paths of every file under
//! `src/` (tests and comments aside) and fails on any circle of imports, between files and
//! between the top-level modules, naming the files in it, and on any import from a layer above
//! (`LAYERS`). A parent and its own children are one unit (a child may use what its parent
//! holds), so their references do not count.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

type Module = Vec<String>;

/// Every module file of `src/`, by module path (`store/sqlite.rs` is `["store", "sqlite"]`),
/// with its text without comments and test modules. `lib.rs` and `main.rs` are the root.
fn modules() -> BTreeMap<Module, String> {
    fn walk(dir: &Path, out: &mut BTreeMap<Module, String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") || path.file_name().is_some_and(|n| n == "tests.rs") {
                continue;
            }
            let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
            let rel = path.strip_prefix(&src).unwrap().with_extension("");
            let mut module: Module = rel.iter().map(|c| c.to_string_lossy().into_owned()).collect();
            if module.last().is_some_and(|l| l == "mod") {
                module.pop();
            }
            if module == ["lib"] || module == ["main"] {
                continue;
            }
            out.insert(module, code(&std::fs::read_to_string(&path).unwrap()));
        }
    }
    let mut out = BTreeMap::new();
    walk(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut out);
    out
}

/// `text` without its test module and without comments (doc links name modules too).
fn code(text: &str) -> String {
    let text = text.split("#[cfg(test)]").next().unwrap_or_default();
    text.lines()
        .map(|l| match l.find("//") {
            // A `//` inside a string (a URL) is rare in paths that matter; cut at it anyway.
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The paths `text` names from the crate root: `crate::a::b`, `super::c` (made absolute from
/// `module`), and each item of `use crate::{a::b, c::{d, e}}`.
fn paths(module: &Module, text: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let rest: String = chars[i..chars.len().min(i + 8)].iter().collect();
        let (base, skip) = if rest.starts_with("crate::") && (i == 0 || !ident(chars[i - 1])) {
            (Vec::new(), 7)
        } else if rest.starts_with("super::") && (i == 0 || !ident(chars[i - 1])) {
            // `super` of a file `a/b.rs` (module a::b) is `a`.
            (module[..module.len().saturating_sub(1)].to_vec(), 7)
        } else {
            i += 1;
            continue;
        };
        i += skip;
        group(&chars, &mut i, base, &mut out);
    }
    out
}

/// Reads a path (or a `{...}` group of paths) at `chars[*i]` onto `prefix`.
fn group(chars: &[char], i: &mut usize, prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut path = prefix;
    loop {
        while *i < chars.len() && chars[*i].is_whitespace() {
            *i += 1;
        }
        if *i < chars.len() && chars[*i] == '{' {
            *i += 1;
            loop {
                group(chars, i, path.clone(), out);
                while *i < chars.len() && chars[*i].is_whitespace() {
                    *i += 1;
                }
                match chars.get(*i) {
                    Some(',') => *i += 1,
                    Some('}') => {
                        *i += 1;
                        break;
                    }
                    _ => break,
                }
                while *i < chars.len() && chars[*i].is_whitespace() {
                    *i += 1;
                }
                if chars.get(*i) == Some(&'}') {
                    *i += 1;
                    break;
                }
            }
            return;
        }
        let start = *i;
        while *i < chars.len() && ident(chars[*i]) {
            *i += 1;
        }
        if start == *i {
            break;
        }
        path.push(chars[start..*i].iter().collect());
        if chars.get(*i) == Some(&':') && chars.get(*i + 1) == Some(&':') {
            *i += 2;
        } else {
            break;
        }
    }
    out.push(path);
}

/// The module file `path` lands in: its longest prefix that is a module.
fn resolve<'a>(modules: &'a BTreeMap<Module, String>, path: &[String]) -> Option<&'a Module> {
    (1..=path.len())
        .rev()
        .find_map(|n| modules.get_key_value(&path[..n]).map(|(k, _)| k))
}

/// The strongly connected components of more than one node (Tarjan).
fn circles<N: Ord + Clone>(edges: &BTreeMap<N, BTreeSet<N>>) -> Vec<Vec<N>> {
    struct Walk<'a, N: Ord> {
        edges: &'a BTreeMap<N, BTreeSet<N>>,
        index: BTreeMap<N, usize>,
        low: BTreeMap<N, usize>,
        stack: Vec<N>,
        on: BTreeSet<N>,
        found: Vec<Vec<N>>,
    }
    fn visit<N: Ord + Clone>(w: &mut Walk<'_, N>, v: &N) {
        let n = w.index.len();
        w.index.insert(v.clone(), n);
        w.low.insert(v.clone(), n);
        w.stack.push(v.clone());
        w.on.insert(v.clone());
        for t in w.edges.get(v).into_iter().flatten() {
            if !w.index.contains_key(t) {
                visit(w, t);
                let l = w.low[t].min(w.low[v]);
                w.low.insert(v.clone(), l);
            } else if w.on.contains(t) {
                let l = w.index[t].min(w.low[v]);
                w.low.insert(v.clone(), l);
            }
        }
        if w.low[v] == w.index[v] {
            let mut component = Vec::new();
            while let Some(t) = w.stack.pop() {
                w.on.remove(&t);
                let done = &t == v;
                component.push(t);
                if done {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                w.found.push(component);
            }
        }
    }
    let mut w = Walk {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        found: Vec::new(),
    };
    let nodes: BTreeSet<N> = edges.keys().chain(edges.values().flatten()).cloned().collect();
    for v in &nodes {
        if !w.index.contains_key(v) {
            visit(&mut w, v);
        }
    }
    w.found
}

fn file_edges(modules: &BTreeMap<Module, String>) -> BTreeMap<Module, BTreeSet<Module>> {
    let mut edges: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for (module, text) in modules {
        for path in paths(module, text) {
            let Some(target) = resolve(modules, &path) else {
                continue;
            };
            let related = target.starts_with(module) || module.starts_with(target);
            if !related {
                edges.entry(module.clone()).or_default().insert(target.clone());
            }
        }
    }
    edges
}

fn named(circle: &[Module]) -> String {
    circle
        .iter()
        .map(|m| format!("src/{}.rs", m.join("/")))
        .collect::<Vec<_>>()
        .join(" <-> ")
}

#[test]
fn no_two_files_import_each_other_even_around_a_circle() {
    let edges = file_edges(&modules());
    let found: Vec<String> = circles(&edges).iter().map(|c| named(c)).collect();
    assert!(found.is_empty(), "import circles between files:\n{}", found.join("\n"));
}

#[test]
fn no_two_top_level_modules_import_each_other_even_around_a_circle() {
    let found: Vec<String> = circles(&top_level_edges()).iter().map(|c| c.join(" <-> ")).collect();
    assert!(
        found.is_empty(),
        "import circles between modules:\n{}",
        found.join("\n")
    );
}

/// The layers, bottom first, as ARCHITECTURE.md draws them: a module imports only from its own
/// layer or those below (within a layer, the circle tests keep it one-way). A new top-level
/// module must be placed here, so that where it stands is decided once, in review.
const LAYERS: [(&str, &[&str]); 7] = [
    (
        "values",
        &[
            "clock", "config", "cron", "memory", "outcome", "outside", "retry", "secret", "text",
        ],
    ),
    ("decisions", &["detect", "router"]),
    ("store", &["store"]),
    (
        "the parts the steps use",
        &[
            "channels",
            "client",
            "message",
            "metrics",
            "report",
            "scheduler",
            "simulator",
            "table",
        ],
    ),
    (
        "steps",
        &[
            "check",
            "copy",
            "dispatch",
            "leader",
            "live_migration",
            "probe",
            "retention",
            "silence",
        ],
    ),
    (
        "loops and wiring",
        &["daemon", "heartbeat", "monitoring", "systemd", "web"],
    ),
    ("commands", &["cli", "demo"]),
];

fn top_level_edges() -> BTreeMap<String, BTreeSet<String>> {
    let mut top: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, to) in file_edges(&modules()) {
        for t in to {
            if from[0] != t[0] {
                top.entry(from[0].clone()).or_default().insert(t[0].clone());
            }
        }
    }
    top
}

#[test]
fn no_module_imports_from_a_layer_above_its_own() {
    let layer = |m: &str| LAYERS.iter().position(|(_, modules)| modules.contains(&m));
    let unplaced: BTreeSet<String> = modules()
        .keys()
        .map(|m| m[0].clone())
        .filter(|m| layer(m).is_none())
        .collect();
    assert!(unplaced.is_empty(), "modules in no layer of LAYERS: {unplaced:?}");
    let mut upward = Vec::new();
    for (from, to) in top_level_edges() {
        for t in to {
            let (a, b) = (layer(&from).unwrap(), layer(&t).unwrap());
            if b > a {
                upward.push(format!("{from} ({}) imports {t} ({})", LAYERS[a].0, LAYERS[b].0));
            }
        }
    }
    assert!(upward.is_empty(), "imports up the layers:\n{}", upward.join("\n"));
}

/// The lines of `text` that reach the database or carry SQL: the driver named in code (not in
/// a string, where `sqlx::postgres::notice` is a log target), or an SQL statement, except in the
/// `sqlite3` commands a user is told to run.
fn sql_in(text: &str) -> Vec<&str> {
    const STATEMENTS: [&str; 6] = [
        "SELECT ",
        "INSERT INTO",
        "UPDATE ",
        "DELETE FROM",
        "CREATE TABLE",
        "ALTER TABLE",
    ];
    text.lines()
        .filter(|line| {
            let code: String = line.split('"').step_by(2).collect();
            code.contains("sqlx") || (STATEMENTS.iter().any(|s| line.contains(s)) && !line.contains("sqlite3 "))
        })
        .collect()
}

/// ARCHITECTURE.md, invariant 12: the store is the only module that talks to the database.
#[test]
fn no_sql_and_no_database_driver_outside_the_store() {
    let outside: Vec<String> = modules()
        .iter()
        .filter(|(module, _)| module[0] != "store")
        .flat_map(|(module, text)| {
            sql_in(text)
                .into_iter()
                .map(move |l| format!("{}: {}", module.join("/"), l.trim()))
        })
        .collect();
    assert!(outside.is_empty(), "SQL outside src/store/:\n{}", outside.join("\n"));
}

#[test]
fn the_reader_sees_sql_and_the_driver() {
    let text = "use sqlx::Row;\nlet q = \"SELECT 1 FROM t\";\nlog(\"sqlx::postgres::notice=warn\");\n\
                println!(\"sqlite3 db 'SELECT * FROM events'\");\nlet x = 1;\n";
    assert_eq!(sql_in(text), ["use sqlx::Row;", "let q = \"SELECT 1 FROM t\";"]);
}

#[test]
fn the_reader_sees_paths_in_every_form() {
    let text = "use crate::{a::B, c::{d, e::F}};\nfn x() { crate::g::h(); super::i::J; }\n";
    let got = paths(&vec!["k".into(), "l".into()], text);
    let want: Vec<Vec<String>> = [
        vec!["a", "B"],
        vec!["c", "d"],
        vec!["c", "e", "F"],
        vec!["g", "h"],
        vec!["k", "i", "J"],
    ]
    .iter()
    .map(|p| p.iter().map(|s| s.to_string()).collect())
    .collect();
    assert_eq!(got, want);
    let mut edges = BTreeMap::new();
    edges.insert(1, BTreeSet::from([2]));
    edges.insert(2, BTreeSet::from([3]));
    edges.insert(3, BTreeSet::from([1, 4]));
    assert_eq!(circles(&edges), vec![vec![1, 2, 3]]);
}
