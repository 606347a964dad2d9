//! The crate's layering, read from its source: which module uses which. Every module of
//! `src/` is a node; a `crate::…`, `super::…` or child-module path in its code (comments and
//! unit tests left out) is an edge to the deepest module that path names. The tests hold the
//! shape `src/lib.rs` promises: no module uses one that uses it back (no cycles, also between
//! a parent and its children), the top-level modules use only those listed before them in
//! `lib.rs`, and the transport, the wire protocol, identity and the bridge know nothing of the
//! stub or the agent.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// A module path, `agent::dial_loop`; the crate root is the empty path.
type Module = String;

/// Every module of `src/` (the binary's `main.rs` aside) and the text of its file.
fn modules() -> BTreeMap<Module, String> {
    fn walk(dir: &Path, prefix: &[String], out: &mut BTreeMap<Module, String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_stem().unwrap().to_str().unwrap().to_owned();
            if path.is_dir() {
                walk(&path, &[prefix, &[name]].concat(), out);
            } else if path.extension().is_some_and(|e| e == "rs") && name != "main" {
                let segments = match name.as_str() {
                    "mod" | "lib" => prefix.to_vec(),
                    _ => [prefix, &[name]].concat(),
                };
                out.insert(segments.join("::"), std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &[], &mut out);
    out
}

/// The code of a file without comments and without its unit tests.
fn code(text: &str) -> String {
    let text = text.split("#[cfg(test)]").next().unwrap();
    text.lines().map(|l| l.split("//").next().unwrap()).collect::<Vec<_>>().join("\n")
}

/// The paths a `use` tree (or a path in code) at the start of `text` names: `a::b::{c, d::e}`
/// gives `a::b::c` and `a::b::d::e`.
fn expand(text: &str) -> Vec<Vec<String>> {
    /// Parses one tree after `prefix`; returns how many bytes of `text` it took.
    fn tree(text: &str, mut prefix: Vec<String>, out: &mut Vec<Vec<String>>) -> usize {
        let mut at = 0;
        loop {
            let rest = &text[at..];
            let trimmed = rest.trim_start();
            at += rest.len() - trimmed.len();
            if trimmed.starts_with('{') {
                at += 1;
                loop {
                    at += tree(&text[at..], prefix.clone(), out);
                    let rest = &text[at..];
                    let trimmed = rest.trim_start();
                    at += rest.len() - trimmed.len();
                    match trimmed.chars().next() {
                        Some(',') => at += 1,
                        Some('}') => return at + 1,
                        _ => return at,
                    }
                    if text[at..].trim_start().starts_with('}') {
                        at += text[at..].find('}').unwrap() + 1;
                        return at;
                    }
                }
            }
            let len = trimmed.find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(trimmed.len());
            if len == 0 {
                out.push(prefix);
                return at;
            }
            prefix.push(trimmed[..len].to_owned());
            at += len;
            if text[at..].starts_with("::") {
                at += 2;
            } else {
                out.push(prefix);
                return at;
            }
        }
    }
    let mut out = Vec::new();
    tree(text, Vec::new(), &mut out);
    out
}

/// The modules `module` uses.
fn uses(module: &str, text: &str, all: &BTreeMap<Module, String>) -> BTreeSet<Module> {
    let code = code(text);
    let here: Vec<String> = if module.is_empty() { vec![] } else { module.split("::").map(String::from).collect() };
    // A `mod.rs` or `lib.rs` is its directory's module: `super` is the one above it.
    let parent = here[..here.len().saturating_sub(1)].to_vec();
    let children: BTreeSet<&str> = all
        .keys()
        .filter_map(|m| if module.is_empty() { Some(m.as_str()) } else { m.strip_prefix(&format!("{module}::")) })
        .filter(|child| !child.is_empty() && !child.contains("::"))
        .collect();
    let mut found = Vec::new();
    for (i, _) in code.match_indices("crate::") {
        if code[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_') {
            continue;
        }
        found.extend(expand(&code[i + "crate::".len()..]));
    }
    for (i, _) in code.match_indices("super::") {
        if code[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        found.extend(expand(&code[i + "super::".len()..]).into_iter().map(|p| [parent.clone(), p].concat()));
    }
    for line in code.lines() {
        let line = line.trim_start().trim_start_matches("pub ");
        if let Some(rest) = line.strip_prefix("use ")
            && children.iter().any(|c| rest.starts_with(&format!("{c}::")) || rest.starts_with(&format!("{c};")))
        {
            found.extend(expand(rest).into_iter().map(|p| [here.clone(), p].concat()));
        }
    }
    found
        .into_iter()
        .filter_map(|path| (0..=path.len()).rev().map(|n| path[..n].join("::")).find(|m| all.contains_key(m)))
        .filter(|m| m != module)
        .collect()
}

fn graph() -> BTreeMap<Module, BTreeSet<Module>> {
    let all = modules();
    all.iter().map(|(module, text)| (module.clone(), uses(module, text, &all))).collect()
}

fn top(module: &str) -> &str {
    module.split("::").next().unwrap()
}

#[test]
fn the_reader_finds_uses_of_every_form() {
    let all: BTreeMap<Module, String> =
        ["", "a", "a::b", "a::c", "d"].iter().map(|m| (m.to_string(), String::new())).collect();
    let text = "use super::c::Thing;\nuse crate::{d, a::b::{X, Y}};\nfn f() { crate::d::run(); }\n// crate::nothing\n";
    let found = uses("a::b", text, &all);
    assert_eq!(found, ["a::c", "d"].iter().map(|m| m.to_string()).collect(), "a::b itself is not an edge");
    assert_eq!(uses("a", "use b::X;\n", &all), ["a::b".to_string()].into());
}

#[test]
fn no_module_uses_one_that_uses_it_back() {
    let graph = graph();
    // Depth-first search for a cycle, reporting its path.
    fn visit(
        m: &Module,
        graph: &BTreeMap<Module, BTreeSet<Module>>,
        path: &mut Vec<Module>,
        done: &mut BTreeSet<Module>,
    ) -> Option<Vec<Module>> {
        if let Some(at) = path.iter().position(|p| p == m) {
            return Some([&path[at..], std::slice::from_ref(m)].concat());
        }
        if !done.insert(m.clone()) {
            return None;
        }
        path.push(m.clone());
        for next in &graph[m] {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    for module in graph.keys() {
        if let Some(cycle) = visit(module, &graph, &mut Vec::new(), &mut done) {
            panic!("modules that use each other: {}", cycle.join(" -> "));
        }
    }
}

#[test]
fn top_level_modules_use_only_those_listed_before_them_in_lib_rs() {
    let lib = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs")).unwrap();
    let order: Vec<&str> = lib.lines().filter_map(|l| l.strip_prefix("//! - [`")?.split('`').next()).collect();
    let graph = graph();
    let tops: BTreeSet<&str> = graph.keys().map(|m| top(m)).filter(|t| !t.is_empty()).collect();
    assert_eq!(tops, order.iter().copied().collect(), "lib.rs lists every top-level module, once");
    let rank = |m: &str| order.iter().position(|t| *t == top(m)).unwrap();
    for (module, used) in &graph {
        for other in used.iter().filter(|o| !module.is_empty() && !o.is_empty() && top(o) != top(module)) {
            assert!(
                rank(other) < rank(module),
                "{module} uses {other}, which lib.rs lists after it: move one, or fix the layering"
            );
        }
    }
}

#[test]
fn transport_wire_identity_and_bridge_know_nothing_of_stub_or_agent() {
    let graph = graph();
    // Everything each module reaches, directly or not.
    let reach = |start: &str| {
        let mut seen = BTreeSet::new();
        let mut todo = vec![start.to_owned()];
        while let Some(m) = todo.pop() {
            for next in &graph[&m] {
                if seen.insert(next.clone()) {
                    todo.push(next.clone());
                }
            }
        }
        seen
    };
    for (module, _) in graph.iter().filter(|(m, _)| ["transport", "wire", "identity", "bridge"].contains(&top(m))) {
        let role = reach(module).into_iter().find(|m| ["stub", "agent"].contains(&top(m)));
        assert_eq!(role, None, "{module} reaches a role module");
    }
    for module in graph.keys().filter(|m| top(m) == "agent") {
        assert!(!reach(module).iter().any(|m| top(m) == "stub"), "{module} reaches the stub");
    }
}
