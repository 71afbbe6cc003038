//! Plugin manifests: what a plugin asks of the host, and what it is linked with.
//!
//! A plugin project's `spade-plugin.toml` says which capabilities the plugin wants (secret
//! keys, HTTP destinations, workflow loading, expressions, the engine) and the most memory
//! and time one call needs. `spade plugin build` (and spade's own build for the bundled
//! plugins) embeds that text in the component as a top-level custom section named
//! [`MANIFEST_SECTION`], so the file that is hashed, cached, distributed and installed
//! carries its own request.
//!
//! At install the host links the *intersection* of that request and the operator's grants
//! ([`Linked`]): a secret key is readable only if both name it, a request goes out only if
//! both allow its destination, limits are the smaller of both. A component importing a
//! capability its manifest does not ask for is refused (the manifest would be lying about
//! the plugin). A component without a manifest asks for exactly what it imports, with no
//! narrowing of keys, hosts or limits beyond the grants.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use spade_api::Limits;
use wasm_encoder::{CustomSection, Section};
use wasmparser::BinaryReader;

use crate::Grants;
use crate::capability::Capability;
use crate::capability::http::{HttpAllow, HttpPolicy};
use crate::capability::tcp::{TcpAllow, TcpPolicy};

/// Name of the component custom section holding the manifest (TOML text).
pub const MANIFEST_SECTION: &str = "spade-manifest";

/// The file a plugin project keeps its manifest in.
pub const MANIFEST_FILE: &str = "spade-plugin.toml";

/// Largest manifest accepted (it is read before anything of the plugin runs).
const MAX_MANIFEST_BYTES: usize = 64 << 10;

/// A parsed `spade-plugin.toml`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Manifest {
    pub wants: Wants,
}

/// The `[wants]` table: what the plugin asks for beyond `log` and `output`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Wants {
    /// Secret keys it reads: exact keys, `prefix*` or `*`.
    pub secrets: Vec<String>,
    /// HTTP destinations it calls (`[scheme://]host[:port]`, as in grants). Empty: no HTTP.
    pub http: Vec<HttpAllow>,
    /// TCP destinations it connects to (`host:port`, as in grants). Empty: no TCP.
    pub tcp: Vec<TcpAllow>,
    pub workflows: bool,
    pub expressions: bool,
    pub engine: bool,
    /// Reads and writes the parameter server (`params` capability).
    pub params: bool,
    /// Runs commands (`command` capability).
    pub command: bool,
    /// The most memory one call needs.
    pub memory_bytes: Option<usize>,
    /// The most time one call needs.
    pub cpu_time: Option<Duration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestFile {
    #[serde(default)]
    wants: WantsFile,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct WantsFile {
    #[serde(default)]
    secrets: Vec<String>,
    #[serde(default)]
    http: Vec<String>,
    #[serde(default)]
    tcp: Vec<String>,
    #[serde(default)]
    workflows: bool,
    #[serde(default)]
    expressions: bool,
    #[serde(default)]
    engine: bool,
    #[serde(default)]
    params: bool,
    #[serde(default)]
    command: bool,
    memory_mb: Option<u64>,
    cpu_seconds: Option<u64>,
}

impl Manifest {
    /// Parses manifest text. Errors say what is wrong and where (TOML line and column);
    /// the caller says which manifest.
    pub fn parse(text: &str) -> Result<Manifest, String> {
        let file: ManifestFile = toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())?;
        let w = file.wants;
        for key in &w.secrets {
            if key.is_empty() || key.strip_suffix('*').unwrap_or(key).contains('*') {
                return Err(format!("secret key {key:?} in [wants] secrets: use an exact key, `prefix*` or `*`"));
            }
        }
        let http = w
            .http
            .iter()
            .map(|h| HttpAllow::parse(h).map_err(|e| format!("[wants] http: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        let tcp = w
            .tcp
            .iter()
            .map(|t| TcpAllow::parse(t).map_err(|e| format!("[wants] tcp: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        let memory_bytes = match w.memory_mb {
            Some(0) => return Err("[wants] memory_mb must be at least 1".into()),
            Some(mb) => Some(usize::try_from(mb).unwrap_or(usize::MAX).saturating_mul(1 << 20)),
            None => None,
        };
        let cpu_time = match w.cpu_seconds {
            Some(0) => return Err("[wants] cpu_seconds must be at least 1".into()),
            Some(s) => Some(Duration::from_secs(s)),
            None => None,
        };
        Ok(Manifest {
            wants: Wants {
                secrets: w.secrets,
                http,
                tcp,
                workflows: w.workflows,
                expressions: w.expressions,
                engine: w.engine,
                params: w.params,
                command: w.command,
                memory_bytes,
                cpu_time,
            },
        })
    }

    /// Whether the manifest asks for `capability`.
    pub fn asks_for(&self, capability: Capability) -> bool {
        self.wants.asks(capability)
    }
}

/// The manifest text embedded in `component`, if any. Errors: malformed section layout,
/// several manifests, or a manifest that is not UTF-8 or too large.
pub fn read_embedded(component: &[u8]) -> Result<Option<String>, String> {
    let mut found = None;
    for section in custom_sections(component)? {
        let (name, data, _) = section;
        if name != MANIFEST_SECTION {
            continue;
        }
        if found.is_some() {
            return Err(format!("it holds more than one `{MANIFEST_SECTION}` section"));
        }
        if data.len() > MAX_MANIFEST_BYTES {
            return Err(format!(
                "its `{MANIFEST_SECTION}` section is {} bytes (at most {MAX_MANIFEST_BYTES})",
                data.len()
            ));
        }
        let text =
            std::str::from_utf8(data).map_err(|_| format!("its `{MANIFEST_SECTION}` section is not UTF-8 text"))?;
        found = Some(text.to_string());
    }
    Ok(found)
}

/// `component` with `manifest` as its embedded manifest (replacing any earlier one).
/// The manifest is checked first, so a component never carries one the host would refuse.
pub fn embed(component: &[u8], manifest: &str) -> Result<Vec<u8>, String> {
    Manifest::parse(manifest).map_err(|e| format!("{MANIFEST_FILE}: invalid plugin manifest: {e}"))?;
    if manifest.len() > MAX_MANIFEST_BYTES {
        return Err(format!("{MANIFEST_FILE} is {} bytes (at most {MAX_MANIFEST_BYTES})", manifest.len()));
    }
    let old: Vec<std::ops::Range<usize>> = custom_sections(component)?
        .into_iter()
        .filter(|(name, _, _)| *name == MANIFEST_SECTION)
        .map(|(_, _, range)| range)
        .collect();
    let mut out = Vec::with_capacity(component.len() + manifest.len() + 32);
    let mut at = 0;
    for range in old {
        out.extend_from_slice(&component[at..range.start]);
        at = range.end;
    }
    out.extend_from_slice(&component[at..]);
    CustomSection { name: MANIFEST_SECTION.into(), data: manifest.as_bytes().into() }.append_to(&mut out);
    Ok(out)
}

/// A custom section: its name, its data and the byte range of the whole section.
type SectionRef<'a> = (&'a str, &'a [u8], std::ops::Range<usize>);

/// The top-level custom sections of a component: (name, data, byte range of the whole
/// section). Nested modules and components are skipped whole: their custom sections are
/// their own.
fn custom_sections(bytes: &[u8]) -> Result<Vec<SectionRef<'_>>, String> {
    let broken = |e: wasmparser::BinaryReaderError| format!("its section layout is broken: {e}");
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err("it is not a WebAssembly binary".into());
    }
    let mut reader = BinaryReader::new(&bytes[8..], 8);
    let mut out = Vec::new();
    while !reader.eof() {
        let start = reader.original_position();
        let id = reader.read_u8().map_err(broken)?;
        let size = reader.read_var_u32().map_err(broken)? as usize;
        let body = reader.read_bytes(size).map_err(broken)?;
        if id == 0 {
            let mut inner = BinaryReader::new(body, 0);
            let name = inner.read_string().map_err(broken)?;
            let data = &body[inner.original_position()..];
            out.push((name, data, start..reader.original_position()));
        }
    }
    Ok(out)
}

/// What one installed plugin is linked with: the intersection of its manifest's request
/// and its grants (or just the grants, for a plugin without a manifest).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Linked {
    /// Secret key patterns it may read (each both asked for and granted).
    pub secrets: Vec<String>,
    /// Whether `secrets` is linked. A plugin whose manifest asks for secrets links it even
    /// when none of its keys are granted (it then reads none): a script operator passes
    /// `${secret:KEY}` through for whatever keys the project grants it, possibly none.
    pub secrets_linked: bool,
    /// Where it may send HTTP requests; `None`: `wasi:http` is not linked.
    pub http: Option<HttpPolicy>,
    /// Where it may open TCP connections; `None`: every socket use is refused.
    pub tcp: Option<TcpPolicy>,
    pub workflows: bool,
    pub expressions: bool,
    pub engine: bool,
    pub params: bool,
    /// What its commands may use; `None`: the `command` interface is not linked.
    pub command: Option<crate::CommandGrant>,
    /// Ceilings of one call (the smaller of asked and granted).
    pub limits: Option<Limits>,
}

impl Linked {
    /// Intersects `manifest` (none: the plugin asks for whatever it is granted) with `grants`.
    /// Returns the linked set and warnings about requests the grants do not cover.
    pub fn new(manifest: Option<&Manifest>, grants: &Grants) -> (Linked, Vec<String>) {
        let Some(m) = manifest else {
            return (
                Linked {
                    secrets: grants.secrets.clone(),
                    secrets_linked: !grants.secrets.is_empty(),
                    http: grants.http.clone().map(|granted| HttpPolicy { granted, wanted: None }),
                    tcp: (!grants.tcp.is_empty()).then(|| TcpPolicy { granted: grants.tcp.clone(), wanted: None }),
                    workflows: grants.workflows,
                    expressions: grants.expressions,
                    engine: grants.engine,
                    params: grants.params,
                    command: grants.command.clone(),
                    limits: grants.limits,
                },
                Vec::new(),
            );
        };
        let w = &m.wants;
        let mut warnings = Vec::new();
        let mut secrets: Vec<String> = Vec::new();
        for want in &w.secrets {
            let mut covered = false;
            for grant in &grants.secrets {
                if let Some(both) = intersect_keys(want, grant) {
                    covered |= both == *want;
                    if !secrets.contains(&both) {
                        secrets.push(both);
                    }
                }
            }
            if !covered {
                warnings.push(format!(
                    "asks for secret keys `{want}` but is granted only {}",
                    list_or_none(&grants.secrets)
                ));
            }
        }
        let http = match (&grants.http, w.http.is_empty()) {
            (Some(granted), false) => Some(HttpPolicy { granted: granted.clone(), wanted: Some(w.http.clone()) }),
            _ => None,
        };
        // Asked for: linked with what is granted, possibly nothing (every connection refused,
        // and `spade plugin list` shows what it asks for).
        let tcp = (!w.tcp.is_empty()).then(|| TcpPolicy { granted: grants.tcp.clone(), wanted: Some(w.tcp.clone()) });
        let mut limits = grants.limits;
        if w.memory_bytes.is_some() || w.cpu_time.is_some() {
            let mut l =
                limits.unwrap_or(Limits { cpu_time: Duration::MAX, memory_bytes: usize::MAX, log_bytes: usize::MAX });
            if let Some(mem) = w.memory_bytes {
                if mem > l.memory_bytes {
                    warnings.push(format!(
                        "asks for {} MiB per call but is granted at most {} MiB",
                        mem >> 20,
                        l.memory_bytes >> 20
                    ));
                }
                l.memory_bytes = l.memory_bytes.min(mem);
            }
            if let Some(cpu) = w.cpu_time {
                if cpu > l.cpu_time {
                    warnings.push(format!(
                        "asks for {} s per call but is granted at most {} s",
                        cpu.as_secs(),
                        l.cpu_time.as_secs()
                    ));
                }
                l.cpu_time = l.cpu_time.min(cpu);
            }
            limits = Some(l);
        }
        let linked = Linked {
            secrets,
            secrets_linked: !w.secrets.is_empty(),
            http,
            tcp,
            workflows: w.workflows && grants.workflows,
            expressions: w.expressions && grants.expressions,
            engine: w.engine && grants.engine,
            params: w.params && grants.params,
            command: if w.command { grants.command.clone() } else { None },
            limits,
        };
        if !w.tcp.is_empty() && grants.tcp.is_empty() {
            warnings.push(format!(
                "asks for tcp connections ({}) but is granted none",
                w.tcp.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(", ")
            ));
        }
        if w.command && grants.command.is_none() {
            warnings.push("asks to run commands but is not granted `command`".to_string());
        }
        (linked, warnings)
    }

    /// Whether `capability` is linked.
    pub fn links(&self, capability: Capability) -> bool {
        match capability {
            Capability::Secrets => self.secrets_linked,
            Capability::Http => self.http.is_some(),
            Capability::Workflows => self.workflows,
            Capability::Expressions => self.expressions,
            Capability::Engine => self.engine,
            Capability::Params => self.params,
            Capability::Command => self.command.is_some(),
            Capability::Tcp => self.tcp.is_some(),
        }
    }

    /// Whether `key` is a readable secret.
    pub fn may_read_secret(&self, key: &str) -> bool {
        self.secrets.iter().any(|p| key_matches(p, key))
    }
}

/// `secrets(a,b) http(...) workflows expressions engine command`, the parts that are on:
/// `on` says which capabilities are, `secrets` and `http` give those two's details.
/// `details` gives the text in parentheses after a capability's name, when it has some.
fn capability_list(
    secrets: &[String],
    http: Option<String>,
    on: impl Fn(Capability) -> bool,
    details: impl Fn(Capability) -> Option<String>,
) -> Vec<String> {
    Capability::ALL
        .into_iter()
        .filter_map(|c| match c {
            Capability::Secrets => (!secrets.is_empty()).then(|| format!("{c}({})", secrets.join(","))),
            Capability::Http => http.as_ref().map(|h| format!("{c}({h})")),
            other => on(other).then(|| match details(other) {
                Some(d) => format!("{other}({d})"),
                None => other.to_string(),
            }),
        })
        .collect()
}

impl fmt::Display for Linked {
    /// The capabilities beyond log and output, e.g. `secrets(slack.*) http(https://x) engine`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The command grant shows its executors, e.g. `command(sandbox,docker)`.
        let executors = |c: Capability| match (c, &self.command) {
            (Capability::Command, Some(g)) => Some(g.executors.iter().map(|e| e.name()).collect::<Vec<_>>().join(",")),
            (Capability::Tcp, _) => self.tcp.as_ref().map(|t| t.to_string()),
            _ => None,
        };
        let parts =
            capability_list(&self.secrets, self.http.as_ref().map(|h| h.to_string()), |c| self.links(c), executors);
        if parts.is_empty() { f.write_str("-") } else { f.write_str(&parts.join(" ")) }
    }
}

impl Wants {
    /// Whether it asks for `capability`.
    pub fn asks(&self, capability: Capability) -> bool {
        match capability {
            Capability::Secrets => !self.secrets.is_empty(),
            Capability::Http => !self.http.is_empty(),
            Capability::Workflows => self.workflows,
            Capability::Expressions => self.expressions,
            Capability::Engine => self.engine,
            Capability::Params => self.params,
            Capability::Command => self.command,
            Capability::Tcp => !self.tcp.is_empty(),
        }
    }
}

impl fmt::Display for Wants {
    /// The request in one line, e.g. `secrets(slack.*) http(https://x) memory 64 MiB`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let http =
            (!self.http.is_empty()).then(|| self.http.iter().map(|h| h.to_string()).collect::<Vec<_>>().join(", "));
        let tcp = |c: Capability| {
            (c == Capability::Tcp).then(|| self.tcp.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(", "))
        };
        let mut parts = capability_list(&self.secrets, http, |c| self.asks(c), tcp);
        if let Some(m) = self.memory_bytes {
            parts.push(format!("memory {} MiB", m >> 20));
        }
        if let Some(t) = self.cpu_time {
            parts.push(format!("time {} s", t.as_secs()));
        }
        if parts.is_empty() { f.write_str("nothing beyond log and output") } else { f.write_str(&parts.join(" ")) }
    }
}

fn list_or_none(keys: &[String]) -> String {
    if keys.is_empty() { "none".into() } else { keys.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ") }
}

/// Whether the key pattern `pattern` (exact, `prefix*`, `*`) covers `key`.
pub(crate) fn key_matches(pattern: &str, key: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => key.starts_with(prefix),
        None => !pattern.is_empty() && pattern == key,
    }
}

/// The pattern covering exactly the keys both `a` and `b` cover, if any key is.
fn intersect_keys(a: &str, b: &str) -> Option<String> {
    match (a.strip_suffix('*'), b.strip_suffix('*')) {
        (Some(pa), Some(pb)) if pa.starts_with(pb) => Some(a.to_string()),
        (Some(pa), Some(pb)) if pb.starts_with(pa) => Some(b.to_string()),
        (Some(_), Some(_)) => None,
        (Some(_), None) => key_matches(a, b).then(|| b.to_string()),
        (None, Some(_)) => key_matches(b, a).then(|| a.to_string()),
        (None, None) => (!a.is_empty() && a == b).then(|| a.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_patterns_intersect() {
        assert_eq!(intersect_keys("*", "slack.*").as_deref(), Some("slack.*"));
        assert_eq!(intersect_keys("slack.token", "slack.*").as_deref(), Some("slack.token"));
        assert_eq!(intersect_keys("slack.*", "slack.webhook.*").as_deref(), Some("slack.webhook.*"));
        assert_eq!(intersect_keys("slack.*", "http.*"), None);
        assert_eq!(intersect_keys("a", "b"), None);
        assert_eq!(intersect_keys("a", "a").as_deref(), Some("a"));
        assert!(key_matches("*", "anything"));
        assert!(!key_matches("", ""));
        assert!(!key_matches("slack.*", "slackx"));
    }

    #[test]
    fn manifest_parses_and_rejects_typos() {
        let m = Manifest::parse(
            "[wants]\nsecrets = [\"slack.*\"]\nhttp = [\"https://hooks.slack.com\"]\nengine = true\nmemory_mb = 64\ncpu_seconds = 5\n",
        )
        .unwrap();
        assert!(m.asks_for(Capability::Secrets) && m.asks_for(Capability::Http) && m.asks_for(Capability::Engine));
        assert!(!m.asks_for(Capability::Workflows));
        assert_eq!(m.wants.memory_bytes, Some(64 << 20));
        assert_eq!(m.wants.cpu_time, Some(Duration::from_secs(5)));

        let err = Manifest::parse("[wants]\nsecret = [\"a\"]\n").unwrap_err();
        assert!(err.contains("line 2") && err.contains("unknown field `secret`"), "{err}");
        assert!(Manifest::parse("[wants]\nhttp = [\"ftp://x\"]\n").is_err());
        assert!(Manifest::parse("[wants]\nsecrets = [\"a*b\"]\n").is_err());
        assert!(Manifest::parse("[wants]\nmemory_mb = 0\n").is_err());
        assert_eq!(Manifest::parse("").unwrap(), Manifest::default());
    }

    #[test]
    fn linked_is_the_intersection() {
        let m = Manifest::parse(
            "[wants]\nsecrets = [\"slack.*\", \"db.password\"]\nhttp = [\"https://hooks.slack.com\"]\nworkflows = true\nmemory_mb = 32\n",
        )
        .unwrap();
        let grants = Grants {
            secrets: vec!["*".into()],
            http: Some(vec![HttpAllow::parse("*").unwrap()]),
            engine: true,
            ..Grants::default()
        };
        let (linked, warnings) = Linked::new(Some(&m), &grants);
        assert_eq!(linked.secrets, vec!["slack.*".to_string(), "db.password".to_string()]);
        assert!(linked.may_read_secret("slack.token") && !linked.may_read_secret("db.user"));
        assert!(linked.http.is_some());
        assert!(!linked.workflows, "asked but not granted");
        assert!(!linked.engine, "granted but not asked");
        assert_eq!(linked.limits.unwrap().memory_bytes, 32 << 20);
        assert!(warnings.is_empty(), "{warnings:?}");

        let narrow = Grants {
            secrets: vec!["slack.token".into()],
            limits: Some(Limits { cpu_time: Duration::from_secs(1), memory_bytes: 16 << 20, log_bytes: 1 << 20 }),
            ..Grants::default()
        };
        let (linked, warnings) = Linked::new(Some(&m), &narrow);
        assert_eq!(linked.secrets, vec!["slack.token".to_string()]);
        assert_eq!(linked.http, None);
        assert_eq!(linked.limits.unwrap().memory_bytes, 16 << 20);
        assert_eq!(warnings.len(), 3, "{warnings:?}");

        let (plain, _) = Linked::new(None, &grants);
        assert!(plain.may_read_secret("anything") && plain.engine);
    }

    #[test]
    fn tcp_links_only_when_asked_and_granted() {
        let m = Manifest::parse("[wants]\ntcp = [\"*:5432\"]\n").unwrap();
        assert_eq!(m.wants.to_string(), "tcp(*:5432)");
        let grants = Grants { tcp: vec![TcpAllow::parse("127.0.0.1:5432").unwrap()], ..Grants::default() };
        let (linked, warnings) = Linked::new(Some(&m), &grants);
        assert_eq!(linked.to_string(), "tcp(127.0.0.1:5432; asks for *:5432)");
        assert!(warnings.is_empty(), "{warnings:?}");
        let (none, warnings) = Linked::new(Some(&m), &Grants::default());
        assert_eq!(none.to_string(), "tcp(nothing; asks for *:*)".replace("*:*", "*:5432"));
        assert_eq!(warnings, ["asks for tcp connections (*:5432) but is granted none"]);
        assert!(Manifest::parse("[wants]\ntcp = [\"db\"]\n").unwrap_err().contains("port is missing"));
    }

    #[test]
    fn embed_replaces_and_reads_back() {
        // The smallest component: magic and layer/version, then a custom section of its own.
        let mut component = b"\0asm\x0d\0\x01\0".to_vec();
        CustomSection { name: "other".into(), data: b"keep me".as_slice().into() }.append_to(&mut component);
        assert_eq!(read_embedded(&component).unwrap(), None);
        let one = embed(&component, "[wants]\nengine = true\n").unwrap();
        assert_eq!(read_embedded(&one).unwrap().as_deref(), Some("[wants]\nengine = true\n"));
        let two = embed(&one, "[wants]\nworkflows = true\n").unwrap();
        assert_eq!(read_embedded(&two).unwrap().as_deref(), Some("[wants]\nworkflows = true\n"));
        let sections = custom_sections(&two).unwrap();
        assert_eq!(sections.len(), 2, "the old manifest is gone, the other section kept");
        assert_eq!(sections[0].0, "other");
        assert!(embed(&component, "[wants]\nbogus = 1\n").is_err());
        let mut doubled = one.clone();
        doubled.extend_from_slice(&one[component.len()..]);
        assert!(read_embedded(&doubled).unwrap_err().contains("more than one"));
        assert!(read_embedded(&one[..one.len() - 3]).is_err());
    }
}
