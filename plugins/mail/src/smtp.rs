//! A small SMTP client (RFC 5321) over `std::net::TcpStream`: greeting, EHLO, AUTH PLAIN or
//! LOGIN, one message to its envelope recipients, QUIT. Replies are checked code by code;
//! an error carries the server's reply.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::mime::base64;

/// A reply: its code and its text lines.
#[derive(Debug)]
struct Reply {
    code: u16,
    lines: Vec<String>,
}

impl Reply {
    fn text(&self) -> String {
        format!("{} {}", self.code, self.lines.join(" / "))
    }
}

pub struct Session {
    /// One stream for both directions (wasm32-wasip2 cannot clone a socket).
    stream: TcpStream,
    /// Bytes read past the last reply line.
    pending: Vec<u8>,
    /// EHLO keywords, upper case (`STARTTLS`, `AUTH PLAIN LOGIN`, `SIZE 1000`).
    extensions: Vec<String>,
}

/// What went wrong, for the task's error message.
pub type SmtpResult<T> = Result<T, String>;

impl Session {
    pub fn connect(host: &str, port: u16, timeout: Duration) -> SmtpResult<Session> {
        let stream = TcpStream::connect((host, port)).map_err(|e| format!("cannot connect to {host}:{port}: {e}"))?;
        let _ = stream.set_read_timeout(Some(timeout));
        let _ = stream.set_write_timeout(Some(timeout));
        let mut s = Session { stream, pending: Vec::new(), extensions: Vec::new() };
        s.expect(&[220], "the greeting")?;
        let ehlo = s.command("EHLO spade.local", &[250], "EHLO")?;
        s.extensions = ehlo.lines.iter().skip(1).map(|l| l.trim().to_ascii_uppercase()).collect();
        Ok(s)
    }

    pub fn offers(&self, keyword: &str) -> bool {
        self.extensions.iter().any(|e| e == keyword || e.starts_with(&format!("{keyword} ")))
    }

    fn auth_mechanisms(&self) -> Vec<String> {
        self.extensions
            .iter()
            .filter_map(|e| e.strip_prefix("AUTH ").or_else(|| e.strip_prefix("AUTH=")))
            .flat_map(|m| m.split_whitespace().map(str::to_string))
            .collect()
    }

    /// One line of the server's, without its line end.
    fn read_line(&mut self) -> SmtpResult<String> {
        loop {
            if let Some(end) = self.pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=end).collect();
                return Ok(String::from_utf8_lossy(&line).trim_end_matches(['\r', '\n']).to_string());
            }
            if self.pending.len() > 64 << 10 {
                return Err("the server sent a line longer than 64 KiB".into());
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).map_err(|e| format!("reading the server's reply failed: {e}"))?;
            if n == 0 {
                return Err("the server closed the connection".into());
            }
            self.pending.extend_from_slice(&chunk[..n]);
        }
    }

    fn read_reply(&mut self) -> SmtpResult<Reply> {
        let mut lines = Vec::new();
        loop {
            let line = self.read_line()?;
            let line = line.as_str();
            if line.len() < 3 {
                return Err(format!("malformed reply {line:?}"));
            }
            let code: u16 = line[..3].parse().map_err(|_| format!("malformed reply {line:?}"))?;
            let more = line.as_bytes().get(3) == Some(&b'-');
            lines.push(line.get(4..).unwrap_or("").to_string());
            if !more {
                return Ok(Reply { code, lines });
            }
        }
    }

    fn expect(&mut self, codes: &[u16], what: &str) -> SmtpResult<Reply> {
        let reply = self.read_reply()?;
        if !codes.contains(&reply.code) {
            return Err(format!("{what}: the server answered {}", reply.text()));
        }
        Ok(reply)
    }

    fn send_line(&mut self, line: &str) -> SmtpResult<()> {
        self.stream
            .write_all(format!("{line}\r\n").as_bytes())
            .map_err(|e| format!("sending to the server failed: {e}"))
    }

    fn command(&mut self, line: &str, codes: &[u16], what: &str) -> SmtpResult<Reply> {
        self.send_line(line)?;
        self.expect(codes, what)
    }

    /// Authenticates with PLAIN or LOGIN (whichever the server offers, PLAIN first).
    pub fn login(&mut self, user: &str, password: &str) -> SmtpResult<()> {
        let mechanisms = self.auth_mechanisms();
        if mechanisms.iter().any(|m| m == "PLAIN") {
            let token = base64(format!("\0{user}\0{password}").as_bytes());
            self.command(&format!("AUTH PLAIN {token}"), &[235], "authentication (AUTH PLAIN)")?;
        } else if mechanisms.iter().any(|m| m == "LOGIN") {
            self.command("AUTH LOGIN", &[334], "authentication (AUTH LOGIN)")?;
            self.command(&base64(user.as_bytes()), &[334], "authentication (AUTH LOGIN user)")?;
            self.command(&base64(password.as_bytes()), &[235], "authentication (AUTH LOGIN password)")?;
        } else {
            return Err(format!(
                "a username is set but the server offers no AUTH PLAIN or LOGIN (it offers: {})",
                if mechanisms.is_empty() { "no AUTH at all".to_string() } else { mechanisms.join(" ") }
            ));
        }
        Ok(())
    }

    /// Sends one message (`data`: headers and body with CRLF line ends) to `recipients`.
    pub fn send(&mut self, from: &str, recipients: &[String], data: &str) -> SmtpResult<()> {
        self.command(&format!("MAIL FROM:<{from}>"), &[250], "MAIL FROM")?;
        for r in recipients {
            self.command(&format!("RCPT TO:<{r}>"), &[250, 251], &format!("RCPT TO {r}"))?;
        }
        self.command("DATA", &[354], "DATA")?;
        let mut out = String::with_capacity(data.len() + 16);
        for line in data.split("\r\n") {
            // Dot-stuffing: a line starting with '.' gets another.
            if line.starts_with('.') {
                out.push('.');
            }
            out.push_str(line);
            out.push_str("\r\n");
        }
        out.push_str(".\r\n");
        self.stream.write_all(out.as_bytes()).map_err(|e| format!("sending the message failed: {e}"))?;
        self.expect(&[250], "sending the message")?;
        Ok(())
    }

    pub fn quit(mut self) {
        let _ = self.command("QUIT", &[221], "QUIT");
    }
}
