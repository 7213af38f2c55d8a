//! The gateway's modules depend on each other one way only, and no source
//! file grows past [`MAX_LINES`].
//!
//! Every `src/**/*.rs` file of the library is a module (`lib.rs` the crate
//! root, `a/mod.rs` and `a.rs` module `a`, `a/b.rs` module `a::b`). A
//! reference from one module to another is any `crate::…`, `super::…` or
//! `self::…` path in code (in `use` trees and inline), and any path that
//! starts with the name of one of the module's own submodules; comments,
//! string literals and `#[cfg(test)]` items are left out. A path names the
//! deepest module it reaches (`crate::views::ReferralView` is module
//! `views`). Declaring a submodule (`mod x;`) is not a reference. The test
//! fails on any cycle in that graph, naming the modules and one reference
//! of each edge, and on any file over the limit.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The longest a source file may be.
const MAX_LINES: usize = 850;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            rust_files(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    Ok(())
}

/// The module path of a file (`["views", "index"]`; `[]` for the root), or
/// `None` for files outside the library (`main.rs`, a binary).
fn module_of(relative: &Path) -> Option<Vec<String>> {
    let mut parts: Vec<String> = relative
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let file = parts.pop()?;
    let stem = file.strip_suffix(".rs")?.to_owned();
    match stem.as_str() {
        "lib" if parts.is_empty() => {}
        "main" if parts.is_empty() => return None,
        "mod" => {}
        _ => parts.push(stem),
    }
    Some(parts)
}

/// The source with comments and string and character literals blanked out
/// (newlines kept, so line numbers stay right).
fn code_only(src: &str) -> String {
    let b: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < b.len() && b[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == '/' && b.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if b[i] == '*' && b.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(b[i]));
                    i += 1;
                }
            }
        } else if c == 'r'
            && (next == Some('"') || next == Some('#'))
            && (i == 0 || !(b[i - 1].is_alphanumeric() || b[i - 1] == '_'))
        {
            // Raw string r"…" or r#"…"#.
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                if j >= b.len() {
                    break;
                }
                if b[j] == '"' && (0..hashes).all(|k| b.get(j + 1 + k) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            for ch in &b[i..j.min(b.len())] {
                out.push(blank(*ch));
            }
            i = j;
        } else if c == '"' {
            out.push(' ');
            i += 1;
            while i < b.len() && b[i] != '"' {
                if b[i] == '\\' {
                    out.push(' ');
                    i += 1;
                }
                if i < b.len() {
                    out.push(blank(b[i]));
                    i += 1;
                }
            }
            out.push(' ');
            i += 1;
        } else if c == '\'' {
            // A character literal ('x', '\n', '\u{1F600}'), or a lifetime.
            let close = if next == Some('\\') {
                (i + 2..b.len().min(i + 12)).find(|&k| b[k] == '\'')
            } else if b.get(i + 2) == Some(&'\'') {
                Some(i + 2)
            } else {
                None
            };
            match close {
                Some(end) => {
                    for _ in i..=end {
                        out.push(' ');
                    }
                    i = end + 1;
                }
                None => {
                    out.push(c);
                    i += 1;
                }
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// `code` without the items marked `#[cfg(test)]`.
fn without_tests(code: &str) -> String {
    const MARK: &str = "#[cfg(test)]";
    let mut out = String::with_capacity(code.len());
    let mut rest = code;
    while let Some(at) = rest.find(MARK) {
        out.push_str(&rest[..at]);
        let item = &rest[at..];
        // The item ends at its first `;` unless a `{` comes first, then at
        // the matching `}`.
        let semi = item.find(';');
        let brace = item.find('{');
        let end = match (semi, brace) {
            (Some(s), Some(b)) if s < b => s + 1,
            (_, Some(b)) => {
                let mut depth = 0usize;
                let mut end = item.len();
                for (k, ch) in item[b..].char_indices() {
                    match ch {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                end = b + k + 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                end
            }
            (Some(s), None) => s + 1,
            (None, None) => item.len(),
        };
        out.extend(
            item[..end]
                .chars()
                .map(|c| if c == '\n' { '\n' } else { ' ' }),
        );
        rest = &item[end..];
    }
    out.push_str(rest);
    out
}

fn is_ident_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Expand a `use` tree (`crate::{a, b::{c, d}}`) into its paths.
fn expand_use(tree: &str) -> Vec<Vec<String>> {
    fn split_top(s: &str) -> Vec<&str> {
        let mut parts = Vec::new();
        let (mut depth, mut start) = (0, 0);
        for (i, c) in s.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    parts.push(&s[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        parts.push(&s[start..]);
        parts
    }
    fn go(prefix: &[String], tree: &str, out: &mut Vec<Vec<String>>) {
        let tree = tree.trim();
        if tree.is_empty() {
            return;
        }
        if let Some(open) = tree.find('{') {
            let head = tree[..open].trim().trim_end_matches("::");
            let inner = tree[open + 1..].trim_end().trim_end_matches('}');
            let mut p = prefix.to_vec();
            p.extend(
                head.split("::")
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned),
            );
            for part in split_top(inner) {
                go(&p, part, out);
            }
        } else {
            let path = tree.split(" as ").next().unwrap_or(tree);
            let mut p = prefix.to_vec();
            for seg in path.split("::").map(str::trim).filter(|s| !s.is_empty()) {
                // `a::{self, b}` names `a` itself.
                if seg == "self" && !p.is_empty() {
                    continue;
                }
                p.push(seg.to_owned());
            }
            out.push(p);
        }
    }
    let mut out = Vec::new();
    go(
        &[],
        &tree.split_whitespace().collect::<Vec<_>>().join(" "),
        &mut out,
    );
    out
}

/// Every path in `code` with its line: `use` trees expanded, and inline
/// paths of two or more segments.
fn paths(code: &str) -> Vec<(usize, Vec<String>)> {
    let mut out = Vec::new();
    let line_of = |at: usize| code[..at].matches('\n').count() + 1;
    let chars: Vec<(usize, char)> = code.char_indices().collect();
    let mut k = 0;
    while k < chars.len() {
        let (at, c) = chars[k];
        let starts_ident = is_ident_char(c)
            && !c.is_ascii_digit()
            && (k == 0 || !is_ident_char(chars[k - 1].1) && chars[k - 1].1 != ':');
        if !starts_ident {
            k += 1;
            continue;
        }
        let word_end = chars[k..]
            .iter()
            .find(|(_, ch)| !is_ident_char(*ch))
            .map_or(code.len(), |(i, _)| *i);
        let word = &code[at..word_end];
        if word == "use"
            && let Some(semi) = code[word_end..].find(';')
        {
            let tree = &code[word_end..word_end + semi];
            for p in expand_use(tree) {
                out.push((line_of(at), p));
            }
            let stop = word_end + semi;
            while k < chars.len() && chars[k].0 < stop {
                k += 1;
            }
            continue;
        }
        // An inline path: ident (:: ident)+
        let mut segs = vec![word.to_owned()];
        let mut pos = word_end;
        loop {
            let rest = &code[pos..];
            let trimmed = rest.trim_start();
            if !trimmed.starts_with("::") {
                break;
            }
            let after = trimmed[2..].trim_start();
            let skipped = rest.len() - after.len();
            let seg_len = after
                .char_indices()
                .find(|(_, ch)| !is_ident_char(*ch))
                .map_or(after.len(), |(i, _)| i);
            if seg_len == 0 {
                break;
            }
            segs.push(after[..seg_len].to_owned());
            pos += skipped + seg_len;
        }
        if segs.len() > 1 {
            out.push((line_of(at), segs));
        }
        while k < chars.len() && chars[k].0 < pos {
            k += 1;
        }
    }
    out
}

/// The module a path from `from` names: the deepest known module it
/// reaches; `None` for paths outside the crate.
fn resolve(
    from: &[String],
    path: &[String],
    modules: &BTreeSet<Vec<String>>,
) -> Option<Vec<String>> {
    let first = path.first()?;
    let (mut at, rest): (Vec<String>, &[String]) = match first.as_str() {
        "crate" => (Vec::new(), &path[1..]),
        "self" => (from.to_vec(), &path[1..]),
        "super" => {
            let mut m = from.to_vec();
            let mut i = 0;
            while path.get(i).map(String::as_str) == Some("super") {
                m.pop()?;
                i += 1;
            }
            (m, &path[i..])
        }
        _ => {
            let mut child = from.to_vec();
            child.push(first.clone());
            if !modules.contains(&child) {
                return None;
            }
            (from.to_vec(), path)
        }
    };
    for seg in rest {
        let mut next = at.clone();
        next.push(seg.clone());
        if modules.contains(&next) {
            at = next;
        } else {
            break;
        }
    }
    Some(at)
}

fn name(m: &[String]) -> String {
    if m.is_empty() {
        "crate".to_owned()
    } else {
        m.join("::")
    }
}

/// Strongly connected components with more than one module (Tarjan).
fn cycles(graph: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Vec<Vec<Vec<String>>> {
    struct Tarjan<'g> {
        graph: &'g BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        index: BTreeMap<Vec<String>, usize>,
        low: BTreeMap<Vec<String>, usize>,
        stack: Vec<Vec<String>>,
        on_stack: BTreeSet<Vec<String>>,
        next: usize,
        out: Vec<Vec<Vec<String>>>,
    }
    impl Tarjan<'_> {
        fn visit(&mut self, v: &Vec<String>) {
            self.index.insert(v.clone(), self.next);
            self.low.insert(v.clone(), self.next);
            self.next += 1;
            self.stack.push(v.clone());
            self.on_stack.insert(v.clone());
            let targets: Vec<Vec<String>> = self
                .graph
                .get(v)
                .map(|t| t.iter().cloned().collect())
                .unwrap_or_default();
            for w in &targets {
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let low = self.low[v].min(self.low[w]);
                    self.low.insert(v.clone(), low);
                } else if self.on_stack.contains(w) {
                    let low = self.low[v].min(self.index[w]);
                    self.low.insert(v.clone(), low);
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(&w);
                    let done = &w == v;
                    component.push(w);
                    if done {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort();
                    self.out.push(component);
                }
            }
        }
    }
    let mut t = Tarjan {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !t.index.contains_key(v) {
            t.visit(v);
        }
    }
    t.out
}

struct Crate {
    /// Module -> modules it refers to.
    graph: BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
    /// (from, to) -> one place the reference is made (`file:line`).
    witness: BTreeMap<(Vec<String>, Vec<String>), String>,
    /// Lines of every file.
    lines: Vec<(String, usize)>,
}

fn read_crate() -> Result<Crate, Box<dyn std::error::Error>> {
    let src = src_dir();
    let mut files = Vec::new();
    rust_files(&src, &mut files)?;
    files.sort();
    let mut sources = Vec::new();
    let mut lines = Vec::new();
    for f in &files {
        let relative = f.strip_prefix(&src)?.to_path_buf();
        let text = std::fs::read_to_string(f)?;
        lines.push((relative.display().to_string(), text.lines().count()));
        if let Some(m) = module_of(&relative) {
            sources.push((relative, m, text));
        }
    }
    let modules: BTreeSet<Vec<String>> = sources.iter().map(|(_, m, _)| m.clone()).collect();
    let mut graph: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = modules
        .iter()
        .map(|m| (m.clone(), BTreeSet::new()))
        .collect();
    let mut witness = BTreeMap::new();
    for (relative, m, text) in &sources {
        let code = without_tests(&code_only(text));
        for (line, path) in paths(&code) {
            let Some(target) = resolve(m, &path, &modules) else {
                continue;
            };
            if &target == m {
                continue;
            }
            witness
                .entry((m.clone(), target.clone()))
                .or_insert_with(|| format!("{}:{line} ({})", relative.display(), path.join("::")));
            graph.entry(m.clone()).or_default().insert(target);
        }
    }
    Ok(Crate {
        graph,
        witness,
        lines,
    })
}

#[test]
fn gateway_modules_form_no_import_cycle() -> TestResult {
    let c = read_crate()?;
    assert!(
        c.graph.len() > 10,
        "modules not found: {:?}",
        c.graph.keys()
    );
    let found = cycles(&c.graph);
    let mut report = String::new();
    for component in &found {
        report.push_str(&format!(
            "cycle among {}:\n",
            component
                .iter()
                .map(|m| name(m))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        for from in component {
            for to in c.graph.get(from).into_iter().flatten() {
                if component.contains(to) {
                    let at = c
                        .witness
                        .get(&(from.clone(), to.clone()))
                        .cloned()
                        .unwrap_or_default();
                    report.push_str(&format!("  {} -> {}   at {at}\n", name(from), name(to)));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "the gateway's modules import each other in a circle:\n{report}"
    );
    Ok(())
}

#[test]
fn no_gateway_source_file_is_over_the_limit() -> TestResult {
    let c = read_crate()?;
    let long: Vec<String> = c
        .lines
        .iter()
        .filter(|(_, n)| *n > MAX_LINES)
        .map(|(f, n)| format!("{f}: {n} lines"))
        .collect();
    assert!(
        long.is_empty(),
        "files over {MAX_LINES} lines (split them by what they do):\n{}",
        long.join("\n")
    );
    Ok(())
}

/// The checker itself: it sees a cycle through `use` trees, `super::` and
/// inline paths, and nothing in comments, strings or tests.
#[test]
fn the_checker_reads_paths_as_the_compiler_would() {
    let code = code_only(
        "use crate::{a, b::{c, D}};\n// crate::zzz\nlet s = \"crate::yyy\";\nlet c = '\"';\nfn f<'a>() { super::x::y(); }\n#[cfg(test)]\nmod tests { use crate::www; }\n",
    );
    let code = without_tests(&code);
    let found: Vec<String> = paths(&code)
        .into_iter()
        .map(|(_, p)| p.join("::"))
        .collect();
    assert_eq!(
        found,
        vec!["crate::a", "crate::b::c", "crate::b::D", "super::x::y"]
    );
    let modules: BTreeSet<Vec<String>> = [
        vec![],
        vec!["b".to_owned()],
        vec!["b".to_owned(), "c".to_owned()],
    ]
    .into_iter()
    .collect();
    let from = vec!["b".to_owned(), "c".to_owned()];
    assert_eq!(
        resolve(&from, &["super".to_owned(), "Thing".to_owned()], &modules),
        Some(vec!["b".to_owned()])
    );
    assert_eq!(
        resolve(
            &[],
            &["b".to_owned(), "c".to_owned(), "f".to_owned()],
            &modules
        ),
        Some(from.clone())
    );
    assert_eq!(
        resolve(&[], &["serde".to_owned(), "Value".to_owned()], &modules),
        None
    );
    let mut graph = BTreeMap::new();
    graph.insert(vec![], BTreeSet::from([vec!["b".to_owned()]]));
    graph.insert(vec!["b".to_owned()], BTreeSet::from([from.clone()]));
    graph.insert(from.clone(), BTreeSet::from([vec!["b".to_owned()]]));
    assert_eq!(cycles(&graph), vec![vec![vec!["b".to_owned()], from]]);
}
