//! CSV as Digdag's operators write it (`td>`/`pg>` `download_file`, previews): comma
//! separated, CRLF after every line, a field quoted when it holds `"`, `,` or a line break
//! (`"` doubled, CR and CRLF written as LF), an empty string as `""` and a null as nothing.

/// One field; `None` is SQL NULL (written as nothing).
pub fn field(value: Option<&str>) -> String {
    let Some(v) = value else { return String::new() };
    if v.is_empty() {
        return "\"\"".into();
    }
    let mut out = String::with_capacity(v.len() + 2);
    let mut quote = false;
    let mut previous = ' ';
    for c in v.chars() {
        match c {
            '"' => {
                out.push_str("\"\"");
                quote = true;
            }
            '\r' => {
                out.push('\n');
                quote = true;
            }
            '\n' => {
                if previous != '\r' {
                    out.push('\n');
                    quote = true;
                }
            }
            ',' => {
                out.push(',');
                quote = true;
            }
            c => out.push(c),
        }
        previous = c;
    }
    if quote { format!("\"{out}\"") } else { out }
}

/// One line: the fields joined by commas, then CRLF.
pub fn line<'a>(fields: impl IntoIterator<Item = Option<&'a str>>) -> String {
    let mut out = fields.into_iter().map(field).collect::<Vec<_>>().join(",");
    out.push_str("\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_like_digdag() {
        assert_eq!(
            line([Some("a,b"), Some("1"), None, Some(""), Some("say \"hi\""), Some("l1\r\nl2")]),
            "\"a,b\",1,,\"\",\"say \"\"hi\"\"\",\"l1\nl2\"\r\n"
        );
        assert_eq!(line([Some("plain")]), "plain\r\n");
    }
}
