//! Layout check (STYLE, issue 15): no two top-level modules of `src/` import each other. Reads the
//! sources (no binary needed): each file's `crate::X` paths, grouped `use crate::{X, Y::z}` lists
//! included, are counted against its top-level module (`src/X.rs` or the folder `src/X/`);
//! comments are skipped, and so are test files (`*_tests.rs`: a module's tests may use its
//! callers), but not inline `#[cfg(test)]` modules. Fails naming both sides' files for any pair
//! that refers both ways; longer cycles are printed, not failed.
//! `cargo test --test module_graph -- --nocapture` prints the whole graph.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level module -> (module it refers to -> files that do).
type Graph = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src/") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of `text` without `//` comments (line and doc comments; `//` inside a string
/// literal is rare enough here to ignore).
fn code(text: &str) -> String {
    text.lines().map(|l| l.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n")
}

fn ident_at(s: &str) -> &str {
    let end = s.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(s.len());
    &s[..end]
}

/// The top-level modules that `code` names after `crate::`.
fn referenced(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // `crate::{a, b::{c, d}, e}`: the first name of each top-level item of the group.
            let mut depth = 0;
            let mut item_start = true;
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && (c.is_ascii_alphabetic() || c == '_') => {
                        item_start = false;
                        found.insert(ident_at(&group[j..]).to_string());
                    }
                    _ => {}
                }
            }
        } else {
            let name = ident_at(rest);
            if !name.is_empty() {
                found.insert(name.to_string());
            }
        }
    }
    found.remove("self");
    found
}

fn graph(src: &Path) -> Graph {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut g = Graph::new();
    for f in files {
        let rel = f.strip_prefix(src).expect("under src").to_string_lossy().replace('\\', "/");
        if rel == "lib.rs" || rel == "main.rs" || rel.ends_with("_tests.rs") {
            continue; // the crate root and the binary list every module; test files
        }
        let module = rel.split('/').next().unwrap_or("").trim_end_matches(".rs").to_string();
        let text = std::fs::read_to_string(&f).expect("read source");
        for dep in referenced(&code(&text)) {
            if dep != module {
                g.entry(module.clone()).or_default().entry(dep).or_default().insert(rel.clone());
            }
        }
    }
    g
}

#[test]
fn no_two_modules_import_each_other() {
    let g = graph(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    assert!(g.len() > 10, "found too few modules: {:?}", g.keys());
    let mut cycles = Vec::new();
    for (a, deps) in &g {
        println!("{a} -> {}", deps.keys().cloned().collect::<Vec<_>>().join(", "));
        for (b, files) in deps {
            if a < b {
                if let Some(back) = g.get(b).and_then(|d| d.get(a)) {
                    cycles.push(format!("{a} <-> {b}: {a} in {files:?}, {b} in {back:?}"));
                }
            }
        }
    }
    for c in longer_cycles(&g) {
        println!("note: a longer cycle: {}", c.join(" -> "));
    }
    assert!(cycles.is_empty(), "modules that import each other:\n{}", cycles.join("\n"));
}

/// Groups of 3 or more modules that reach one another (each group once, as a sorted list).
fn longer_cycles(g: &Graph) -> Vec<Vec<String>> {
    let reach = |from: &str| {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.to_string()];
        while let Some(m) = todo.pop() {
            for d in g.get(&m).into_iter().flat_map(|d| d.keys()) {
                if seen.insert(d.clone()) {
                    todo.push(d.clone());
                }
            }
        }
        seen
    };
    let all: BTreeMap<&String, BTreeSet<String>> = g.keys().map(|m| (m, reach(m))).collect();
    let mut groups = BTreeSet::new();
    for (m, r) in &all {
        let group: Vec<String> =
            r.iter().filter(|o| all.get(o).is_some_and(|back| back.contains(*m))).cloned().collect();
        if group.len() >= 3 {
            groups.insert(group);
        }
    }
    groups.into_iter().collect()
}

#[test]
fn the_reader_sees_grouped_and_nested_paths() {
    let c = code("use crate::{a, b::{c, d}, e::f};\nuse crate::g::h; // crate::comment\nx = crate::i::j();");
    let want: BTreeSet<String> = ["a", "b", "e", "g", "i"].iter().map(|s| s.to_string()).collect();
    assert_eq!(referenced(&c), want);
}

#[test]
fn longer_cycles_are_found() {
    let mut g = Graph::new();
    for (a, b) in [("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")] {
        g.entry(a.into()).or_default().entry(b.into()).or_default().insert(format!("{a}.rs"));
    }
    assert_eq!(longer_cycles(&g), vec![vec!["a".to_string(), "b".into(), "c".into()]]);
}
