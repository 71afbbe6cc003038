//! Where a registry is: a directory, or an http(s) base URL serving the same tree.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::index::{IndexFile, check_name, index_path};
use crate::{MAX_INDEX_BYTES, RegistryError, Result, err};

/// Longest a download may take, redirects included.
const FETCH_TIMEOUT: Duration = Duration::from_secs(120);
const MAX_REDIRECTS: u32 = 5;

/// A registry location.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Registry {
    /// A directory holding `index/` and `files/`.
    Dir(PathBuf),
    /// A base URL ending in `/`.
    Http(String),
}

impl fmt::Display for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Registry::Dir(p) => write!(f, "{}", p.display()),
            Registry::Http(u) => f.write_str(u),
        }
    }
}

impl Registry {
    /// `https://...` or `http://...` (a base URL), `file:///...`, or a directory path,
    /// relative to `base` (the project) when not absolute.
    pub fn parse(spec: &str, base: &Path) -> Result<Registry> {
        let spec = spec.trim();
        if spec.is_empty() {
            return err("the registry is empty; give a URL (https://...) or a directory");
        }
        let lower = spec.to_ascii_lowercase();
        if lower.starts_with("https://") || lower.starts_with("http://") {
            if spec.contains(['?', '#']) {
                return err(format!("registry URL {spec:?} must not have a query or fragment"));
            }
            let mut url = spec.to_string();
            if !url.ends_with('/') {
                url.push('/');
            }
            return Ok(Registry::Http(url));
        }
        if lower.contains("://") && !lower.starts_with("file://") {
            return err(format!(
                "registry {spec:?}: only https://, http://, file:// and directory paths are supported"
            ));
        }
        let path = PathBuf::from(spec.strip_prefix("file://").unwrap_or(spec));
        let path = if path.is_absolute() { path } else { base.join(path) };
        Ok(Registry::Dir(path.canonicalize().unwrap_or(path)))
    }

    /// How the lockfile names this registry.
    pub fn id(&self) -> String {
        match self {
            Registry::Dir(p) => format!("file://{}", p.display()),
            Registry::Http(u) => u.clone(),
        }
    }

    /// The directory, for a directory registry (the only kind spade publishes to).
    pub fn local_dir(&self) -> Option<&Path> {
        match self {
            Registry::Dir(p) => Some(p),
            Registry::Http(_) => None,
        }
    }

    /// The index of plugin `name`.
    pub fn index(&self, name: &str) -> Result<IndexFile> {
        check_name(name)?;
        let rel = index_path(name);
        match self.get(&rel, MAX_INDEX_BYTES)? {
            Some(bytes) => IndexFile::parse(&bytes, name, self),
            None => err(format!(
                "registry {self} has no plugin named {name} (no {rel}); check the name, or publish it with \
                 `spade plugin publish`"
            )),
        }
    }

    /// The file at `rel` (at most `limit` bytes); missing is an error.
    pub fn fetch(&self, rel: &str, limit: u64) -> Result<Vec<u8>> {
        self.get(rel, limit)?.ok_or_else(|| RegistryError(format!("registry {self} lists {rel} but does not have it")))
    }

    fn get(&self, rel: &str, limit: u64) -> Result<Option<Vec<u8>>> {
        match self {
            Registry::Dir(root) => {
                let path = root.join(rel);
                match std::fs::metadata(&path) {
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        if !root.is_dir() {
                            return err(format!("registry {self} is not a directory"));
                        }
                        Ok(None)
                    }
                    Err(e) => err(format!("reading {}: {e}", path.display())),
                    Ok(m) if m.len() > limit => err(format!(
                        "{} is {} bytes, more than the {limit} a registry file may have",
                        path.display(),
                        m.len()
                    )),
                    Ok(_) => std::fs::read(&path)
                        .map(Some)
                        .map_err(|e| RegistryError(format!("reading {}: {e}", path.display()))),
                }
            }
            Registry::Http(base) => http_get(&format!("{base}{rel}"), limit),
        }
    }
}

fn http_get(url: &str, limit: u64) -> Result<Option<Vec<u8>>> {
    let config = ureq::Agent::config_builder()
        .timeout_global(Some(FETCH_TIMEOUT))
        .max_redirects(MAX_REDIRECTS)
        .http_status_as_error(false)
        .user_agent(concat!("spade/", env!("CARGO_PKG_VERSION")))
        .build();
    let agent = ureq::Agent::new_with_config(config);
    let mut response = agent.get(url).call().map_err(|e| RegistryError(format!("fetching {url}: {e}")))?;
    match response.status().as_u16() {
        200 => {}
        404 | 410 => return Ok(None),
        status => {
            return err(format!(
                "fetching {url}: the registry answered HTTP {status}; try again later or check the registry URL"
            ));
        }
    }
    let bytes = response.body_mut().with_config().limit(limit).read_to_vec().map_err(|e| match e {
        ureq::Error::BodyExceedsLimit(_) => {
            RegistryError(format!("fetching {url}: the file is larger than {limit} bytes"))
        }
        e => RegistryError(format!("fetching {url}: {e}")),
    })?;
    Ok(Some(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse() {
        let base = Path::new("/proj");
        assert_eq!(
            Registry::parse("https://plugins.example.com/x", base).unwrap(),
            Registry::Http("https://plugins.example.com/x/".into())
        );
        assert_eq!(Registry::parse("reg", base).unwrap(), Registry::Dir("/proj/reg".into()));
        assert_eq!(Registry::parse("file:///srv/reg", base).unwrap(), Registry::Dir("/srv/reg".into()));
        assert_eq!(Registry::parse("/srv/reg", base).unwrap().id(), "file:///srv/reg");
        assert!(Registry::parse("ftp://x", base).is_err());
        assert!(Registry::parse("https://x/?a=b", base).is_err());
        assert!(Registry::parse(" ", base).is_err());
    }

    #[test]
    fn a_missing_plugin_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::Dir(dir.path().into());
        let msg = reg.index("acme").unwrap_err().to_string();
        assert!(msg.contains("has no plugin named acme"), "{msg}");
        let gone = Registry::Dir(dir.path().join("nope"));
        assert!(gone.index("acme").unwrap_err().to_string().contains("is not a directory"));
    }
}
