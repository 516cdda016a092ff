//! The structure drawn from tap-daemon's imports: every `crate::…` (and `super::…`) path in a
//! module's code is an edge to the module it names. The graph must have no circle, between files
//! and between the top-level folders, so that every import runs one way (lib.rs gives the layers).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module's path (`["watcher", "command"]`) and its code without comments and test modules.
fn modules() -> BTreeMap<Vec<String>, String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = BTreeMap::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel: PathBuf = path.strip_prefix(&src).unwrap().with_extension("");
                let mut parts: Vec<String> = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                if parts.last().is_some_and(|p| p == "mod") {
                    parts.pop();
                }
                if parts == ["lib"] || parts == ["main"] {
                    continue;
                }
                out.insert(parts, code_of(&std::fs::read_to_string(&path).unwrap()));
            }
        }
    }
    out
}

/// The code that imports: comments and `#[cfg(test)]` modules left out (tests may reach anywhere).
fn code_of(text: &str) -> String {
    let without_tests = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    without_tests
        .lines()
        .map(|l| match l.find("//") {
            // `//` inside a string literal (a URL) is rare in paths we look for; cutting it is harmless.
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The modules a module's code names through `crate::a::b` or `super::x` (the longest known prefix).
fn edges(
    module: &[String],
    code: &str,
    known: &BTreeSet<Vec<String>>,
    is_folder: bool,
) -> BTreeSet<Vec<String>> {
    let mut out = BTreeSet::new();
    let bytes = code.as_bytes();
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b':';
    // A folder's mod.rs naming its own submodules relatively (`command::Command`).
    for child in known
        .iter()
        .filter(|k| k.len() == module.len() + 1 && k.starts_with(module))
    {
        let needle = format!("{}::", child[module.len()]);
        if code
            .match_indices(&needle)
            .any(|(i, _)| i == 0 || !ident(bytes[i - 1]))
        {
            out.insert(child.clone());
        }
    }
    for (start, prefix) in code
        .match_indices("crate::")
        .map(|(i, _)| (i, "crate::"))
        .chain(code.match_indices("super::").map(|(i, _)| (i, "super::")))
    {
        if start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_') {
            continue;
        }
        let rest = &code[start + prefix.len()..];
        let path: Vec<String> = rest
            .split("::")
            .map(|seg| {
                seg.chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect::<String>()
            })
            .take_while(|seg| !seg.is_empty() && seg.chars().next().unwrap().is_ascii_lowercase())
            .collect();
        let mut full = if prefix == "crate::" {
            Vec::new()
        } else {
            // `super` of a folder's mod.rs is the folder's parent.
            let mut parent = module.to_vec();
            parent.pop();
            let _ = is_folder;
            parent
        };
        full.extend(path);
        while !full.is_empty() && !known.contains(&full) {
            full.pop();
        }
        if !full.is_empty() && full != module {
            out.insert(full);
        }
    }
    out
}

/// A circle in a graph, if any (depth-first search).
fn find_cycle<N: Ord + Clone>(graph: &BTreeMap<N, BTreeSet<N>>) -> Option<Vec<N>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit<N: Ord + Clone>(
        n: &N,
        graph: &BTreeMap<N, BTreeSet<N>>,
        marks: &mut BTreeMap<N, Mark>,
        path: &mut Vec<N>,
    ) -> Option<Vec<N>> {
        match marks.get(n) {
            Some(Mark::Done) => return None,
            Some(Mark::Open) => {
                let at = path.iter().position(|p| p == n).unwrap();
                let mut cycle = path[at..].to_vec();
                cycle.push(n.clone());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(n.clone(), Mark::Open);
        path.push(n.clone());
        for m in graph.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, graph, marks, path) {
                return Some(c);
            }
        }
        path.pop();
        marks.insert(n.clone(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for n in graph.keys() {
        if let Some(c) = visit(n, graph, &mut marks, &mut Vec::new()) {
            return Some(c);
        }
    }
    None
}

fn file_graph() -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let modules = modules();
    let known: BTreeSet<Vec<String>> = modules.keys().cloned().collect();
    let folders: BTreeSet<Vec<String>> = known
        .iter()
        .filter(|m| known.iter().any(|o| o.len() > m.len() && o.starts_with(m)))
        .cloned()
        .collect();
    modules
        .iter()
        .map(|(m, code)| (m.clone(), edges(m, code, &known, folders.contains(m))))
        .collect()
}

fn show(path: &[Vec<String>]) -> String {
    path.iter()
        .map(|m| m.join("::"))
        .collect::<Vec<_>>()
        .join(" -> ")
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let graph = file_graph();
    assert!(graph.len() > 20, "found only {} modules", graph.len());
    if let Some(cycle) = find_cycle(&graph) {
        panic!("import circle between modules: {}", show(&cycle));
    }
}

#[test]
fn the_top_level_folders_import_one_way() {
    let mut folders: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for (m, to) in file_graph() {
        let top = vec![m[0].clone()];
        let entry = folders.entry(top.clone()).or_default();
        for t in to {
            if t[0] != top[0] {
                entry.insert(vec![t[0].clone()]);
            }
        }
    }
    if let Some(cycle) = find_cycle(&folders) {
        panic!("import circle between folders: {}", show(&cycle));
    }
}

#[test]
fn the_checker_sees_a_circle_and_a_path() {
    // The checker itself: a made-up graph with a circle is caught, and paths resolve to modules.
    let known: BTreeSet<Vec<String>> = [vec!["a".to_string()], vec!["b".into(), "c".into()]]
        .into_iter()
        .collect();
    let e = edges(
        &["a".into()],
        "use crate::b::c::Thing; fn f() { crate::a::g() }",
        &known,
        false,
    );
    assert_eq!(e, [vec!["b".to_string(), "c".into()]].into_iter().collect());
    let mut g: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    g.insert("x", ["y"].into());
    g.insert("y", ["z"].into());
    g.insert("z", BTreeSet::new());
    assert_eq!(find_cycle(&g), None);
    g.insert("z", ["x"].into());
    assert!(find_cycle(&g).is_some());
}
