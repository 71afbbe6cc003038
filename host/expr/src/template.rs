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

/// The body of a sloppy-mode function to be called with the scope as `this`. The layout (one
/// expression per line, locals `__t`, `__p`, `__j`, `print`) matches digdag.js, so expressions
/// behave the same there and here, comments and all.
pub fn to_js(input: &str) -> String {
    let mut src = String::with_capacity(input.len() + 200);
    src.push_str(
        "with(this){\nvar __t,__p='',__j=Array.prototype.join,print=function(){__p+=__j.call(arguments,'');};\n__p+='",
    );
    for seg in parse(input) {
        match seg {
            Segment::Literal(text) => push_js_string_body(&mut src, &text),
            Segment::Expr(expr) => {
                src.push_str("'+\n((__t=(");
                src.push_str(expr);
                src.push_str("))==null?'':(typeof __t==\"string\"?__t:JSON.stringify(__t)))+\n'");
            }
        }
    }
    src.push_str("';\nreturn __p;\n}\n");
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
    fn js_source_escapes_literals() {
        let src = to_js("it's\n\\${a}");
        assert!(src.contains("__p+='it\\'s\\n\\\\'+\n((__t=(a))"), "{src}");
    }
}
