//! The message mail> sends (RFC 5322 headers, MIME body): UTF-8 text or HTML in base64, and
//! with attachments a `multipart/mixed` message. Header values are checked for line breaks
//! (no header injection) and non-ASCII text is sent as RFC 2047 encoded words.

pub use spade_sdk::encode::base64;

/// base64 in lines of 76 characters, each ending in CRLF (a MIME body).
fn base64_lines(data: &[u8]) -> String {
    let text = base64(data);
    let mut out = String::with_capacity(text.len() + text.len() / 76 * 2 + 2);
    for chunk in text.as_bytes().chunks(76) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push_str("\r\n");
    }
    out
}

/// A header value: as is when ASCII, else one RFC 2047 encoded word.
fn header_text(value: &str) -> String {
    if value.is_ascii() { value.to_string() } else { format!("=?utf-8?B?{}?=", base64(value.as_bytes())) }
}

/// One address as written (`a@example.com` or `Name <a@example.com>`): its addr-spec for
/// the envelope and its header form.
#[derive(Clone, Debug, PartialEq)]
pub struct Address {
    pub addr: String,
    pub header: String,
}

impl Address {
    pub fn parse(text: &str) -> Result<Address, String> {
        let text = text.trim();
        if text.chars().any(|c| c == '\r' || c == '\n') {
            return Err(format!("invalid address {text:?}: it contains a line break"));
        }
        let (name, addr) = match (text.rfind('<'), text.ends_with('>')) {
            (Some(open), true) => (text[..open].trim().trim_matches('"'), &text[open + 1..text.len() - 1]),
            _ => ("", text),
        };
        let valid = addr.split_once('@').is_some_and(|(local, domain)| !local.is_empty() && !domain.is_empty())
            && !addr.chars().any(|c| c.is_whitespace() || c == '<' || c == '>' || c == ',');
        if !valid {
            return Err(format!("invalid address {text:?}"));
        }
        let header = if name.is_empty() {
            addr.to_string()
        } else if name.is_ascii() {
            format!("\"{}\" <{addr}>", name.replace('"', ""))
        } else {
            format!("{} <{addr}>", header_text(name))
        };
        Ok(Address { addr: addr.to_string(), header })
    }
}

pub struct Attachment {
    pub filename: String,
    pub content_type: String,
    pub bytes: Vec<u8>,
}

pub struct Message<'a> {
    pub from: &'a Address,
    pub to: &'a [Address],
    pub cc: &'a [Address],
    pub subject: &'a str,
    pub body: &'a str,
    pub html: bool,
    pub attachments: &'a [Attachment],
    /// RFC 5322 date, e.g. `Mon, 07 Dec 2026 23:45:00 +0000`.
    pub date: String,
    pub message_id: String,
    /// The multipart boundary (unique to the message).
    pub boundary: String,
}

fn text_part(body: &str, html: bool) -> String {
    format!(
        "Content-Type: text/{}; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n{}",
        if html { "html" } else { "plain" },
        base64_lines(body.as_bytes())
    )
}

/// `filename="x.csv"`, or RFC 2231's `filename*=utf-8''...` for other names.
fn filename_param(name: &str) -> String {
    let plain = name.is_ascii() && !name.chars().any(|c| c.is_control() || c == '"' || c == '\\');
    if plain {
        return format!("filename=\"{name}\"");
    }
    let mut out = String::from("filename*=utf-8''");
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The whole message, with CRLF line ends.
pub fn build(m: &Message<'_>) -> Result<String, String> {
    if m.subject.chars().any(|c| c == '\r' || c == '\n') {
        return Err("the subject contains a line break".into());
    }
    let list = |a: &[Address]| a.iter().map(|a| a.header.clone()).collect::<Vec<_>>().join(", ");
    let mut out = String::new();
    out.push_str(&format!("From: {}\r\n", m.from.header));
    out.push_str(&format!("Sender: {}\r\n", m.from.header));
    out.push_str(&format!("To: {}\r\n", list(m.to)));
    if !m.cc.is_empty() {
        out.push_str(&format!("Cc: {}\r\n", list(m.cc)));
    }
    out.push_str(&format!("Subject: {}\r\n", header_text(m.subject)));
    out.push_str(&format!("Date: {}\r\n", m.date));
    out.push_str(&format!("Message-ID: <{}>\r\n", m.message_id));
    out.push_str("MIME-Version: 1.0\r\n");
    if m.attachments.is_empty() {
        out.push_str(&text_part(m.body, m.html));
        return Ok(out);
    }
    let b = &m.boundary;
    out.push_str(&format!("Content-Type: multipart/mixed; boundary=\"{b}\"\r\n\r\n"));
    out.push_str(&format!("--{b}\r\n{}", text_part(m.body, m.html)));
    for a in m.attachments {
        if a.content_type.chars().any(|c| c == '\r' || c == '\n') {
            return Err(format!("the content_type of {} contains a line break", a.filename));
        }
        out.push_str(&format!(
            "--{b}\r\nContent-Type: {}\r\nContent-Transfer-Encoding: base64\r\nContent-Disposition: attachment; {}\r\n\r\n{}",
            a.content_type,
            filename_param(&a.filename),
            base64_lines(&a.bytes)
        ));
    }
    out.push_str(&format!("--{b}--\r\n"));
    Ok(out)
}

/// `secs` since the epoch as an RFC 5322 date in UTC.
pub fn rfc5322_date(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    format!(
        "{}, {day:02} {} {year} {:02}:{:02}:{:02} +0000",
        WEEKDAYS[days.rem_euclid(7) as usize],
        MONTHS[(month - 1) as usize],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(Address::parse("a@example.com").unwrap().header, "a@example.com");
        let named = Address::parse("Ops Team <ops@example.com>").unwrap();
        assert_eq!((named.addr.as_str(), named.header.as_str()), ("ops@example.com", "\"Ops Team\" <ops@example.com>"));
        assert!(Address::parse("Ünïcode <u@example.com>").unwrap().header.starts_with("=?utf-8?B?"));
        for bad in ["nobody", "a@example.com\r\nBcc: x@y", "a b@example.com", "@example.com"] {
            assert!(Address::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn dates_and_base64() {
        assert_eq!(rfc5322_date(0), "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(rfc5322_date(1_796_687_100), "Mon, 07 Dec 2026 23:45:00 +0000");
        assert_eq!(base64(b"hello"), "aGVsbG8=");
        assert_eq!(base64(b""), "");
    }

    #[test]
    fn a_message_with_an_attachment() {
        let from = Address::parse("s@example.com").unwrap();
        let to = [Address::parse("t@example.com").unwrap()];
        let att =
            [Attachment { filename: "r é.csv".into(), content_type: "text/csv".into(), bytes: b"a,b\r\n".to_vec() }];
        let m = Message {
            from: &from,
            to: &to,
            cc: &[],
            subject: "Résumé",
            body: "hi",
            html: false,
            attachments: &att,
            date: rfc5322_date(0),
            message_id: "x@spade".into(),
            boundary: "BOUNDARY".into(),
        };
        let text = build(&m).unwrap();
        assert!(text.contains("Subject: =?utf-8?B?UsOpc3Vtw6k=?=\r\n"), "{text}");
        assert!(text.contains("Content-Type: multipart/mixed; boundary=\"BOUNDARY\""));
        assert!(text.contains("filename*=utf-8''r%20%C3%A9.csv"), "{text}");
        assert!(text.ends_with("--BOUNDARY--\r\n"));
        let bad = Message { subject: "a\r\nBcc: x", ..m };
        assert!(build(&bad).is_err());
    }
}
