//! YAML -> ordered JSON, with Digdag's (SnakeYAML) reading rules and a side table of positions.
//!
//! Owns: scalar typing (only `true`/`false` are booleans, no timestamps, YAML 1.1 ints with
//! octal/hex/binary and `_`, Digdag's float pattern), duplicate-key rejection, anchors, aliases
//! and `<<` merge keys, `!include` (key form merges a mapping in place, value form inlines a
//! file) confined to the project directory, and the [`SourceMap`] from JSON pointer to
//! file:line:col. It reads files and nothing else; it knows nothing about tasks.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

use indexmap::IndexMap;
use serde_json::{Number, Value};
use yaml_rust2::parser::{Event, Parser, Tag};
use yaml_rust2::scanner::{Marker, ScanError, TScalarStyle};

use crate::error::{LoadError, LoadErrors, SourcePos};

/// Where every key (and sequence item) of a loaded document came from, by JSON pointer
/// (`""` is the document itself, `/+load/sh>` a key, `/list/0` an item).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SourceMap {
    entries: HashMap<String, SourcePos>,
}

impl SourceMap {
    pub fn new() -> Self {
        Self::default()
    }

    /// The position recorded for exactly this pointer.
    pub fn get(&self, pointer: &str) -> Option<&SourcePos> {
        self.entries.get(pointer)
    }

    /// The position of this pointer or of its closest ancestor that has one (a key added at
    /// run time has no position, but its task does).
    pub fn nearest(&self, pointer: &str) -> Option<&SourcePos> {
        let mut p = pointer;
        loop {
            if let Some(pos) = self.entries.get(p) {
                return Some(pos);
            }
            if p.is_empty() {
                return None;
            }
            p = match p.rfind('/') {
                Some(i) => &p[..i],
                None => "",
            };
        }
    }

    pub fn insert(&mut self, pointer: String, pos: SourcePos) {
        self.entries.insert(pointer, pos);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The pointer of a statically defined task from its full name (`+wf+a+b` -> `/+a/+b`).
    /// Generated tasks (`^sub`, `^error`, ...) have no pointer of their own in the file; the
    /// pointer of their nearest static ancestor is returned.
    pub fn task_pointer(full_name: &str) -> String {
        let static_part = match full_name.find('^') {
            Some(i) => &full_name[..i],
            None => full_name,
        };
        let mut out = String::new();
        // The first segment is the workflow root, which is the document itself.
        for seg in static_part.split('+').filter(|s| !s.is_empty()).skip(1) {
            out = pointer_push(&out, &format!("+{seg}"));
        }
        out
    }
}

/// Append one key to a JSON pointer, escaping `~` and `/` (RFC 6901).
pub fn pointer_push(base: &str, key: &str) -> String {
    let mut s = String::with_capacity(base.len() + key.len() + 1);
    s.push_str(base);
    s.push('/');
    for c in key.chars() {
        match c {
            '~' => s.push_str("~0"),
            '/' => s.push_str("~1"),
            c => s.push(c),
        }
    }
    s
}

/// A loaded YAML document.
#[derive(Clone, Debug, PartialEq)]
pub struct Loaded {
    pub value: Value,
    pub sources: SourceMap,
}

/// Load `relative` (a path inside `project_root`) with its `!include`s.
pub fn load_yaml_file(project_root: &Path, relative: &Path) -> Result<Loaded, LoadErrors> {
    let label = display_path(relative);
    let root = std::fs::canonicalize(project_root)
        .map_err(|e| LoadError::new(display_path(project_root), format!("can't open the project directory: {e}")))?;
    let mut loader = Loader { root: Some(root.clone()), errors: Vec::new(), stack: Vec::new() };
    let abs = root.join(relative);
    let node = loader.load_file(&abs, &label, None);
    finish(loader, node)
}

/// Parse YAML text (no `!include`: there is no file to resolve it against).
pub fn parse_yaml_str(text: &str, label: &str) -> Result<Loaded, LoadErrors> {
    let mut loader = Loader { root: None, errors: Vec::new(), stack: Vec::new() };
    let node = loader.parse_text(text, label, None);
    finish(loader, node)
}

fn finish(loader: Loader, node: Option<Node>) -> Result<Loaded, LoadErrors> {
    if !loader.errors.is_empty() {
        return Err(LoadErrors(loader.errors));
    }
    let Some(node) = node else {
        // Unreachable in practice: a missing node always comes with an error.
        return Err(LoadErrors::single(LoadError::new("", "document could not be loaded")));
    };
    let mut sources = SourceMap::new();
    let value = into_value(node, String::new(), &mut sources);
    Ok(Loaded { value, sources })
}

/// A path for messages: `/`-separated, as the user wrote it relative to the project.
pub(crate) fn display_path(p: &Path) -> String {
    let parts: Vec<String> = p
        .components()
        .filter(|c| !matches!(c, Component::CurDir))
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if p.is_absolute() { p.to_string_lossy().into_owned() } else { parts.join("/") }
}

// ---------------------------------------------------------------------------------------------
// Composed tree (before conversion to JSON): every node keeps where it came from.

#[derive(Clone, Debug)]
struct Pos {
    file: Rc<str>,
    line: usize,
    col: usize,
}

impl Pos {
    fn to_source(&self) -> SourcePos {
        SourcePos { file: self.file.to_string(), line: self.line, col: self.col }
    }
}

#[derive(Clone, Debug)]
struct Node {
    pos: Pos,
    kind: Kind,
}

#[derive(Clone, Debug)]
enum Kind {
    Scalar(Value),
    Seq(Vec<Node>),
    Map(IndexMap<String, Entry>),
}

#[derive(Clone, Debug)]
struct Entry {
    key_pos: Pos,
    value: Node,
}

fn into_value(node: Node, pointer: String, sources: &mut SourceMap) -> Value {
    if pointer.is_empty() {
        sources.insert(String::new(), node.pos.to_source());
    }
    match node.kind {
        Kind::Scalar(v) => v,
        Kind::Seq(items) => Value::Array(
            items
                .into_iter()
                .enumerate()
                .map(|(i, item)| {
                    let p = pointer_push(&pointer, &i.to_string());
                    sources.insert(p.clone(), item.pos.to_source());
                    into_value(item, p, sources)
                })
                .collect(),
        ),
        Kind::Map(entries) => {
            let mut obj = serde_json::Map::new();
            for (k, e) in entries {
                let p = pointer_push(&pointer, &k);
                sources.insert(p.clone(), e.key_pos.to_source());
                let v = into_value(e.value, p, sources);
                obj.insert(k, v);
            }
            Value::Object(obj)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Loading files and includes.

struct Loader {
    /// Canonical project directory; `None` when parsing a string (includes are refused).
    root: Option<PathBuf>,
    errors: Vec<LoadError>,
    /// Canonical paths of the files being loaded, outermost first (include cycle detection).
    stack: Vec<PathBuf>,
}

impl Loader {
    fn load_file(&mut self, abs: &Path, label: &str, included_at: Option<&Pos>) -> Option<Node> {
        let err_at = |msg: String| match included_at {
            Some(p) => LoadError::at(&p.to_source(), msg),
            None => LoadError::new(label, msg),
        };
        let bytes = match std::fs::read(abs) {
            Ok(b) => b,
            Err(e) => {
                let msg = if e.kind() == std::io::ErrorKind::NotFound {
                    format!("file '{label}' does not exist")
                } else {
                    format!("can't read '{label}': {e}")
                };
                self.errors.push(err_at(msg));
                return None;
            }
        };
        let text = match String::from_utf8(bytes) {
            Ok(t) => t,
            Err(e) => {
                let pos = e.utf8_error().valid_up_to();
                self.errors.push(LoadError::new(
                    label,
                    format!("file is not valid UTF-8 (invalid byte at offset {pos}); save it as UTF-8"),
                ));
                return None;
            }
        };
        let canon = std::fs::canonicalize(abs).unwrap_or_else(|_| abs.to_path_buf());
        if let Some(i) = self.stack.iter().position(|p| *p == canon) {
            let chain: Vec<String> =
                self.stack[i..].iter().chain(std::iter::once(&canon)).map(|p| self.label_of(p)).collect();
            self.errors.push(err_at(format!("!include cycle: {}", chain.join(" -> "))));
            return None;
        }
        self.stack.push(canon);
        let node = self.parse_text(&text, label, abs.parent());
        self.stack.pop();
        node
    }

    fn label_of(&self, canon: &Path) -> String {
        match &self.root {
            Some(root) => match canon.strip_prefix(root) {
                Ok(rel) => display_path(rel),
                Err(_) => display_path(canon),
            },
            None => display_path(canon),
        }
    }

    fn parse_text(&mut self, text: &str, label: &str, dir: Option<&Path>) -> Option<Node> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut c = Composer {
            loader: self,
            parser: Parser::new_from_str(text),
            lines: text.lines().collect(),
            file: Rc::from(label),
            dir: dir.map(Path::to_path_buf),
            anchors: HashMap::new(),
            open: Vec::new(),
        };
        match c.document() {
            Ok(Some(node)) => Some(node),
            Ok(None) => {
                c.loader.errors.push(LoadError::new(
                    label,
                    "file is empty: a workflow definition (or an included file) must be a YAML mapping",
                ));
                None
            }
            Err(e) => {
                c.loader.errors.push(e);
                None
            }
        }
    }

    /// Resolve an `!include` path against the including file's directory, confined to the
    /// project directory.
    fn resolve_include(&self, dir: Option<&Path>, spec: &str) -> Result<(PathBuf, String), String> {
        let (Some(root), Some(dir)) = (&self.root, dir) else {
            return Err("!include is only supported in files of a project directory".into());
        };
        if spec.trim().is_empty() {
            return Err("!include needs a file path, e.g. `!include : 'config/params.dig'`".into());
        }
        if spec.contains("${") {
            return Err(format!(
                "!include path '{spec}' contains ${{...}}: includes are read when the file is \
                 loaded, before any variable exists; use a fixed path"
            ));
        }
        let rel = Path::new(spec);
        if rel.is_absolute() || spec.starts_with('/') || spec.starts_with('\\') {
            return Err(format!("!include path '{spec}' is absolute: use a path relative to the including file"));
        }
        for c in rel.components() {
            match c {
                Component::ParentDir => {
                    return Err(format!(
                        "!include path '{spec}' must not contain '..': an included file must be \
                         in the including file's directory or below it"
                    ));
                }
                Component::Prefix(_) | Component::RootDir => {
                    return Err(format!("!include path '{spec}' must be relative"));
                }
                _ => {}
            }
        }
        let abs = dir.join(rel);
        let label = self.label_of(&abs);
        let canon = match std::fs::canonicalize(&abs) {
            Ok(c) => c,
            Err(_) => {
                return Err(format!(
                    "included file '{label}' does not exist (path '{spec}' is relative to the including file's directory)"
                ));
            }
        };
        if !canon.starts_with(root) {
            return Err(format!(
                "included file '{label}' resolves outside the project directory (through a symbolic link)"
            ));
        }
        if canon.is_dir() {
            return Err(format!("included path '{label}' is a directory, not a file"));
        }
        Ok((canon, label))
    }
}

struct Composer<'l, 's> {
    loader: &'l mut Loader,
    parser: Parser<std::str::Chars<'s>>,
    lines: Vec<&'s str>,
    file: Rc<str>,
    dir: Option<PathBuf>,
    anchors: HashMap<usize, Node>,
    /// Collections being composed (start position, "list" or "mapping"), for error hints.
    open: Vec<(Pos, &'static str)>,
}

const INCLUDE: &str = "include";
const YAML_TAG: &str = "tag:yaml.org,2002:";

impl Composer<'_, '_> {
    fn pos(&self, m: &Marker) -> Pos {
        Pos { file: self.file.clone(), line: m.line(), col: m.col() + 1 }
    }

    fn next(&mut self) -> Result<(Event, Marker), LoadError> {
        self.parser.next_token().map_err(|e| self.syntax_error(&e))
    }

    fn syntax_error(&self, e: &ScanError) -> LoadError {
        let mut pos = self.pos(e.marker());
        let info = e.info();
        let mut msg = format!("invalid YAML: {info}");
        if info.contains("flow sequence") || info.contains("flow mapping") {
            // The parser notices at the end; the opening bracket is what the user must fix.
            if let Some((open, what)) = self.open.last() {
                let bracket = if *what == "list" { '[' } else { '{' };
                msg = format!(
                    "invalid YAML: the {what} opened here with '{bracket}' is not closed (at line {}, column {}: {info})",
                    pos.line, pos.col
                );
                pos = open.clone();
            }
            msg.push_str(
                "; a value starting with '[' or '{' is read as a YAML list or mapping: put it in \
                 quotes if it is text",
            );
        } else if info.contains("mapping values are not allowed") {
            msg.push_str("; check the indentation, or put the value in quotes if it contains ': '");
        } else if info.contains("quoted scalar") {
            msg.push_str("; a quoted value needs its closing quote");
        } else if info.contains("expected '-' indicator") {
            msg.push_str(
                "; check the indentation: a list item ('- ...') and a key ('k: v') can't be mixed at one level",
            );
        } else if info.contains("tabs") {
            msg.push_str("; indent with spaces, not tabs");
        } else if info.contains("unknown anchor") {
            msg.push_str("; an alias (*name) must refer to an anchor (&name) defined earlier in the same file");
        }
        LoadError::at(&pos.to_source(), msg)
    }

    fn document(&mut self) -> Result<Option<Node>, LoadError> {
        let mut node = None;
        loop {
            let (ev, mark) = self.next()?;
            match ev {
                Event::StreamStart | Event::Nothing => {}
                Event::DocumentStart => {
                    if node.is_some() {
                        return Err(LoadError::at(
                            &self.pos(&mark).to_source(),
                            "a workflow file must hold a single YAML document; remove the second '---'",
                        ));
                    }
                    let (ev, mark) = self.next()?;
                    if matches!(ev, Event::DocumentEnd) {
                        continue;
                    }
                    node = Some(self.node(ev, mark)?);
                }
                Event::DocumentEnd => {}
                Event::StreamEnd => return Ok(node),
                other => {
                    return Err(LoadError::at(
                        &self.pos(&mark).to_source(),
                        format!("invalid YAML: unexpected {other:?}"),
                    ));
                }
            }
        }
    }

    fn node(&mut self, ev: Event, mark: Marker) -> Result<Node, LoadError> {
        match ev {
            Event::Scalar(text, style, anchor, tag) => {
                let pos = self.pos(&mark);
                let node = match tag {
                    Some(t) if is_include(&t) => self.include_value(&text, &pos),
                    Some(t) => self.tagged_scalar(text, &t, &pos)?,
                    None => Node { pos: pos.clone(), kind: Kind::Scalar(scalar_value(&text, style)) },
                };
                self.remember(anchor, &node);
                Ok(node)
            }
            Event::SequenceStart(anchor, tag) => {
                let pos = self.pos(&mark);
                self.check_collection_tag(tag.as_ref(), "seq", &pos)?;
                self.open.push((pos.clone(), "list"));
                let mut items = Vec::new();
                loop {
                    let (ev, mark) = self.next()?;
                    if matches!(ev, Event::SequenceEnd) {
                        break;
                    }
                    items.push(self.node(ev, mark)?);
                }
                self.open.pop();
                let node = Node { pos, kind: Kind::Seq(items) };
                self.remember(anchor, &node);
                Ok(node)
            }
            Event::MappingStart(anchor, tag) => {
                let pos = self.pos(&mark);
                self.check_collection_tag(tag.as_ref(), "map", &pos)?;
                self.open.push((pos.clone(), "mapping"));
                let map = self.mapping()?;
                self.open.pop();
                // A block mapping is reported after its first key; start it at that key.
                let pos = match map.values().next() {
                    Some(first)
                        if first.key_pos.file == pos.file
                            && (first.key_pos.line, first.key_pos.col) < (pos.line, pos.col) =>
                    {
                        first.key_pos.clone()
                    }
                    _ => pos,
                };
                let node = Node { pos, kind: Kind::Map(map) };
                self.remember(anchor, &node);
                Ok(node)
            }
            Event::Alias(id) => match self.anchors.get(&id) {
                Some(n) => Ok(n.clone()),
                None => Err(LoadError::at(
                    &self.pos(&mark).to_source(),
                    "alias refers to an anchor that is not defined before it (or is still being defined)",
                )),
            },
            other => Err(LoadError::at(&self.pos(&mark).to_source(), format!("invalid YAML: unexpected {other:?}"))),
        }
    }

    fn remember(&mut self, anchor: usize, node: &Node) {
        if anchor > 0 {
            self.anchors.insert(anchor, node.clone());
        }
    }

    fn check_collection_tag(&self, tag: Option<&Tag>, expected: &str, pos: &Pos) -> Result<(), LoadError> {
        match tag {
            None => Ok(()),
            Some(t) if t.handle == YAML_TAG && (t.suffix == expected || (expected == "map" && t.suffix == "omap")) => {
                Ok(())
            }
            Some(t) if is_include(t) => Err(LoadError::at(
                &pos.to_source(),
                "!include takes a file path (a string), e.g. `key: !include 'file.dig'`",
            )),
            Some(t) => Err(LoadError::at(&pos.to_source(), format!("unsupported YAML tag {}", tag_text(t)))),
        }
    }

    fn tagged_scalar(&mut self, text: String, tag: &Tag, pos: &Pos) -> Result<Node, LoadError> {
        let kind = if tag.handle == YAML_TAG {
            let v = match tag.suffix.as_str() {
                "str" | "binary" | "timestamp" => Some(Value::String(text.clone())),
                "null" => Some(Value::Null),
                "bool" => match text.as_str() {
                    "true" | "True" | "TRUE" => Some(Value::Bool(true)),
                    "false" | "False" | "FALSE" => Some(Value::Bool(false)),
                    _ => None,
                },
                "int" => parse_int(&text),
                "float" => parse_float(&text).or_else(|| {
                    parse_int(&text).and_then(|v| v.as_f64()).and_then(Number::from_f64).map(Value::Number)
                }),
                _ => {
                    return Err(LoadError::at(&pos.to_source(), format!("unsupported YAML tag !!{}", tag.suffix)));
                }
            };
            match v {
                Some(v) => Kind::Scalar(v),
                None => {
                    return Err(LoadError::at(&pos.to_source(), format!("'{text}' is not a valid !!{}", tag.suffix)));
                }
            }
        } else {
            let mut msg = format!("unsupported YAML tag {}", tag_text(tag));
            if tag.handle == "!" && tag.suffix.starts_with(INCLUDE) {
                msg.push_str(": write `!include : 'file.dig'` (with a space before the colon) to merge a file here");
            } else {
                msg.push_str(": only !include is supported");
            }
            return Err(LoadError::at(&pos.to_source(), msg));
        };
        Ok(Node { pos: pos.clone(), kind })
    }

    /// `key: !include 'file'`: the value is the whole content of the file.
    fn include_value(&mut self, spec: &str, pos: &Pos) -> Node {
        let fallback = Node { pos: pos.clone(), kind: Kind::Scalar(Value::Null) };
        match self.loader.resolve_include(self.dir.as_deref(), spec) {
            Ok((abs, label)) => self.loader.load_file(&abs, &label, Some(pos)).unwrap_or(fallback),
            Err(msg) => {
                self.loader.errors.push(LoadError::at(&pos.to_source(), msg));
                fallback
            }
        }
    }

    /// The mapping after its MappingStart, up to and including its MappingEnd.
    fn mapping(&mut self) -> Result<IndexMap<String, Entry>, LoadError> {
        let mut built: IndexMap<String, Entry> = IndexMap::new();
        // Keys as written (raw scalar text) -> position, for duplicate detection.
        let mut seen: HashMap<String, Pos> = HashMap::new();
        loop {
            let (ev, kmark) = self.next()?;
            let kpos = self.pos(&kmark);
            let key = match ev {
                Event::MappingEnd => return Ok(built),
                Event::Scalar(text, style, anchor, tag) => {
                    if anchor > 0 {
                        let n = Node { pos: kpos.clone(), kind: Kind::Scalar(Value::String(text.clone())) };
                        self.remember(anchor, &n);
                    }
                    match tag {
                        Some(t) if is_include(&t) => Key::Include,
                        // `!!str key` and friends: a key is text either way.
                        Some(t) if t.handle == YAML_TAG => Key::Plain(text),
                        // Any other tag on a key is refused with the same message as on a value.
                        Some(t) => {
                            return Err(self.tagged_scalar(text, &t, &kpos).err().unwrap_or_else(|| {
                                LoadError::at(&kpos.to_source(), format!("unsupported YAML tag {}", tag_text(&t)))
                            }));
                        }
                        None if style == TScalarStyle::Plain && text == "<<" => Key::Merge,
                        None => Key::Plain(text),
                    }
                }
                Event::Alias(id) => match self.anchors.get(&id).map(|n| n.kind.clone()) {
                    Some(Kind::Scalar(v)) => Key::Plain(scalar_key_text(&v)),
                    _ => {
                        return Err(LoadError::at(
                            &kpos.to_source(),
                            "a mapping key must be a plain value (text or number), not a list or mapping",
                        ));
                    }
                },
                Event::SequenceStart(..) | Event::MappingStart(..) => {
                    return Err(LoadError::at(
                        &kpos.to_source(),
                        "a mapping key must be a plain value (text or number), not a list or mapping",
                    ));
                }
                other => {
                    return Err(LoadError::at(&kpos.to_source(), format!("invalid YAML: unexpected {other:?}")));
                }
            };
            let (ev, vmark) = self.next()?;
            match key {
                Key::Include => {
                    let include_pos = self.include_key_pos(&kpos);
                    let value = self.node(ev, vmark)?;
                    let spec = match &value.kind {
                        Kind::Scalar(Value::String(s)) => s.clone(),
                        Kind::Scalar(v) if !v.is_null() => v.to_string(),
                        _ => {
                            self.loader.errors.push(LoadError::at(
                                &include_pos.to_source(),
                                "!include needs a file path, e.g. `!include : 'config/params.dig'`",
                            ));
                            continue;
                        }
                    };
                    self.merge_include(&mut built, &spec, &include_pos);
                }
                Key::Merge => {
                    if let Some(first) = seen.get("<<") {
                        self.loader.errors.push(duplicate_key("<<", &kpos, first));
                        self.node(ev, vmark)?;
                        continue;
                    }
                    seen.insert("<<".into(), kpos.clone());
                    let value = self.node(ev, vmark)?;
                    let sources: Vec<Node> = match value.kind {
                        Kind::Map(_) => vec![value],
                        Kind::Seq(items) => items,
                        _ => {
                            self.loader.errors.push(LoadError::at(
                                &kpos.to_source(),
                                "a merge key (<<) needs a mapping or a list of mappings, e.g. `<<: *defaults`",
                            ));
                            continue;
                        }
                    };
                    for src in sources {
                        let Kind::Map(m) = src.kind else {
                            self.loader.errors.push(LoadError::at(
                                &src.pos.to_source(),
                                "a merge key (<<) list may only hold mappings",
                            ));
                            continue;
                        };
                        for (k, e) in m {
                            // Merged keys never override anything already there (SnakeYAML).
                            built.entry(k).or_insert(e);
                        }
                    }
                }
                Key::Plain(k) => {
                    if let Some(first) = seen.get(&k) {
                        self.loader.errors.push(duplicate_key(&k, &kpos, first));
                        self.node(ev, vmark)?;
                        continue;
                    }
                    seen.insert(k.clone(), kpos.clone());
                    let value = self.node(ev, vmark)?;
                    // A key merged by `<<` or an earlier include is replaced but keeps its position;
                    // explicit keys always win over `<<` (SnakeYAML).
                    let entry = Entry { key_pos: kpos, value };
                    built.insert(k, entry);
                }
            }
        }
    }

    /// The empty scalar of `!include : x` is reported after the tag; point at the tag instead.
    fn include_key_pos(&self, p: &Pos) -> Pos {
        if let Some(line) = self.lines.get(p.line.saturating_sub(1)) {
            let upto: String = line.chars().take(p.col.saturating_sub(1)).collect();
            if let Some(i) = upto.rfind("!include") {
                let col = upto[..i].chars().count() + 1;
                return Pos { col, ..p.clone() };
            }
        }
        p.clone()
    }

    /// `!include : 'file'` as a key: merge the file's mapping into `built` at this position.
    fn merge_include(&mut self, built: &mut IndexMap<String, Entry>, spec: &str, pos: &Pos) {
        let (abs, label) = match self.loader.resolve_include(self.dir.as_deref(), spec) {
            Ok(x) => x,
            Err(msg) => {
                self.loader.errors.push(LoadError::at(&pos.to_source(), msg));
                return;
            }
        };
        let Some(node) = self.loader.load_file(&abs, &label, Some(pos)) else { return };
        let Kind::Map(included) = node.kind else {
            self.loader.errors.push(LoadError::at(
                &pos.to_source(),
                format!(
                    "'{label}' is included as a key (`!include : ...`), so it must hold a YAML mapping to merge here; \
                     to insert a list or a value use `key: !include '{spec}'`"
                ),
            ));
            return;
        };
        for (k, e) in included {
            match built.get_mut(&k) {
                Some(existing) => {
                    if let (Kind::Map(dst), Kind::Map(src)) = (&mut existing.value.kind, &e.value.kind) {
                        merge_nodes(dst, src.clone());
                    } else {
                        existing.value = e.value;
                        existing.key_pos = e.key_pos;
                    }
                }
                None => {
                    built.insert(k, e);
                }
            }
        }
    }
}

enum Key {
    Plain(String),
    Include,
    Merge,
}

/// Digdag's include merge: objects merge recursively, anything else replaces in place.
fn merge_nodes(dst: &mut IndexMap<String, Entry>, src: IndexMap<String, Entry>) {
    for (k, e) in src {
        match dst.get_mut(&k) {
            Some(existing) => {
                if let (Kind::Map(d), Kind::Map(s)) = (&mut existing.value.kind, &e.value.kind) {
                    merge_nodes(d, s.clone());
                } else {
                    existing.value = e.value;
                    existing.key_pos = e.key_pos;
                }
            }
            None => {
                dst.insert(k, e);
            }
        }
    }
}

fn duplicate_key(key: &str, pos: &Pos, first: &Pos) -> LoadError {
    let what = if key.starts_with('+') { "task" } else { "key" };
    LoadError::at(
        &pos.to_source(),
        format!(
            "duplicate {what} '{key}' (first defined at line {}, column {}): a key may appear only once \
             in a mapping; rename or remove one of them",
            first.line, first.col
        ),
    )
}

fn is_include(t: &Tag) -> bool {
    t.handle == "!" && t.suffix == INCLUDE
}

fn tag_text(t: &Tag) -> String {
    if t.handle == YAML_TAG { format!("!!{}", t.suffix) } else { format!("{}{}", t.handle, t.suffix) }
}

fn scalar_key_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// Scalar typing (SnakeYAML's YAML 1.1 resolver as configured by Digdag's YamlTagResolver).

fn scalar_value(text: &str, style: TScalarStyle) -> Value {
    if style != TScalarStyle::Plain {
        return Value::String(text.to_string());
    }
    resolve_plain(text)
}

/// Type a plain (unquoted) scalar the way Digdag does.
pub fn resolve_plain(text: &str) -> Value {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" => return Value::Bool(true),
        "false" | "False" => return Value::Bool(false),
        _ => {}
    }
    if let Some(v) = parse_int(text) {
        return v;
    }
    if let Some(v) = parse_float(text) {
        return v;
    }
    Value::String(text.to_string())
}

fn split_sign(s: &str) -> (bool, &str) {
    match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    }
}

/// `[-+]?0b[01_]+ | [-+]?0[0-7_]+ | [-+]?(0|[1-9][0-9_]*) | [-+]?0x[0-9a-fA-F_]+`
/// (no sexagesimal: `10:00:00` stays a string).
fn parse_int(text: &str) -> Option<Value> {
    let (neg, body) = split_sign(text);
    let (radix, digits) = if let Some(d) = body.strip_prefix("0b") {
        if d.is_empty() || !d.chars().all(|c| c == '0' || c == '1' || c == '_') {
            return None;
        }
        (2, d)
    } else if let Some(d) = body.strip_prefix("0x") {
        if d.is_empty() || !d.chars().all(|c| c.is_ascii_hexdigit() || c == '_') {
            return None;
        }
        (16, d)
    } else if body == "0" {
        (10, body)
    } else if let Some(d) = body.strip_prefix('0') {
        if d.is_empty() || !d.chars().all(|c| ('0'..='7').contains(&c) || c == '_') {
            return None;
        }
        (8, d)
    } else {
        let mut chars = body.chars();
        match chars.next() {
            Some('1'..='9') => {}
            _ => return None,
        }
        if !chars.all(|c| c.is_ascii_digit() || c == '_') {
            return None;
        }
        (10, body)
    };
    let clean: String = digits.chars().filter(|&c| c != '_').collect();
    if clean.is_empty() {
        return None;
    }
    match i128::from_str_radix(&clean, radix) {
        Ok(mut n) => {
            if neg {
                n = -n;
            }
            if let Ok(i) = i64::try_from(n) {
                Some(Value::Number(i.into()))
            } else if let Ok(u) = u64::try_from(n) {
                Some(Value::Number(u.into()))
            } else {
                Number::from_f64(n as f64).map(Value::Number)
            }
        }
        // Bigger than i128: SnakeYAML keeps a BigInteger; a double is the closest JSON has.
        Err(_) => clean
            .parse::<f64>()
            .ok()
            .filter(|_| radix == 10)
            .and_then(|f| Number::from_f64(if neg { -f } else { f }))
            .map(Value::Number),
    }
}

/// Digdag's FLOAT_EXCEPTING_ZERO_START:
/// `[-+]?(\.[0-9]+|[1-9][0-9_]*(\.[0-9_]*)?)([eE][-+]?[0-9]+)?`, sexagesimal
/// `[-+]?[0-9][0-9_]*(:[0-5]?[0-9])+\.[0-9_]*`, `[-+]?.inf`, `.nan`. Note that `0.5` is NOT
/// a float under this rule (it stays the string "0.5"), exactly as in Digdag.
fn parse_float(text: &str) -> Option<Value> {
    let (neg, body) = split_sign(text);
    if matches!(body, ".inf" | ".Inf" | ".INF") || matches!(text, ".nan" | ".NaN" | ".NAN") {
        // JSON has no infinities or NaN; keep the text.
        return Some(Value::String(text.to_string()));
    }
    if is_digdag_float(body) {
        let clean: String = body.chars().filter(|&c| c != '_').collect();
        let f: f64 = clean.parse().ok()?;
        return Number::from_f64(if neg { -f } else { f }).map(Value::Number);
    }
    if let Some(f) = parse_sexagesimal_float(body) {
        return Number::from_f64(if neg { -f } else { f }).map(Value::Number);
    }
    None
}

fn is_digdag_float(body: &str) -> bool {
    let b = body.as_bytes();
    let mut i: usize;
    if b.first() == Some(&b'.') {
        i = 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return false;
        }
    } else {
        match b.first() {
            Some(b'1'..=b'9') => i = 1,
            _ => return false,
        }
        while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'_') {
            i += 1;
        }
        if i < b.len() && b[i] == b'.' {
            i += 1;
            while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'_') {
                i += 1;
            }
        }
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        i += 1;
        if i < b.len() && (b[i] == b'-' || b[i] == b'+') {
            i += 1;
        }
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return false;
        }
    }
    i == b.len()
}

fn parse_sexagesimal_float(body: &str) -> Option<f64> {
    let (int_part, frac) = body.split_once('.')?;
    if !frac.chars().all(|c| c.is_ascii_digit() || c == '_') {
        return None;
    }
    let mut parts = int_part.split(':');
    let first = parts.next()?;
    if first.is_empty()
        || !first.starts_with(|c: char| c.is_ascii_digit())
        || !first.chars().all(|c| c.is_ascii_digit() || c == '_')
    {
        return None;
    }
    let rest: Vec<&str> = parts.collect();
    if rest.is_empty() {
        return None;
    }
    let mut value: f64 = first.replace('_', "").parse().ok()?;
    for (i, p) in rest.iter().enumerate() {
        let ok = match p.len() {
            1 => p.as_bytes()[0].is_ascii_digit(),
            2 => (b'0'..=b'5').contains(&p.as_bytes()[0]) && p.as_bytes()[1].is_ascii_digit(),
            _ => false,
        };
        if !ok {
            return None;
        }
        let n: f64 = p.parse().ok()?;
        if i + 1 == rest.len() {
            let frac_clean: String = frac.chars().filter(|&c| c != '_').collect();
            let last: f64 = format!("{n}.{}", if frac_clean.is_empty() { "0" } else { &frac_clean }).parse().ok()?;
            value = value * 60.0 + last;
        } else {
            value = value * 60.0 + n;
        }
    }
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::project;
    use serde_json::json;

    fn parse(text: &str) -> Value {
        parse_yaml_str(text, "t.dig").unwrap().value
    }

    fn parse_err(text: &str) -> String {
        parse_yaml_str(text, "t.dig").unwrap_err().to_string()
    }

    #[test]
    fn only_true_false_are_booleans() {
        let v = parse("a: true\nb: False\nc: yes\nd: no\ne: on\nf: off\ng: TRUE\nh: y\n");
        assert_eq!(
            v,
            json!({"a": true, "b": false, "c": "yes", "d": "no", "e": "on", "f": "off", "g": "TRUE", "h": "y"})
        );
    }

    #[test]
    fn dates_and_times_stay_strings() {
        let v =
            parse("a: 2024-01-01\nb: 2024-01-01 10:00:00\nc: 10:00:00\nd: 04:30\ne: 2001-12-14t21:59:43.10-05:00\n");
        assert_eq!(
            v,
            json!({"a": "2024-01-01", "b": "2024-01-01 10:00:00", "c": "10:00:00", "d": "04:30",
                   "e": "2001-12-14t21:59:43.10-05:00"})
        );
    }

    #[test]
    fn nulls() {
        let v = parse("a: ~\nb: null\nc: Null\nd: NULL\ne:\nf: nil\ng: 'null'\n");
        assert_eq!(v, json!({"a": null, "b": null, "c": null, "d": null, "e": null, "f": "nil", "g": "null"}));
    }

    #[test]
    fn integers_yaml_11() {
        let v = parse(
            "a: 42\nb: -7\nc: +3\nd: 1_000\ne: 010\nf: 0x1F\ng: 0b101\nh: 0\ni: 08\nj: '42'\nk: 9223372036854775807\nl: 0o17\n",
        );
        assert_eq!(
            v,
            json!({"a": 42, "b": -7, "c": 3, "d": 1000, "e": 8, "f": 31, "g": 5, "h": 0, "i": "08", "j": "42",
                   "k": 9223372036854775807i64, "l": "0o17"})
        );
    }

    #[test]
    fn floats_follow_digdag_pattern() {
        let v = parse("a: 1.5\nb: -2.25\nc: 1e3\nd: .5\ne: 1_000.5\nf: 0.5\ng: .inf\nh: 1:30.5\ni: 3.\n");
        assert_eq!(v["a"], json!(1.5));
        assert_eq!(v["b"], json!(-2.25));
        assert_eq!(v["c"], json!(1000.0));
        assert_eq!(v["d"], json!(0.5));
        assert_eq!(v["e"], json!(1000.5));
        // Digdag's resolver does not accept a float starting with 0: it stays text.
        assert_eq!(v["f"], json!("0.5"));
        assert_eq!(v["g"], json!(".inf"));
        assert_eq!(v["h"], json!(90.5));
        assert_eq!(v["i"], json!(3.0));
    }

    #[test]
    fn quoted_scalars_are_strings() {
        let v = parse("a: 'true'\nb: \"12\"\nc: |\n  line\n");
        assert_eq!(v, json!({"a": "true", "b": "12", "c": "line\n"}));
    }

    #[test]
    fn explicit_tags() {
        let v = parse("a: !!str 12\nb: !!int '7'\nc: !!float 2\nd: !!bool 'true'\ne: !!null ''\n");
        assert_eq!(v, json!({"a": "12", "b": 7, "c": 2.0, "d": true, "e": null}));
        assert!(parse_err("a: !!int abc\n").contains("not a valid !!int"));
        assert!(parse_err("a: !foo x\n").contains("unsupported YAML tag !foo"));
    }

    #[test]
    fn key_order_is_preserved() {
        let v = parse("z: 1\na: 2\nm: 3\n");
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["z", "a", "m"]);
    }

    #[test]
    fn duplicate_keys_are_errors_with_both_positions() {
        let e = parse_err("+a:\n  echo>: 1\n+b:\n  echo>: 2\n+a:\n  echo>: 3\n");
        assert_eq!(
            e,
            "t.dig:5:1: duplicate task '+a' (first defined at line 1, column 1): a key may appear only \
             once in a mapping; rename or remove one of them"
        );
        // Nested and several at once.
        let errs = parse_yaml_str("x:\n  k: 1\n  k: 2\ny: 1\ny: 2\n", "t.dig").unwrap_err();
        assert_eq!(errs.len(), 2);
        assert!(errs.0[0].to_string().starts_with("t.dig:3:3: duplicate key 'k'"));
        assert!(errs.0[1].to_string().starts_with("t.dig:5:1: duplicate key 'y'"));
        // Quoting does not make a key different.
        assert!(parse_err("a: 1\n'a': 2\n").contains("duplicate key 'a'"));
    }

    #[test]
    fn anchors_aliases_and_merge_keys() {
        let v = parse("base: &b {x: 1, y: 2}\nother: *b\nm:\n  <<: *b\n  y: 3\n  z: 4\nlist: [&i 5, *i]\n");
        assert_eq!(v["other"], json!({"x": 1, "y": 2}));
        assert_eq!(v["m"], json!({"x": 1, "y": 3, "z": 4}));
        assert_eq!(v["list"], json!([5, 5]));
        // Explicit keys win even when written before the merge; merged keys keep their place.
        let v = parse("d: &d {a: 1, b: 2}\nm:\n  b: 9\n  <<: *d\n");
        assert_eq!(v["m"], json!({"b": 9, "a": 1}));
        let v = parse("a: &a {p: 1}\nb: &b {p: 2, q: 2}\nm:\n  <<: [*a, *b]\n");
        assert_eq!(v["m"], json!({"p": 1, "q": 2}));
    }

    #[test]
    fn positions_are_recorded_per_pointer() {
        let l = parse_yaml_str("+a:\n  echo>: hi\n  list:\n    - 1\n    - x/y: 2\n+b:\n  sh>: x\n", "w.dig").unwrap();
        let s = &l.sources;
        assert_eq!(s.get("").unwrap().to_string(), "w.dig:1:1");
        assert_eq!(s.get("/+a").unwrap().to_string(), "w.dig:1:1");
        assert_eq!(s.get("/+a/echo>").unwrap().to_string(), "w.dig:2:3");
        assert_eq!(s.get("/+a/list/1").unwrap().line, 5);
        assert_eq!(s.get("/+a/list/1/x~1y").unwrap().to_string(), "w.dig:5:7");
        assert_eq!(s.get("/+b/sh>").unwrap().to_string(), "w.dig:7:3");
        assert_eq!(s.nearest("/+b/sh>/nothing/here").unwrap().to_string(), "w.dig:7:3");
        assert_eq!(SourceMap::task_pointer("+w+a+b^sub+loop-0"), "/+a/+b");
        assert_eq!(SourceMap::task_pointer("+w"), "");
    }

    #[test]
    fn syntax_errors_name_the_place_and_help() {
        let e = parse_err("+good:\n  echo>: ok\n+bad:\n  echo>: [unclosed\n");
        assert!(
            e.starts_with("t.dig:4:10: invalid YAML: the list opened here with '[' is not closed (at line 5, column 1: while parsing a flow sequence"),
            "{e}"
        );
        assert!(e.contains("put it in quotes"), "{e}");
        let e = parse_err("a: 1\n  b: 2\n");
        assert!(e.starts_with("t.dig:2:4: invalid YAML: mapping values are not allowed"), "{e}");
        assert!(parse_err("a: 1\n---\nb: 2\n").contains("single YAML document"));
        assert!(parse_err("").contains("file is empty"));
        assert!(parse_err("# only a comment\n").contains("file is empty"));
        assert!(parse_err("a: *nope\n").contains("anchor"));
        assert!(parse_err("!include: x\n").contains("space before the colon"));
        assert!(parse_err("!foo k: x\n").contains("unsupported YAML tag !foo"));
        assert!(parse_err("? [a, b]\n: 1\n").contains("mapping key must be a plain value"));
    }

    #[test]
    fn include_needs_a_project() {
        assert!(parse_err("!include : 'x.dig'\n").contains("only supported in files of a project"));
    }

    #[test]
    fn include_key_form_merges_in_place_and_value_form_inlines() {
        let d = project(&[
            (
                "wf.dig",
                "_export:\n  a: 0\n  !include : 'conf/x.yml'\n  z: 9\n+one:\n  echo>: 1\n!include : 'parts/tasks.dig'\n+last:\n  echo>: 3\nlist: !include 'conf/list.yml'\n",
            ),
            ("conf/x.yml", "a: 1\nnested:\n  p: 1\n"),
            ("conf/list.yml", "- 1\n- 2\n"),
            ("parts/tasks.dig", "+two:\n  !include : 'deeper/body.dig'\n"),
            ("parts/deeper/body.dig", "echo>: 2\n"),
        ]);
        let l = load_yaml_file(d.path(), Path::new("wf.dig")).unwrap();
        assert_eq!(
            l.value,
            json!({
                "_export": {"a": 1, "nested": {"p": 1}, "z": 9},
                "+one": {"echo>": 1},
                "+two": {"echo>": 2},
                "+last": {"echo>": 3},
                "list": [1, 2]
            })
        );
        let keys: Vec<&String> = l.value.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["_export", "+one", "+two", "+last", "list"]);
        assert_eq!(l.sources.get("/+two").unwrap().to_string(), "parts/tasks.dig:1:1");
        assert_eq!(l.sources.get("/+two/echo>").unwrap().to_string(), "parts/deeper/body.dig:1:1");
        assert_eq!(l.sources.get("/_export/nested/p").unwrap().to_string(), "conf/x.yml:3:3");
    }

    #[test]
    fn include_deep_merges_objects_and_later_keys_replace() {
        let d = project(&[
            ("wf.dig", "cfg:\n  db: {host: a, port: 1}\n  !include : 'more.yml'\n  after: {x: 1}\n"),
            ("more.yml", "db: {port: 2, user: u}\nafter: {y: 2}\n"),
        ]);
        let l = load_yaml_file(d.path(), Path::new("wf.dig")).unwrap();
        // Included mappings deep-merge into what is there; a key written after the include replaces.
        assert_eq!(l.value, json!({"cfg": {"db": {"host": "a", "port": 2, "user": "u"}, "after": {"x": 1}}}));
    }

    #[test]
    fn include_errors() {
        let d = project(&[
            ("up.dig", "!include : '../x.yml'\n"),
            ("abs.dig", "!include : '/etc/passwd'\n"),
            ("missing.dig", "a: 1\n!include : 'nope.yml'\n"),
            ("cycle.dig", "!include : 'c2.yml'\n"),
            ("c2.yml", "!include : 'cycle.dig'\n"),
            ("list.dig", "!include : 'l.yml'\n"),
            ("l.yml", "- 1\n"),
            ("bad.dig", "!include : 'broken.yml'\n"),
            ("broken.yml", "a: [1\n"),
            ("var.dig", "!include : 'conf/${env}.yml'\n"),
        ]);
        let err = |f: &str| load_yaml_file(d.path(), Path::new(f)).unwrap_err().to_string();
        assert_eq!(
            err("up.dig"),
            "up.dig:1:1: !include path '../x.yml' must not contain '..': an included file must be in the \
             including file's directory or below it"
        );
        assert!(err("abs.dig").contains("is absolute"));
        let e = err("missing.dig");
        assert!(e.starts_with("missing.dig:2:1: included file 'nope.yml' does not exist"), "{e}");
        let e = err("cycle.dig");
        assert!(e.contains("!include cycle: cycle.dig -> c2.yml -> cycle.dig"), "{e}");
        assert!(err("list.dig").contains("must hold a YAML mapping"));
        let e = err("bad.dig");
        assert!(e.starts_with("broken.yml:1:4: invalid YAML"), "{e}");
        assert!(err("var.dig").contains("contains ${...}"));
    }

    #[cfg(unix)]
    #[test]
    fn include_through_symlink_out_of_project_is_refused() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret.yml"), "a: 1\n").unwrap();
        let d = project(&[("wf.dig", "!include : 'link/secret.yml'\n")]);
        std::os::unix::fs::symlink(outside.path(), d.path().join("link")).unwrap();
        let e = load_yaml_file(d.path(), Path::new("wf.dig")).unwrap_err().to_string();
        assert!(e.contains("outside the project directory"), "{e}");
    }
}
