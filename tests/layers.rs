//! The runtime's modules form layers: each may import only modules of lower layers, so no
//! import goes up and none closes a cycle. The layers are the table in
//! `docs/ARCHITECTURE.md` ("Layers"); this test reads that table and every `crate::…` /
//! `super::…` path in `retry-runtime/src`, so the table and the code cannot drift apart.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Module name -> layer number, from the ARCHITECTURE table's rows `| N | `a`, `b` | … |`.
fn layers_from(doc: &str) -> BTreeMap<String, u32> {
    let section = doc
        .split("\n## ")
        .find(|s| s.starts_with("Layers"))
        .expect("docs/ARCHITECTURE.md has a `## Layers` section");
    let mut layers = BTreeMap::new();
    for line in section.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // ["", layer, modules, ...]
        let (Some(layer), Some(modules)) = (cells.get(1), cells.get(2)) else {
            continue;
        };
        let Ok(layer) = layer.parse::<u32>() else {
            continue;
        };
        for module in modules.split(',') {
            let module = module.trim().trim_matches('`');
            assert!(
                layers.insert(module.to_string(), layer).is_none(),
                "`{module}` is listed twice in the layers table"
            );
        }
    }
    layers
}

/// The source with comments, string and char literals blanked and `#[cfg(test)]` modules
/// removed: what is left are the paths the code really uses.
fn code_only(src: &str) -> String {
    let bytes: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let next = bytes.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < bytes.len() && bytes[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            i += 2;
            while i + 1 < bytes.len() && !(bytes[i] == '*' && bytes[i + 1] == '/') {
                i += 1;
            }
            i += 2;
        } else if c == 'r' && (next == Some('"') || next == Some('#')) && !ident_before(&bytes, i) {
            // A raw string: r"…" or r#"…"#.
            let mut j = i + 1;
            let mut hashes = 0;
            while bytes.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if bytes.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                if j >= bytes.len() {
                    break;
                }
                if bytes[j] == '"' && (0..hashes).all(|h| bytes.get(j + 1 + h) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            out.push_str("\"\"");
            i = j;
        } else if c == '"' {
            i += 1;
            while i < bytes.len() && bytes[i] != '"' {
                if bytes[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == '\'' && next == Some('\\') {
            // '\n', '\'', '\u{…}'
            let mut j = i + 2;
            while j < bytes.len() && bytes[j] != '\'' {
                j += 1;
            }
            i = j + 1;
            out.push_str("' '");
        } else if c == '\'' && bytes.get(i + 2) == Some(&'\'') {
            i += 3;
            out.push_str("' '");
        } else {
            out.push(c);
            i += 1;
        }
    }
    remove_test_modules(&out)
}

fn ident_before(bytes: &[char], i: usize) -> bool {
    i > 0 && (bytes[i - 1].is_alphanumeric() || bytes[i - 1] == '_')
}

fn remove_test_modules(code: &str) -> String {
    let mut code = code.to_string();
    while let Some(at) = code.find("#[cfg(test)]") {
        let rest = &code[at..];
        let Some(open) = rest.find('{') else { break };
        let mut depth = 0;
        let mut end = rest.len();
        for (k, ch) in rest[open..].char_indices() {
            match ch {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = open + k + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        code.replace_range(at..at + end, "");
    }
    code
}

/// The top-level modules a file's code names: `crate::a::…`, `crate::{a, b::c}`, and (in a
/// file at the top of `src`) `super::a`.
fn imports(code: &str, top_level_file: bool) -> Vec<String> {
    let mut found = Vec::new();
    // Each item of a `{…}` list (or the one path): its first segment, and its second too
    // (`a::b`) for a sub-module that has a row of its own.
    let mut push_idents = |list: &str| {
        let mut depth = 0;
        let mut items = vec![String::new()];
        for ch in list.chars() {
            match ch {
                ',' if depth == 0 => items.push(String::new()),
                '{' => depth += 1,
                '}' => depth -= 1,
                _ => {}
            }
            if let Some(item) = items.last_mut().filter(|_| ch != ',' || depth > 0) {
                item.push(ch);
            }
        }
        let ident = |text: &str| -> String {
            text.chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect()
        };
        for item in items {
            let mut segments = item.trim_start().split("::");
            let first = ident(segments.next().unwrap_or_default());
            let second = segments.next().map(ident).unwrap_or_default();
            match (first.is_empty(), second.is_empty()) {
                (false, false) => found.push(format!("{first}::{second}")),
                (false, true) => found.push(first),
                _ => {}
            }
        }
    };
    let scan = |prefix: &str, found_list: &mut dyn FnMut(&str)| {
        let mut rest = code;
        while let Some(at) = rest.find(prefix) {
            let preceded = rest[..at]
                .chars()
                .last()
                .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$');
            rest = &rest[at + prefix.len()..];
            if preceded {
                continue;
            }
            if let Some(group) = rest.strip_prefix('{') {
                let mut depth = 1;
                let end = group
                    .char_indices()
                    .find(|&(_, c)| {
                        match c {
                            '{' => depth += 1,
                            '}' => depth -= 1,
                            _ => {}
                        }
                        depth == 0
                    })
                    .map_or(group.len(), |(k, _)| k);
                found_list(&group[..end]);
            } else {
                let path: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                    .collect();
                found_list(&path);
            }
        }
    };
    scan("crate::", &mut |list| push_idents(list));
    if top_level_file {
        scan("super::", &mut |list| push_idents(list));
    }
    found
}

/// Every import that breaks the layering: `(file, module it is in, module it imports)`.
fn violations(
    layers: &BTreeMap<String, u32>,
    files: &[(String, String)],
) -> Vec<(String, String, String)> {
    // A module is its top-level module, unless a sub-module (`a::b`) has a row of its own.
    let listed = |top: &str, sub: Option<&str>| match sub {
        Some(sub) if layers.contains_key(&format!("{top}::{sub}")) => format!("{top}::{sub}"),
        _ => top.to_string(),
    };
    let mut bad = Vec::new();
    for (path, src) in files {
        let mut parts = path.split('/').map(|p| p.trim_end_matches(".rs"));
        let top = parts.next().unwrap();
        let module = &listed(top, parts.next());
        if module == "lib" {
            continue; // the crate root re-exports what users need
        }
        let Some(&own) = layers.get(module) else {
            bad.push((
                path.clone(),
                module.to_string(),
                "(not in the table)".into(),
            ));
            continue;
        };
        let top_level_file =
            !path.contains('/') || path.ends_with("/mod.rs") && path.matches('/').count() == 1;
        for imported in imports(&code_only(src), top_level_file) {
            let mut parts = imported.split("::");
            let imported = listed(parts.next().unwrap(), parts.next());
            if &imported == module || imported == "self" {
                continue;
            }
            match layers.get(&imported) {
                Some(&theirs) if theirs < own => {}
                // A crate-root item (`crate::Spend`) hides which module it comes from.
                _ => bad.push((path.clone(), module.to_string(), imported)),
            }
        }
    }
    bad.sort();
    bad.dedup();
    bad
}

fn sources(dir: &Path, base: &Path, out: &mut Vec<(String, String)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path: PathBuf = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, base, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let rel = path
                .strip_prefix(base)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            out.push((rel, std::fs::read_to_string(&path).unwrap()));
        }
    }
}

#[test]
fn runtime_modules_import_only_lower_layers() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("docs/ARCHITECTURE.md")).unwrap();
    let layers = layers_from(&doc);
    let src = root.join("retry-runtime/src");
    let mut files = Vec::new();
    sources(&src, &src, &mut files);
    assert!(files.len() > 20, "read the runtime's sources");
    // Every module in the code is in the table, and every module in the table is in the code.
    for module in layers.keys() {
        let module = module.replace("::", "/");
        assert!(
            files.iter().any(|(path, _)| path == &format!("{module}.rs")
                || path.starts_with(&format!("{module}/"))),
            "the layers table lists `{module}`, which is not a module of retry-runtime"
        );
    }
    let bad = violations(&layers, &files);
    assert!(
        bad.is_empty(),
        "imports that go up a layer (or sideways, or through the crate root):\n{}",
        bad.iter()
            .map(|(file, from, to)| format!("  {file}: `{from}` imports `{to}`"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn the_checker_sees_upward_and_sideways_imports() {
    let layers: BTreeMap<String, u32> =
        [("clock", 1), ("spend", 2), ("store", 3), ("a", 4), ("b", 4)]
            .into_iter()
            .map(|(m, l)| (m.to_string(), l))
            .collect();
    let file = |path: &str, src: &str| (path.to_string(), src.to_string());
    let clean = [
        file("store/mod.rs", "use crate::{clock::now_ms, spend::{Spend, Budget}};\nuse super::clock;"),
        file("store/redis.rs", "use super::Admit; // super:: inside store is store itself"),
        file(
            "spend.rs",
            "// crate::store in a comment\nconst S: &str = \"crate::store\";\nconst C: char = '\"';\nfn f() -> u64 { crate::clock::now() }\n#[cfg(test)]\nmod tests { use crate::store::X; }",
        ),
    ];
    assert_eq!(violations(&layers, &clean), vec![]);
    let upward = [file("spend.rs", "use crate::store::Shared;")];
    assert_eq!(
        violations(&layers, &upward),
        vec![("spend.rs".into(), "spend".into(), "store".into())]
    );
    let grouped = [file("clock.rs", "use crate::{spend::Spend, store};")];
    assert_eq!(violations(&layers, &grouped).len(), 2);
    let sideways = [file("a.rs", "fn f() { crate::b::g() }")];
    assert_eq!(
        violations(&layers, &sideways).len(),
        1,
        "same layer: a cycle waiting to happen"
    );
    let through_root = [file(
        "store/shared.rs",
        "fn f() -> crate::Spend { todo!() }",
    )];
    assert_eq!(violations(&layers, &through_root).len(), 1);
    let unlisted = [file("newcomer.rs", "")];
    assert_eq!(violations(&layers, &unlisted).len(), 1);
    // `a::top` has a row of its own, above `b`: it may import `b` and `a`; `a` may not
    // import it, nor may `b`.
    let mut layers = layers;
    layers.insert("a::top".to_string(), 5);
    let sub = [
        file(
            "a/top/mod.rs",
            "use crate::b::X; use crate::a::other::Y; use crate::a::top::Z;",
        ),
        file(
            "a/top/inner.rs",
            "use crate::{b::X, spend}; use crate::clock;",
        ),
    ];
    assert_eq!(violations(&layers, &sub), vec![]);
    let up_into_sub = [
        file("a/mod.rs", "use crate::a::top::Z;"),
        file("b.rs", "use crate::a::top::Z;"),
    ];
    assert_eq!(violations(&layers, &up_into_sub).len(), 2);
}
