//! `mail>`: send a mail (Digdag's MailOperatorFactory) through SMTP, over a TCP connection
//! the project grants (`grants: {spade-mail: {tcp: ["smtp.example.com:587"]}}`).
//!
//! The body is the file `mail>: body.txt` names (a `${...}` template) or `body:`; `subject`,
//! `from`, `to` (one address or a list), `cc`, `bcc`, `html` (false), `attach_files`
//! (`[{path, filename, content_type}]`, workspace files). The server: `host`, `port`,
//! `username`, `tls` (true), `ssl` (false), each also from a `mail.*` secret, the password
//! from the `mail.password` secret; a `mail:` map gives defaults.
//!
//! TLS inside the plugin is not there yet: `ssl: true` is refused, and so is a server that
//! offers STARTTLS while `tls` is on (Digdag would encrypt there; spade does not send in
//! clear unless told with `tls: false`). A server that offers no STARTTLS gets the mail in
//! clear, as Digdag does.

mod mime;
mod smtp;

use std::time::Duration;

use serde_json::Value;
use spade_sdk::settings::Settings;
use spade_sdk::{Operator, Outcome, Request, Result, log, secrets};

use crate::mime::{Address, Attachment, Message};

/// Largest attachment, and all of them together.
const MAX_ATTACHMENT_BYTES: u64 = 25 << 20;
const TIMEOUT: Duration = Duration::from_secs(60);

pub struct Mail;

/// What only mail> reads from its settings.
trait MailSettings {
    fn addresses(&self, key: &str) -> Result<Vec<Address>>;
    fn attachments(&self) -> Result<Vec<Attachment>>;
}

impl MailSettings for Settings<'_> {
    fn addresses(&self, key: &str) -> Result<Vec<Address>> {
        let texts: Vec<String> = match self.params.get(key) {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| self.fail(format!("'{key}' must list addresses, got {v}")))
                })
                .collect::<Result<_>>()?,
            Some(other) => return Err(self.fail(format!("'{key}' must be an address or a list of them, got {other}"))),
        };
        texts.iter().map(|t| Address::parse(t).map_err(|e| self.fail(format!("{key}: {e}")))).collect()
    }

    fn attachments(&self) -> Result<Vec<Attachment>> {
        let items = match self.params.get("attach_files") {
            None | Some(Value::Null) => return Ok(Vec::new()),
            Some(Value::Array(items)) => items,
            Some(other) => {
                return Err(self.fail(format!("'attach_files' must be a list of {{path: ...}}, got {other}")));
            }
        };
        let mut out = Vec::new();
        let mut total = 0u64;
        for item in items {
            let Some(path) = item.get("path").and_then(Value::as_str) else {
                return Err(self.fail(format!("each of attach_files needs `path`, got {item}")));
            };
            let full = spade_sdk::command::workspace_path(path);
            let meta =
                std::fs::metadata(&full).map_err(|e| self.fail(format!("cannot read attachment {path}: {e}")))?;
            total += meta.len();
            if !meta.is_file() || total > MAX_ATTACHMENT_BYTES {
                return Err(self.fail(format!(
                    "attachment {path} is not a regular file, or the attachments exceed {} MiB",
                    MAX_ATTACHMENT_BYTES >> 20
                )));
            }
            let bytes = std::fs::read(&full).map_err(|e| self.fail(format!("cannot read attachment {path}: {e}")))?;
            let filename = match item.get("filename").and_then(Value::as_str) {
                Some(f) => f.to_string(),
                None => path.rsplit('/').next().unwrap_or(path).to_string(),
            };
            let content_type =
                item.get("content_type").and_then(Value::as_str).unwrap_or("application/octet-stream").to_string();
            out.push(Attachment { filename, content_type, bytes });
        }
        Ok(out)
    }
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

impl Operator for Mail {
    fn run(req: Request) -> Result<Outcome> {
        let p = Settings::new(&req, "mail");
        let body = spade_sdk::workspace::template_command(&req, &p.params, "body").map_err(|e| p.fail(e))?;
        let subject = p.param("subject")?.ok_or_else(|| p.fail("'subject' is required"))?;
        let from = p.param("from")?.ok_or_else(|| p.fail("'from' is required"))?;
        let from = Address::parse(&from).map_err(|e| p.fail(format!("from: {e}")))?;
        let to = p.addresses("to")?;
        if to.is_empty() {
            return Err(p.fail("'to' is required"));
        }
        let (cc, bcc) = (p.addresses("cc")?, p.addresses("bcc")?);
        let html = p.flag("html", false)?;
        let attachments = p.attachments()?;
        if p.params.get("password").is_some_and(|v| !v.is_null()) {
            log::warn("the 'password' parameter is ignored: set the mail.password secret");
        }

        let host = p.setting("host")?.filter(|h| !h.trim().is_empty()).ok_or_else(|| {
            p.fail("Missing SMTP configuration: set `host:` and `port:` (or the mail.host and mail.port secrets)")
        })?;
        let port = p.setting("port")?.ok_or_else(|| p.fail("'port' is required with `host:`"))?;
        let port: u16 = port.trim().parse().map_err(|_| p.fail(format!("'port' must be a port number, got {port}")))?;
        if p.flag("ssl", false)? {
            return Err(p.fail("ssl: true (SMTP over TLS) is not supported by spade's mail> yet"));
        }
        let tls = p.flag("tls", true)?;
        let username = p.setting("username")?.filter(|u| !u.is_empty());

        // Unique per sending (a retried call sends again, so the time is part of it).
        let id = req.run_key(&format!("mail/{}", now()));
        let message = Message {
            from: &from,
            to: &to,
            cc: &cc,
            subject: &subject,
            body: &body,
            html,
            attachments: &attachments,
            date: mime::rfc5322_date(now()),
            message_id: format!("{id}@spade"),
            boundary: format!("=_spade_{id}"),
        };
        let data = mime::build(&message).map_err(|e| p.fail(e))?;

        let smtp_error = |e: String| p.fail(format!("SMTP {host}:{port}: {e}")).retryable();
        let mut session = smtp::Session::connect(&host, port, TIMEOUT).map_err(|e| {
            let hint = if e.contains("ermission denied") {
                format!(" (is {host}:{port} in this plugin's tcp grant? spade.yml: `grants: {{spade-mail: {{tcp: [\"{host}:{port}\"]}}}}`)")
            } else {
                String::new()
            };
            smtp_error(format!("{e}{hint}"))
        })?;
        if tls && session.offers("STARTTLS") {
            session.quit();
            return Err(p.fail(format!(
                "SMTP {host}:{port} offers STARTTLS, which spade's mail> cannot do yet; set `tls: false` to send in clear \
                 (the credentials too), or use a relay without TLS on a trusted network"
            )));
        }
        if let Some(user) = &username {
            let password = secrets::get("mail.password").unwrap_or_default();
            session.login(user, &password).map_err(smtp_error)?;
        }
        let recipients: Vec<String> = to.iter().chain(&cc).chain(&bcc).map(|a| a.addr.clone()).collect();
        session.send(&from.addr, &recipients, &data).map_err(smtp_error)?;
        session.quit();
        log::info(format!("sent \"{subject}\" to {} recipient(s) through {host}:{port}", recipients.len()));
        Ok(Outcome::done().into())
    }
}

spade_sdk::plugin!(Mail, name = "spade-mail", operators = ["mail"]);
