//! Digdag's `${...}` template syntax (digdag.js `template()`, extended syntax), compiled to the
//! body of a JS function that runs `with (scope)`.
//!
//! Rules reproduced (quirks included, they are observable in workflows):
//! - a `${` opens an expression unless it is directly followed by `[a-z]+:` (`${secret:x}`,
//!   `${env:X}` are left for operator-side templating) or ends the text;
//! - the expression runs to the `}` that brings the brace count below zero, so nested `{}`
//!   (object literals, function bodies) work; braces inside JS strings are counted too;
//! - an unclosed `${...` is kept as literal text to the end;
//! - in literal text `$$` becomes `$` (so `$${a}` is `$` followed by the value of `a`);
//! - `${}` produces nothing; a null/undefined value produces `''`, a string itself, anything
//!   else `JSON.stringify` of it.
//!
//! This module only produces source text; it never evaluates anything.

/// One piece of a template.
#[derive(Debug, PartialEq, Eq)]
pub enum Segment<'a> {
    Literal(String),
    Expr(&'a str),
}

/// Whether the text would go through the JS engine at all (Digdag: contains a `$`).
pub fn needs_eval(text: &str) -> bool {
    text.contains('$')
}

/// Position of the next `${` at or after `from` that opens an expression.
fn next_open(input: &str, from: usize) -> Option<usize> {
    let bytes = input.as_bytes();
    let mut i = from;
    while let Some(off) = input[i..].find("${") {
        let at = i + off;
        let after = &bytes[at + 2..];
        let letters = after.iter().take_while(|b| b.is_ascii_lowercase()).count();
        let operator_template = letters > 0 && after.get(letters) == Some(&b':');
        if !operator_template && !after.is_empty() {
            return Some(at);
        }
        i = at + 1;
    }
    None
}

fn literal(text: &str) -> String {
    text.replace("$$", "$")
}

/// Splits a template into literal text and expressions.
pub fn parse(input: &str) -> Vec<Segment<'_>> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < input.len() {
        let Some(open) = next_open(input, pos) else {
            out.push(Segment::Literal(literal(&input[pos..])));
            break;
        };
        if open > pos {
            out.push(Segment::Literal(literal(&input[pos..open])));
        }
        let body = &input[open + 2..];
        let mut depth = 0i64;
        let mut close = None;
        for (i, b) in body.bytes().enumerate() {
            match b {
                b'{' => depth += 1,
                b'}' => {
                    depth -= 1;
                    if depth < 0 {
                        close = Some(i);
                        break;
                    }
                }
                _ => {}
            }
        }
        match close {
            None => {
                out.push(Segment::Literal(literal(&input[open..])));
                break;
            }
            Some(end) => {
                if end > 0 {
                    out.push(Segment::Expr(&body[..end]));
                }
                pos = open + 2 + end + 1;
            }
        }
    }
    // Adjacent literals (around an empty `${}`) are one string in Digdag's generated code.
    let mut merged: Vec<Segment<'_>> = Vec::with_capacity(out.len());
    for seg in out {
        match (merged.last_mut(), seg) {
            (Some(Segment::Literal(prev)), Segment::Literal(next)) => prev.push_str(&next),
            (_, seg) => merged.push(seg),
        }
    }
    merged
}

fn push_js_string_body(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '\'' => out.push_str("\\'"),
            '\\' => out.push_str("\\\\"),
            '\r' => out.push_str("\\r"),
            '\n' => out.push_str("\\n"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
}

/// The body of a sloppy-mode function of one parameter, the formatter `__f` (null/undefined
/// to `''`, strings as they are, anything else through `JSON.stringify`), to be called with
/// the scope as `this`. The expressions are evaluated and formatted one after the other,
/// left to right, inside `with (this)`, each on its own line as in digdag.js; the text is
/// assembled outside the `with` block, where locals are fast (digdag.js's `__p`/`__t`
/// bookkeeping inside `with` costs more than typical expressions). Unlike digdag.js, the template's internals `__p`, `__t`, `__j` and
/// `print` are not visible to expressions (`print` output was lost there anyway).
pub fn to_js(input: &str) -> String {
    let segments = parse(input);
    let mut src = String::with_capacity(input.len() + 64);
    let exprs: Vec<&str> =
        segments.iter().filter_map(|s| if let Segment::Expr(e) = s { Some(*e) } else { None }).collect();
    if !exprs.is_empty() {
        src.push_str("var __v;\nwith(this){__v=[");
        for (i, expr) in exprs.iter().enumerate() {
            src.push_str(if i == 0 { "\n__f((" } else { ",\n__f((" });
            src.push_str(expr);
            src.push_str("))");
        }
        src.push_str("];}\n");
    }
    src.push_str("return ''");
    let mut index = 0;
    for seg in &segments {
        match seg {
            Segment::Literal(text) => {
                src.push_str("+'");
                push_js_string_body(&mut src, text);
                src.push('\'');
            }
            Segment::Expr(_) => {
                src.push_str("+__v[");
                src.push_str(&index.to_string());
                src.push(']');
                index += 1;
            }
        }
    }
    src.push_str(";\n");
    src
}

#[cfg(test)]
mod tests {
    use super::Segment::{Expr, Literal};
    use super::*;

    fn lit(s: &str) -> Segment<'static> {
        Literal(s.to_string())
    }

    #[test]
    fn splits_text_and_expressions() {
        assert_eq!(parse("p${1}m$$m${2}s"), vec![lit("p"), Expr("1"), lit("m$m"), Expr("2"), lit("s")]);
        assert_eq!(parse("${a}${b}"), vec![Expr("a"), Expr("b")]);
        assert_eq!(parse(""), vec![]);
    }

    #[test]
    fn dollar_escapes_and_lone_dollars() {
        assert_eq!(parse("$"), vec![lit("$")]);
        assert_eq!(parse("$$"), vec![lit("$")]);
        assert_eq!(parse("p$$s"), vec![lit("p$s")]);
        assert_eq!(parse("$$$"), vec![lit("$$")]);
        // `$$` does not protect a following `${`: the second `$` opens the expression.
        assert_eq!(parse("$${a}"), vec![lit("$"), Expr("a")]);
    }

    #[test]
    fn unclosed_and_empty() {
        assert_eq!(parse("${"), vec![lit("${")]);
        assert_eq!(parse("${v"), vec![lit("${v")]);
        assert_eq!(parse("p${v"), vec![lit("p${v")]);
        assert_eq!(parse("a${ {x:1} "), vec![lit("a${ {x:1} ")]);
        assert_eq!(parse("a${}b"), vec![lit("ab")]);
        assert_eq!(parse("}"), vec![lit("}")]);
    }

    #[test]
    fn nested_braces() {
        assert_eq!(
            parse("${[1,2].map(function(x){return x*2})}!"),
            vec![Expr("[1,2].map(function(x){return x*2})"), lit("!")]
        );
        assert_eq!(parse("${ {kind: \"svc\"} }"), vec![Expr(" {kind: \"svc\"} ")]);
    }

    #[test]
    fn operator_templates_are_left_alone() {
        assert_eq!(parse("${secret:db.password}"), vec![lit("${secret:db.password}")]);
        assert_eq!(parse("k=${secret:k} v=${v}"), vec![lit("k=${secret:k} v="), Expr("v")]);
        // Only `[a-z]+:` right after `${` counts.
        assert_eq!(parse("${x ? a:b}"), vec![Expr("x ? a:b")]);
        assert_eq!(parse("${Secret:k}"), vec![Expr("Secret:k")]);
        // A later `${` inside the skipped one is still found, as digdag.js's regex does.
        assert_eq!(parse("${env:${a}}"), vec![lit("${env:"), Expr("a"), lit("}")]);
    }

    #[test]
    fn js_source_layout() {
        assert_eq!(
            to_js("it's\n\\${a}!"),
            "var __v;\nwith(this){__v=[\n__f((a))];}\nreturn ''+'it\\'s\\n\\\\'+__v[0]+'!';\n"
        );
        assert_eq!(
            to_js("${a}${b // c}"),
            "var __v;\nwith(this){__v=[\n__f((a)),\n__f((b // c))];}\nreturn ''+__v[0]+__v[1];\n"
        );
        assert_eq!(to_js("no ${"), "return ''+'no ${';\n");
    }
}
