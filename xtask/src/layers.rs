//! The backend's layering check: which `backend/src/` module may use which, per the table in docs/ARCHITECTURE.md.
//!
//! A module is the first path segment under `backend/src/` (`net/server.rs`
//! and `net/mod.rs` are `net`, `app.rs` is `app`). Every `crate::x`,
//! `use crate::{x::A, y::{B, C}}`, `super::…` path that climbs to the crate
//! root, and `natter_backend::x` in `main.rs`, is a use of `x`; comments and
//! string and char literals are skipped, and test code counts like any other.
//! A name there that is no module (`crate::run`, `crate::Error::new`) is an
//! item of the crate root, so a use of `lib` (or of `main`, inside `main.rs`).
//! Not followed: `#[path]` attributes and paths built by macros.
//!
//! Parsing and checking are pure functions on strings; [`check_repo`] reads
//! the real table and sources and reports.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::report::step;

/// The document holding the table, relative to the repository root.
pub const ARCHITECTURE: &str = "docs/ARCHITECTURE.md";
/// The backend's sources, relative to the repository root.
const SRC: &str = "backend/src/";
const BEGIN: &str = "<!-- layers:begin -->";
const END: &str = "<!-- layers:end -->";
/// The library's crate name, by which `main.rs` uses its modules.
const LIB_CRATE: &str = "natter_backend";

/// What one module may use besides itself.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Allowed {
    Everything,
    Only(BTreeSet<String>),
}

/// The allowed uses between the backend's modules, one row per module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    rows: BTreeMap<String, Allowed>,
}

impl Table {
    fn allows(&self, from: &str, to: &str) -> bool {
        from == to
            || match self.rows.get(from) {
                Some(Allowed::Everything) => true,
                Some(Allowed::Only(names)) => names.contains(to),
                None => false,
            }
    }
}

/// Reads the table between the marker lines of `doc` (the text of
/// docs/ARCHITECTURE.md). Errors name the line.
pub fn parse_table(doc: &str) -> Result<Table> {
    let lines: Vec<&str> = doc.lines().collect();
    let begin = lines
        .iter()
        .position(|l| l.trim() == BEGIN)
        .with_context(|| format!("{ARCHITECTURE} has no `{BEGIN}` line"))?;
    let end = lines[begin + 1..]
        .iter()
        .position(|l| l.trim() == END)
        .map(|i| begin + 1 + i)
        .with_context(|| format!("{ARCHITECTURE}:{}: `{BEGIN}` has no `{END}` after it", begin + 1))?;
    // (1-based line number, text) of the table's lines.
    let mut body = (begin + 1..end).map(|i| (i + 1, lines[i].trim())).filter(|(_, l)| !l.is_empty());

    let (n, header) = body.next().with_context(|| format!("{ARCHITECTURE}:{}: the layer table is empty", begin + 1))?;
    let titles = cells(n, header)?;
    if !titles[0].eq_ignore_ascii_case("module") || !titles[1].eq_ignore_ascii_case("may use") {
        bail!("{ARCHITECTURE}:{n}: expected the header `| module | may use |`, found {header:?}");
    }
    let (n, separator) =
        body.next().with_context(|| format!("{ARCHITECTURE}:{n}: the table has no `| --- | --- |` line"))?;
    if !cells(n, separator)?.iter().all(|c| !c.is_empty() && c.chars().all(|ch| ch == '-' || ch == ':')) {
        bail!("{ARCHITECTURE}:{n}: expected `| --- | --- |`, found {separator:?}");
    }

    let mut rows = BTreeMap::new();
    // Every module named in a "may use" cell, with its line, to check it has a row.
    let mut named = Vec::new();
    for (n, line) in body {
        let [modules, may_use] = cells(n, line)?;
        let allowed = match may_use {
            "everything" => Allowed::Everything,
            "nothing" => Allowed::Only(BTreeSet::new()),
            list => {
                let list = names(n, list)?;
                named.extend(list.iter().map(|name| (n, name.clone())));
                Allowed::Only(list.into_iter().collect())
            }
        };
        for module in names(n, modules)? {
            if rows.insert(module.clone(), allowed.clone()).is_some() {
                bail!("{ARCHITECTURE}:{n}: `{module}` has a second row");
            }
        }
    }
    if rows.is_empty() {
        bail!("{ARCHITECTURE}:{}: the layer table has no rows", begin + 1);
    }
    if let Some((n, name)) = named.iter().find(|(_, name)| !rows.contains_key(name)) {
        bail!("{ARCHITECTURE}:{n}: `{name}` may be used but has no row of its own");
    }
    Ok(Table { rows })
}

/// The two cells of a table line `| a | b |`.
fn cells(n: usize, line: &str) -> Result<[&str; 2]> {
    let inner = line
        .strip_prefix('|')
        .and_then(|l| l.strip_suffix('|'))
        .with_context(|| format!("{ARCHITECTURE}:{n}: a table line starts and ends with `|`, found {line:?}"))?;
    match inner.split('|').map(str::trim).collect::<Vec<_>>()[..] {
        [a, b] => Ok([a, b]),
        _ => bail!("{ARCHITECTURE}:{n}: a table line has two cells, found {line:?}"),
    }
}

/// The names of a cell like `` `net`, `session` ``.
fn names(n: usize, cell: &str) -> Result<Vec<String>> {
    cell.split(',')
        .map(|item| {
            item.trim()
                .strip_prefix('`')
                .and_then(|i| i.strip_suffix('`'))
                .filter(|name| is_ident(name))
                .map(str::to_owned)
                .with_context(|| {
                    format!(
                        "{ARCHITECTURE}:{n}: expected `module` names in backticks separated by commas, \
                         or `everything` / `nothing`, found {cell:?}"
                    )
                })
        })
        .collect()
}

fn is_ident(s: &str) -> bool {
    s.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// What checking a tree found.
#[derive(Debug, Default)]
pub struct Outcome {
    pub files: usize,
    /// Uses of another module, allowed or not.
    pub uses: usize,
    /// One line per problem: `backend/src/x.rs:12: …`.
    pub violations: Vec<String>,
}

/// Checks `files`, pairs of a path under `backend/src/` (with `/`) and its text, against `table`.
pub fn check(table: &Table, files: &[(String, String)]) -> Outcome {
    let mut outcome = Outcome { files: files.len(), ..Outcome::default() };
    let mut modules: BTreeSet<String> = table.rows.keys().cloned().collect();
    modules.extend(files.iter().filter_map(|(path, _)| module_of(path).map(|(m, _)| m.to_owned())));
    for (path, text) in files {
        let Some((module, depth)) = module_of(path) else {
            outcome.violations.push(format!("{path}: not a file under {SRC}"));
            continue;
        };
        if !table.rows.contains_key(module) {
            outcome
                .violations
                .push(format!("{path}: module `{module}` is in no row of the layer table in {ARCHITECTURE}"));
            continue;
        }
        for r in uses(module, depth, text, &modules) {
            if r.target == module {
                continue;
            }
            outcome.uses += 1;
            let Use { line, target, text } = r;
            if !table.rows.contains_key(&target) {
                outcome.violations.push(format!(
                    "{path}:{line}: `{module}` uses `{target}`, which is in no row of the layer table in {ARCHITECTURE} ({text})"
                ));
            } else if !table.allows(module, &target) {
                outcome.violations.push(format!("{path}:{line}: `{module}` may not use `{target}` ({text})"));
            }
        }
    }
    outcome
}

/// The module a file belongs to, and how deep the file's own module is below
/// the crate root (`app.rs` 1, `net/mod.rs` 1, `net/server.rs` 2, `lib.rs` 0).
fn module_of(path: &str) -> Option<(&str, usize)> {
    let segments: Vec<&str> = path.strip_prefix(SRC)?.split('/').collect();
    let (last, dirs) = segments.split_last()?;
    let stem = last.strip_suffix(".rs")?;
    let module = dirs.first().copied().unwrap_or(stem);
    let depth = match (dirs.len(), stem) {
        (0, "main" | "lib") => 0,
        (d, "mod") => d,
        (d, _) => d + 1,
    };
    Some((module, depth))
}

/// One use of a top-level module.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Use {
    line: usize,
    target: String,
    /// The path as written, with `use ` before it when it is an import.
    text: String,
}

/// Every use of a top-level module in `src`, a file of `module` whose own
/// module is `depth` below the crate root. `modules` are the known module
/// names, to tell `use crate::config;` (a module) from `crate::run` (an item).
fn uses(module: &str, depth: usize, src: &str, modules: &BTreeSet<String>) -> Vec<Use> {
    let toks = tokens(src);
    let mut found = Vec::new();
    let mut braces = 0;
    // The brace depths at which inline `mod name { … }` blocks opened.
    let mut inline_mods: Vec<usize> = Vec::new();
    for i in 0..toks.len() {
        match toks[i].tok {
            Tok::Punct('{') => {
                braces += 1;
                if i >= 2 && toks[i - 2].tok == Tok::Ident("mod") && matches!(toks[i - 1].tok, Tok::Ident(_)) {
                    inline_mods.push(braces);
                }
            }
            Tok::Punct('}') => {
                if inline_mods.last() == Some(&braces) {
                    inline_mods.pop();
                }
                braces = braces.saturating_sub(1);
            }
            Tok::Ident(word) if i == 0 || toks[i - 1].tok != Tok::PathSep => {
                // Where the path after the crate root starts, and whose root it is.
                let start = match word {
                    "crate" => (toks.get(i + 1).map(|t| t.tok) == Some(Tok::PathSep)).then_some(i + 2),
                    LIB_CRATE if module == "main" => {
                        (toks.get(i + 1).map(|t| t.tok) == Some(Tok::PathSep)).then_some(i + 2)
                    }
                    "super" | "self" => climbs_to_root(&toks, i, depth + inline_mods.len()),
                    _ => None,
                };
                let Some(start) = start else { continue };
                let root_item = if module == "main" && word != LIB_CRATE { "main" } else { "lib" };
                let prefix = if i > 0 && toks[i - 1].tok == Tok::Ident("use") { "use " } else { "" };
                let root = format!("{prefix}{}::", render(&toks[i..start - 1]));
                collect(&toks, start, &root, root_item, modules, &mut found);
            }
            _ => {}
        }
    }
    found
}

/// For a `super::…` (or `self::super::…`) path starting at `i`: where the path
/// goes on once it has climbed to the crate root, if it does (`depth` is how
/// deep the code's module is).
fn climbs_to_root(toks: &[Token<'_>], i: usize, depth: usize) -> Option<usize> {
    let tok = |k: usize| toks.get(k).map(|t| t.tok);
    let mut j = i;
    if tok(j) == Some(Tok::Ident("self")) && tok(j + 1) == Some(Tok::PathSep) {
        j += 2;
    }
    let mut climbed = 0;
    while tok(j) == Some(Tok::Ident("super")) && tok(j + 1) == Some(Tok::PathSep) {
        climbed += 1;
        j += 2;
    }
    (climbed > 0 && climbed == depth).then_some(j)
}

/// Records the uses in the path that goes on at `start`, right after `root`
/// (`crate::`): one name, a glob, or a `{…}` group of paths.
fn collect(
    toks: &[Token<'_>],
    start: usize,
    root: &str,
    root_item: &str,
    modules: &BTreeSet<String>,
    found: &mut Vec<Use>,
) {
    let mut record = |item: &[Token<'_>]| {
        let tok = |k: usize| item.get(k).map(|t| t.tok);
        let target = match tok(0) {
            Some(Tok::Ident("self")) | None => return,
            Some(Tok::Ident(name)) if modules.contains(name) => name.to_owned(),
            // A path going on below a lower-case name (`crate::x::y`, not
            // `crate::Type::new` or `crate::f::<T>`) names a module, known or not.
            Some(Tok::Ident(name))
                if name.starts_with(|c: char| c.is_ascii_lowercase())
                    && tok(1) == Some(Tok::PathSep)
                    && matches!(tok(2), Some(Tok::Ident(_) | Tok::Punct('{' | '*'))) =>
            {
                name.to_owned()
            }
            Some(_) => root_item.to_owned(),
        };
        found.push(Use { line: item[0].line, target, text: format!("{root}{}", render(item)) });
    };
    if toks.get(start).map(|t| t.tok) != Some(Tok::Punct('{')) {
        record(&toks[start..path_end(toks, start)]);
        return;
    }
    let mut item_start = start + 1;
    let mut nested = 0;
    for k in start + 1..toks.len() {
        match toks[k].tok {
            Tok::Punct('{') => nested += 1,
            Tok::Punct('}') if nested > 0 => nested -= 1,
            Tok::Punct(',') if nested == 0 => {
                record(&toks[item_start..k]);
                item_start = k + 1;
            }
            Tok::Punct('}') => {
                record(&toks[item_start..k]);
                return;
            }
            _ => {}
        }
    }
}

/// The end of a path starting at `start`: names joined by `::`, ending in a
/// name (with an optional `as` alias), a glob or a `{…}` group.
fn path_end(toks: &[Token<'_>], start: usize) -> usize {
    let tok = |k: usize| toks.get(k).map(|t| t.tok);
    let mut k = start;
    loop {
        match tok(k) {
            Some(Tok::Ident(_)) => {
                k += 1;
                match (tok(k), tok(k + 1)) {
                    (Some(Tok::PathSep), _) => k += 1,
                    (Some(Tok::Ident("as")), Some(Tok::Ident(_))) => return k + 2,
                    _ => return k,
                }
            }
            Some(Tok::Punct('*')) => return k + 1,
            Some(Tok::Punct('{')) => {
                let mut nested = 0;
                while let Some(t) = tok(k) {
                    k += 1;
                    match t {
                        Tok::Punct('{') => nested += 1,
                        Tok::Punct('}') if nested == 1 => return k,
                        Tok::Punct('}') => nested -= 1,
                        _ => {}
                    }
                }
                return k;
            }
            _ => return k,
        }
    }
}

/// Tokens back as text: `crate::chat::{room::Room, Member}`.
fn render(toks: &[Token<'_>]) -> String {
    let mut out = String::new();
    let mut prev = None;
    for t in toks {
        match t.tok {
            Tok::Ident(word) => {
                if matches!(prev, Some(Tok::Ident(_) | Tok::Punct(','))) {
                    out.push(' ');
                }
                out.push_str(word);
            }
            Tok::PathSep => out.push_str("::"),
            Tok::Punct(c) => out.push(c),
        }
        prev = Some(t.tok);
    }
    out
}

/// A token of Rust source, as much as the check needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok<'a> {
    Ident(&'a str),
    /// `::`
    PathSep,
    Punct(char),
}

#[derive(Debug, Clone, Copy)]
struct Token<'a> {
    tok: Tok<'a>,
    line: usize,
}

/// The identifiers, `::` and punctuation of `src`, each with its line;
/// comments, string, char and number literals and lifetimes are left out.
fn tokens(src: &str) -> Vec<Token<'_>> {
    let b = src.as_bytes();
    let at = |i: usize| b.get(i).copied().unwrap_or(0);
    let mut toks = Vec::new();
    let mut line = 1;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b'\n' => {
                line += 1;
                i += 1;
            }
            b'/' if at(i + 1) == b'/' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if at(i + 1) == b'*' => {
                let mut nested = 0;
                while i < b.len() {
                    if b[i] == b'/' && at(i + 1) == b'*' {
                        nested += 1;
                        i += 2;
                    } else if b[i] == b'*' && at(i + 1) == b'/' {
                        nested -= 1;
                        i += 2;
                        if nested == 0 {
                            break;
                        }
                    } else {
                        line += usize::from(b[i] == b'\n');
                        i += 1;
                    }
                }
            }
            b'"' => i = skip_string(b, i + 1, &mut line),
            b'\'' => {
                // A char literal (`'a'`, `'"'`, `'\''`, `'é'`) or a lifetime (`'a`).
                if at(i + 1) == b'\\' {
                    i += 3;
                    while i < b.len() && b[i] != b'\'' {
                        i += 1;
                    }
                    i += 1;
                } else {
                    let width = src[i + 1..].chars().next().map_or(0, char::len_utf8);
                    i += if width > 0 && at(i + 1 + width) == b'\'' { width + 2 } else { 1 };
                }
            }
            b'0'..=b'9' => {
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
            }
            b'a'..=b'z' | b'A'..=b'Z' | b'_' => {
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
                let word = &src[start..i];
                if matches!(word, "r" | "br" | "cr") && matches!(at(i), b'"' | b'#') {
                    let hashes = b[i..].iter().take_while(|&&h| h == b'#').count();
                    if at(i + hashes) == b'"' {
                        i = skip_raw_string(b, i + hashes + 1, hashes, &mut line);
                    } else {
                        // A raw identifier (`r#type`): the `#` is punctuation, the name an identifier.
                        toks.push(Token { tok: Tok::Punct('#'), line });
                        i += 1;
                    }
                } else {
                    toks.push(Token { tok: Tok::Ident(word), line });
                }
            }
            b':' if at(i + 1) == b':' => {
                toks.push(Token { tok: Tok::PathSep, line });
                i += 2;
            }
            _ => {
                if c.is_ascii_punctuation() {
                    toks.push(Token { tok: Tok::Punct(char::from(c)), line });
                }
                i += 1;
            }
        }
    }
    toks
}

/// Skips a string's body (after its `"`), escapes included; returns the index after the closing `"`.
fn skip_string(b: &[u8], mut i: usize, line: &mut usize) -> usize {
    while i < b.len() {
        match b[i] {
            b'\\' => {
                *line += usize::from(b.get(i + 1) == Some(&b'\n'));
                i += 2;
            }
            b'"' => return i + 1,
            c => {
                *line += usize::from(c == b'\n');
                i += 1;
            }
        }
    }
    i
}

/// Skips a raw string's body up to `"` and `hashes` `#`s; returns the index after them.
fn skip_raw_string(b: &[u8], mut i: usize, hashes: usize, line: &mut usize) -> usize {
    while i < b.len() {
        if b[i] == b'"' && b[i + 1..].iter().take(hashes).filter(|&&h| h == b'#').count() == hashes {
            return i + 1 + hashes;
        }
        *line += usize::from(b[i] == b'\n');
        i += 1;
    }
    i
}

/// Runs the check on the repository at `root` and fails listing every violation.
pub fn check_repo(root: &Path) -> Result<()> {
    step("checking the backend's layering (docs/ARCHITECTURE.md)");
    let doc = std::fs::read_to_string(root.join(ARCHITECTURE)).with_context(|| format!("reading {ARCHITECTURE}"))?;
    let table = parse_table(&doc)?;
    let mut files = Vec::new();
    read_sources(root, &root.join(SRC), &mut files)?;
    files.sort();
    let outcome = check(&table, &files);
    if outcome.violations.is_empty() {
        step(&format!("layering ok: {} files, {} uses of other modules", outcome.files, outcome.uses));
        return Ok(());
    }
    for violation in &outcome.violations {
        eprintln!("{violation}");
    }
    bail!(
        "{} layering violation(s) in {} files under {SRC} (what may use what: the table in {ARCHITECTURE})",
        outcome.violations.len(),
        outcome.files
    )
}

/// Every `.rs` file under `dir`, as (path relative to `root` with `/`, text).
fn read_sources(root: &Path, dir: &Path, into: &mut Vec<(String, String)>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            read_sources(root, &path, into)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            let relative = path.strip_prefix(root).unwrap_or(&path);
            let name = relative
                .iter()
                .map(|part| part.to_str().with_context(|| format!("{} is not UTF-8", path.display())))
                .collect::<Result<Vec<_>>>()?
                .join("/");
            let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            into.push((name, text));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table docs/ARCHITECTURE.md holds once the backend is in folders.
    const TABLE: &str = "\
# Natter — architecture

Some prose first.

<!-- layers:begin -->
| module | may use |
| --- | --- |
| `main`, `lib` | everything |
| `net` | `session`, `app`, `chat`, `store`, `ws`, `config`, `random` |
| `session` | `app`, `chat`, `store`, `ws`, `config`, `random` |
| `app` | `chat`, `store`, `ws`, `config` |
| `chat` | `store`, `ws`, `config`, `random` |
| `store` | `ws`, `config`, `random` |
| `ws` | nothing |
| `config` | nothing |
| `random` | nothing |
<!-- layers:end -->

More prose.
";

    fn table() -> Table {
        parse_table(TABLE).expect("the table parses")
    }

    fn files(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(p, t)| ((*p).to_owned(), (*t).to_owned())).collect()
    }

    fn violations(pairs: &[(&str, &str)]) -> Vec<String> {
        check(&table(), &files(pairs)).violations
    }

    /// The one violation checking `text` as `backend/src/store/memory.rs` finds.
    fn one_in_store(text: &str) -> String {
        let found = violations(&[("backend/src/store/memory.rs", text)]);
        assert_eq!(found.len(), 1, "{found:#?}");
        found[0].clone()
    }

    #[test]
    fn the_table_parses_into_rows() {
        let t = table();
        assert_eq!(t.rows.len(), 10);
        assert_eq!(t.rows["main"], Allowed::Everything);
        assert_eq!(t.rows["lib"], Allowed::Everything);
        assert_eq!(t.rows["ws"], Allowed::Only(BTreeSet::new()));
        assert!(t.allows("net", "session"));
        assert!(t.allows("store", "store"));
        assert!(!t.allows("store", "chat"));
        assert!(!t.allows("app", "random"));
        assert!(t.allows("main", "anything"));
    }

    #[test]
    fn a_correct_tree_passes() {
        let outcome = check(
            &table(),
            &files(&[
                (
                    "backend/src/main.rs",
                    "use natter_backend::config::Cli;\nfn main() { natter_backend::run(natter_backend::net::bind()); }",
                ),
                ("backend/src/lib.rs", "pub mod net;\npub use crate::net::server::run;\n"),
                ("backend/src/net/mod.rs", "pub mod server;\npub use server::run;\n"),
                (
                    "backend/src/net/server.rs",
                    "use super::upgrade;\nuse crate::net::upgrade::Upgrade;\nuse crate::{app::App, session::{self, Session}};\n",
                ),
                ("backend/src/net/upgrade.rs", "pub(crate) struct Upgrade;\npub(in crate::net) fn f() {}\n"),
                ("backend/src/session.rs", "use crate::chat::room::Room;\nfn t() -> u64 { crate::random::seed() }\n"),
                ("backend/src/app.rs", "use crate::config::{self, Config};\nuse crate::store::Store;\n"),
                (
                    "backend/src/chat/room.rs",
                    "use super::member::Member;\nuse crate::ws::Frame;\n\
                     #[cfg(test)]\nmod tests {\n    use super::*;\n    use super::super::member::Id;\n    use crate::store::memory::MemoryStore;\n}\n",
                ),
                ("backend/src/store/memory.rs", "use crate::config::StorageConfig;\nuse crate::ws::encode;\n"),
                ("backend/src/ws.rs", "pub struct Frame;\n#[cfg(test)]\nmod tests { use super::*; }\n"),
                ("backend/src/config.rs", "pub struct Config;\n"),
                ("backend/src/random.rs", "pub fn seed() -> u64 { 4 }\n"),
            ]),
        );
        assert_eq!(outcome.violations, Vec::<String>::new());
        assert_eq!(outcome.files, 12);
        // main: config, lib (run), net; lib: net; net/server: app, session;
        // session: chat, random; app: config, store; room: ws, store; memory: config, ws.
        assert_eq!(outcome.uses, 14);
    }

    #[test]
    fn a_tree_that_only_uses_what_its_row_allows_passes() {
        let t = table();
        let sources: Vec<(String, String)> = t
            .rows
            .iter()
            .map(|(module, allowed)| {
                let text = match allowed {
                    Allowed::Everything => String::new(),
                    Allowed::Only(names) => names.iter().map(|n| format!("use crate::{n}::Thing;\n")).collect(),
                };
                (format!("backend/src/{module}/mod.rs"), text)
            })
            .collect();
        let outcome = check(&t, &sources);
        assert_eq!(outcome.violations, Vec::<String>::new());
        assert_eq!(outcome.uses, 7 + 6 + 4 + 4 + 3);
    }

    #[test]
    fn an_upward_import_fails_naming_file_line_and_import() {
        let found = one_in_store("//! The in-memory store.\n\nuse crate::chat::room::Room;\n");
        assert_eq!(found, "backend/src/store/memory.rs:3: `store` may not use `chat` (use crate::chat::room::Room)");
    }

    #[test]
    fn grouped_imports_are_caught_by_their_top_level_names() {
        let text = "use crate::{\n    config::StorageConfig,\n    chat::{room::{Room, Draft}, Member},\n    ws,\n};\n";
        assert_eq!(
            one_in_store(text),
            "backend/src/store/memory.rs:3: `store` may not use `chat` (use crate::chat::{room::{Room, Draft}, Member})"
        );
        let two = violations(&[("backend/src/store/mod.rs", "use crate::{app::App, net::{self, Server}};")]);
        assert_eq!(
            two,
            [
                "backend/src/store/mod.rs:1: `store` may not use `app` (use crate::app::App)",
                "backend/src/store/mod.rs:1: `store` may not use `net` (use crate::net::{self, Server})",
            ]
        );
    }

    #[test]
    fn an_inline_path_is_caught() {
        let text = "fn stamp() -> u64 {\n    let now = crate::app::now_ms().0;\n    now\n}\n";
        assert_eq!(one_in_store(text), "backend/src/store/memory.rs:2: `store` may not use `app` (crate::app::now_ms)");
    }

    #[test]
    fn test_code_counts() {
        let text =
            "pub struct S;\n\n#[cfg(test)]\nmod tests {\n    use super::*;\n    use crate::session::Session;\n}\n";
        assert_eq!(
            one_in_store(text),
            "backend/src/store/memory.rs:6: `store` may not use `session` (use crate::session::Session)"
        );
    }

    #[test]
    fn climbing_to_the_root_with_super_is_caught() {
        let found = violations(&[
            ("backend/src/store.rs", "use super::chat::Room;\n"),
            ("backend/src/store/sqlite/writer.rs", "use super::super::super::chat::{self};\n"),
            ("backend/src/store/memory.rs", "mod tests { use super::super::super::app::App; }\n"),
        ]);
        assert_eq!(
            found,
            [
                "backend/src/store.rs:1: `store` may not use `chat` (use super::chat::Room)",
                "backend/src/store/sqlite/writer.rs:1: `store` may not use `chat` (use super::super::super::chat::{self})",
                "backend/src/store/memory.rs:1: `store` may not use `app` (use super::super::super::app::App)",
            ]
        );
    }

    #[test]
    fn comments_are_ignored() {
        let text = "\
// use crate::chat::room::Room;
/// Like [`crate::chat::Room`], but stored.
//! crate::net
/* use crate::app::App; /* nested */ crate::session::x */
pub struct Stored;
";
        assert_eq!(violations(&[("backend/src/store/memory.rs", text)]), Vec::<String>::new());
        // …and the code after them is still read, on the right line.
        let after = format!("{text}fn f() {{ crate::chat::g() }}\n");
        assert_eq!(one_in_store(&after), "backend/src/store/memory.rs:6: `store` may not use `chat` (crate::chat::g)");
    }

    #[test]
    fn string_and_char_literals_are_ignored() {
        let text = r###"
const A: &str = "crate::chat::Room";
const B: &str = "quote \" crate::chat \\";
const C: &str = r#"crate::chat "quoted" "#;
const D: &[u8] = br"crate::app";
const E: char = '"';
const F: u8 = b'\'';
fn g<'a>(s: &'a str) -> &'a str { s }
fn h() { crate::net::x() }
"###;
        assert_eq!(one_in_store(text), "backend/src/store/memory.rs:9: `store` may not use `net` (crate::net::x)");
    }

    #[test]
    fn an_unknown_module_fails() {
        assert_eq!(
            violations(&[("backend/src/foo.rs", "use crate::config::Config;\n")]),
            ["backend/src/foo.rs: module `foo` is in no row of the layer table in docs/ARCHITECTURE.md"]
        );
        assert_eq!(
            one_in_store("use crate::bogus::Thing;\n"),
            "backend/src/store/memory.rs:1: `store` uses `bogus`, which is in no row of the layer table \
             in docs/ARCHITECTURE.md (use crate::bogus::Thing)"
        );
    }

    #[test]
    fn an_item_of_the_crate_root_is_a_use_of_lib() {
        assert_eq!(
            one_in_store("fn f() { crate::Error::new(); }\n"),
            "backend/src/store/memory.rs:1: `store` may not use `lib` (crate::Error::new)"
        );
        assert_eq!(
            one_in_store("fn f() { crate::run(); }\n"),
            "backend/src/store/memory.rs:1: `store` may not use `lib` (crate::run)"
        );
    }

    #[test]
    fn malformed_tables_fail_naming_the_line() {
        let with = |rows: &str| {
            format!("intro\n<!-- layers:begin -->\n| module | may use |\n| --- | --- |\n{rows}<!-- layers:end -->\n")
        };
        let error = |doc: &str| parse_table(doc).expect_err("a malformed table").to_string();
        assert!(error("no table here").contains("has no `<!-- layers:begin -->` line"));
        assert!(error("<!-- layers:begin -->\n| module | may use |\n").contains("ARCHITECTURE.md:1: "));
        assert!(error(&with("| `a` | nothing |\n| `b` |\n")).starts_with("docs/ARCHITECTURE.md:6: "));
        assert!(error(&with("| `a` | nothing |\n| b | nothing |\n")).starts_with("docs/ARCHITECTURE.md:6: "));
        assert!(error(&with("| `a` | `b`, c |\n| `b` | nothing |\n")).starts_with("docs/ARCHITECTURE.md:5: "));
        assert!(error(&with("| `a` | `b` |\n")).starts_with("docs/ARCHITECTURE.md:5: "));
        assert!(error(&with("| `a` | nothing |\n| `a` | everything |\n")).starts_with("docs/ARCHITECTURE.md:6: "));
        assert!(error(&with("`a` | nothing\n")).starts_with("docs/ARCHITECTURE.md:5: "));
        assert!(
            error("<!-- layers:begin -->\n| module | may use |\n| `a` | nothing |\n<!-- layers:end -->")
                .starts_with("docs/ARCHITECTURE.md:3: ")
        );
        assert!(
            error("<!-- layers:begin -->\n| name | uses |\n<!-- layers:end -->")
                .starts_with("docs/ARCHITECTURE.md:2: ")
        );
        assert!(parse_table(&with("| `a` | nothing |\n")).is_ok());
    }

    /// Today's flat backend: `history` and `room` use each other, which the
    /// move into folders removes. The check must catch that circle.
    #[test]
    fn the_flat_backends_circle_fails() {
        let flat = parse_table(
            "<!-- layers:begin -->
| module | may use |
| --- | --- |
| `room` | `history`, `outbound`, `config` |
| `history` | `outbound`, `config`, `random` |
| `outbound` | nothing |
| `config` | nothing |
| `random` | nothing |
<!-- layers:end -->",
        )
        .expect("the flat table parses");
        let outcome = check(
            &flat,
            &files(&[
                (
                    "backend/src/room.rs",
                    "use crate::history::{Draft, HistoryStore};\nuse crate::outbound::ConnHandle;\n",
                ),
                (
                    "backend/src/history.rs",
                    "//! Stores.\n\nuse crate::outbound::ConnHandle;\nuse crate::room::{MemberId, Room};\n",
                ),
            ]),
        );
        assert_eq!(
            outcome.violations,
            ["backend/src/history.rs:4: `history` may not use `room` (use crate::room::{MemberId, Room})"]
        );
    }

    #[test]
    fn files_belong_to_their_first_segment() {
        assert_eq!(module_of("backend/src/net/server.rs"), Some(("net", 2)));
        assert_eq!(module_of("backend/src/net/mod.rs"), Some(("net", 1)));
        assert_eq!(module_of("backend/src/app.rs"), Some(("app", 1)));
        assert_eq!(module_of("backend/src/main.rs"), Some(("main", 0)));
        assert_eq!(module_of("backend/src/lib.rs"), Some(("lib", 0)));
        assert_eq!(module_of("frontend/src/app.rs"), None);
    }
}
