//! The `tcp` capability: outgoing TCP connections (a database's wire protocol, SMTP) through
//! the standard `wasi:sockets` interfaces, which Rust's `std::net::TcpStream` uses on
//! wasm32-wasip2. Every plugin links `wasi:sockets` with every use refused; a plugin granted
//! `tcp` destinations gets name lookups and connections to exactly those, checked by
//! wasmtime-wasi's socket-address hook on every connect ([`TcpPolicy::allows`]).
//!
//! A destination is `host:port`: a DNS name (the connection must go to an address the name
//! resolves to now), an IP literal, `localhost`, or `*` (any public address); the port is a
//! number, or `*` (a manifest asking for whatever destination its params name). As with `http`, addresses in private, loopback, link-local and other
//! non-public ranges are refused unless the grant names that address (an IP literal, or
//! `localhost` for loopback). Listening, explicit binds and UDP are always refused.
//! Why a connection was refused goes to the task log.
//!
//! Not enforced by the host: a byte cap or a read timeout per connection. A plugin sets
//! its own socket timeouts; the call's CPU and memory limits and its deadline apply to the
//! wasm code as usual.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::sockets::SocketAddrUse;

use crate::capability::http::{host_names_address, is_public};

/// One entry of a tcp grant: `host:port`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpAllow {
    /// A lower-case DNS name, an IP literal, `localhost`, or `*`.
    pub host: String,
    /// `None`: `*`, any port (for a manifest asking for whatever its params name).
    pub port: Option<u16>,
}

impl TcpAllow {
    /// Parses `host:port` (`[v6]:port` for IPv6 literals).
    pub fn parse(text: &str) -> Result<TcpAllow, String> {
        let bad = |why: &str| {
            format!("invalid tcp grant {text:?}: {why}; expected host:port, e.g. db.example.com:5432 or 127.0.0.1:5432")
        };
        let t = text.trim();
        if t.contains("://") || t.contains('/') || t.contains('@') {
            return Err(bad("give only a host and a port"));
        }
        let (host, port) = if let Some(v6) = t.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or_else(|| bad("unclosed ["))?;
            (h.to_string(), after.strip_prefix(':').ok_or_else(|| bad("the port is missing"))?)
        } else {
            let (h, p) = t.rsplit_once(':').ok_or_else(|| bad("the port is missing"))?;
            (h.to_string(), p)
        };
        let port = match port {
            "*" => None,
            p => match p.parse::<u16>() {
                Ok(0) => return Err(bad("port 0 is not a destination")),
                Ok(p) => Some(p),
                Err(_) => return Err(bad("the port is not a number or `*`")),
            },
        };
        let host = host.to_ascii_lowercase();
        let valid = host == "*"
            || host.parse::<IpAddr>().is_ok()
            || (!host.is_empty() && host.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.'));
        if !valid {
            return Err(bad("the host is not a name, an IP address or `*`"));
        }
        Ok(TcpAllow { host, port })
    }

    /// Whether this entry names `ip` itself, which lets it reach a non-public address.
    fn names_address(&self, ip: IpAddr) -> bool {
        host_names_address(&self.host, ip)
    }

    /// Whether `addr` is this entry's destination: its port, and its address, an address its
    /// name resolves to now, or any address for `*`.
    async fn reaches(&self, addr: SocketAddr) -> bool {
        if self.port.is_some_and(|p| p != addr.port()) {
            return false;
        }
        if self.host == "*" || self.names_address(addr.ip()) {
            return true;
        }
        match tokio::net::lookup_host((self.host.as_str(), addr.port())).await {
            Ok(mut addrs) => addrs.any(|a| a.ip() == addr.ip()),
            Err(_) => false,
        }
    }

    /// Whether this grant lets a connection reach `addr`: its destination, and a public
    /// address unless the entry names that address itself.
    async fn allows(&self, addr: SocketAddr) -> bool {
        (is_public(addr.ip()) || self.names_address(addr.ip())) && self.reaches(addr).await
    }
}

impl fmt::Display for TcpAllow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let port = self.port.map_or_else(|| "*".to_string(), |p| p.to_string());
        if self.host.contains(':') { write!(f, "[{}]:{port}", self.host) } else { write!(f, "{}:{port}", self.host) }
    }
}

/// Where one plugin may connect: what it was granted and, when its manifest says, what it
/// asked for; a connection must match both.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpPolicy {
    pub granted: Vec<TcpAllow>,
    /// The manifest's `[wants] tcp`; `None` for a plugin without a manifest.
    pub wanted: Option<Vec<TcpAllow>>,
}

fn list(entries: &[TcpAllow]) -> String {
    if entries.is_empty() {
        return "nothing".into();
    }
    entries.iter().map(|e| e.to_string()).collect::<Vec<_>>().join(", ")
}

impl TcpPolicy {
    /// Whether the plugin may use `addr` as `used`; why not, when it may not.
    pub async fn allows(&self, addr: SocketAddr, used: SocketAddrUse) -> Result<(), String> {
        match used {
            SocketAddrUse::TcpConnect => {}
            // connect() binds implicitly to the wildcard address first.
            SocketAddrUse::TcpBind if addr.ip().is_unspecified() && addr.port() == 0 => return Ok(()),
            _ => return Err(format!("{used:?} on {addr} refused: plugins may only open outgoing TCP connections")),
        }
        let mut granted = false;
        for g in &self.granted {
            if g.allows(addr).await {
                granted = true;
                break;
            }
        }
        if !granted {
            let hint = if is_public(addr.ip()) {
                ""
            } else {
                " (a private or loopback address needs a grant naming that address)"
            };
            return Err(format!(
                "connection to {addr} refused: not in this plugin's tcp grant ({}){hint}",
                list(&self.granted)
            ));
        }
        if let Some(wanted) = &self.wanted {
            // Whether a non-public address may be reached is the grant's decision alone (a
            // plugin asking for `*:5432` cannot know the host's network).
            let mut asked = false;
            for w in wanted {
                if w.reaches(addr).await {
                    asked = true;
                    break;
                }
            }
            if !asked {
                return Err(format!(
                    "connection to {addr} refused: not among the destinations the plugin's manifest asks for ({})",
                    list(wanted)
                ));
            }
        }
        Ok(())
    }

    /// Lets the call's WASI context connect where this policy allows (every connection is
    /// checked, so a plugin without a grant learns in its task log why it was refused) and
    /// resolve names when it has a grant; returns where the reasons for refusals are
    /// collected.
    pub(crate) fn configure(self: &Arc<Self>, b: &mut WasiCtxBuilder) -> Arc<Mutex<Vec<String>>> {
        let notes = Arc::new(Mutex::new(Vec::new()));
        let (policy, sink) = (self.clone(), notes.clone());
        b.allow_tcp(true).allow_ip_name_lookup(!self.granted.is_empty()).socket_addr_check(move |addr, used| {
            let (policy, sink) = (policy.clone(), sink.clone());
            Box::pin(async move {
                match policy.allows(addr, used).await {
                    Ok(()) => true,
                    Err(why) => {
                        sink.lock().unwrap_or_else(|e| e.into_inner()).push(format!("spade: {why}"));
                        false
                    }
                }
            })
        });
        notes
    }
}

impl fmt::Display for TcpPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&list(&self.granted))?;
        if let Some(w) = &self.wanted {
            write!(f, "; asks for {}", list(w))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(granted: &[&str]) -> TcpPolicy {
        TcpPolicy { granted: granted.iter().map(|g| TcpAllow::parse(g).unwrap()).collect(), wanted: None }
    }

    fn check(p: &TcpPolicy, addr: &str, used: SocketAddrUse) -> Result<(), String> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(p.allows(addr.parse().unwrap(), used))
    }

    #[test]
    fn grants_parse() {
        assert_eq!(
            TcpAllow::parse("DB.example.com:5432").unwrap(),
            TcpAllow { host: "db.example.com".into(), port: Some(5432) }
        );
        assert_eq!(TcpAllow::parse("*:*").unwrap().to_string(), "*:*");
        assert_eq!(TcpAllow::parse("[::1]:25").unwrap().to_string(), "[::1]:25");
        for bad in ["db.example.com", "db:x", "postgres://db:5432", "a b:1", "h:0"] {
            assert!(TcpAllow::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_granted_connections_pass() {
        let p = policy(&["127.0.0.1:5432", "localhost:6379", "*:25"]);
        assert!(check(&p, "127.0.0.1:5432", SocketAddrUse::TcpConnect).is_ok());
        assert!(check(&p, "127.0.0.1:6379", SocketAddrUse::TcpConnect).is_ok(), "localhost names loopback");
        assert!(check(&p, "127.0.0.1:5433", SocketAddrUse::TcpConnect).is_err());
        assert!(check(&p, "8.8.8.8:25", SocketAddrUse::TcpConnect).is_ok(), "* reaches public addresses");
        let err = check(&p, "10.0.0.1:25", SocketAddrUse::TcpConnect).unwrap_err();
        assert!(err.contains("private or loopback"), "{err}");
        assert!(check(&p, "0.0.0.0:0", SocketAddrUse::TcpBind).is_ok(), "connect's implicit bind");
        assert!(check(&p, "0.0.0.0:8080", SocketAddrUse::TcpBind).is_err());
        assert!(check(&p, "127.0.0.1:5432", SocketAddrUse::UdpSend).is_err());
    }

    #[test]
    fn the_manifest_narrows_the_grant() {
        let mut p = policy(&["127.0.0.1:5432", "127.0.0.1:6379"]);
        p.wanted = Some(vec![TcpAllow::parse("*:5432").unwrap()]);
        assert!(check(&p, "127.0.0.1:5432", SocketAddrUse::TcpConnect).is_ok());
        assert!(check(&p, "127.0.0.1:6379", SocketAddrUse::TcpConnect).unwrap_err().contains("manifest"));
    }
}
