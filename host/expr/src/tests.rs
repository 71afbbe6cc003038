//! Behaviour tests: Digdag's ConfigEvalEngineTest cases, the conformance expressions, the
//! config walk (#862), the time-zone shim and the limits.

use super::*;
use serde_json::json;

fn obj(v: Value) -> Object {
    v.as_object().cloned().expect("object")
}

fn ev(zone: &str) -> Evaluator {
    Evaluator::new(zone.parse().expect("zone"), ExprLimits::default()).expect("evaluator")
}

fn utc_params() -> Object {
    obj(json!({"timezone": "UTC"}))
}

/// Renders `template` with `scope` and unwraps.
fn render(e: &Evaluator, template: &str, scope: &Value) -> String {
    e.render(template, &obj(scope.clone())).unwrap_or_else(|err| panic!("{template}: {err}"))
}

// ---- ConfigEvalEngineTest ----

#[test]
fn literal_values_become_text() {
    let e = ev("UTC");
    let config = obj(json!({
        "int": "${1}",
        "float": "${0.2}",
        "str": "${\"a\"}",
        "array": "${[1]}",
        "undefined_value": "${undefined}",
        "null_value": "${null}",
        "object": "${ {b: 1, a: [true, null]} }",
        "bool": "${1 > 0}",
    }));
    let out = e.eval_config(&config, &utc_params()).unwrap();
    assert_eq!(
        Value::Object(out),
        json!({
            "int": "1", "float": "0.2", "str": "a", "array": "[1]", "undefined_value": "",
            "null_value": "", "object": "{\"b\":1,\"a\":[true,null]}", "bool": "true",
        })
    );
}

#[test]
fn template_dollar_rules() {
    let e = ev("UTC");
    let config = obj(json!({
        "dollor": "$",
        "dollor_dollor": "$$",
        "dollor_dollor_format": "p$$s",
        "open": "${",
        "non_closed": "${v",
        "non_closed_prefix": "p${v",
        "close": "}",
        "format": "p${1}s",
        "format_multi": "p${1}m$$m${2}s",
        "empty": "a${}b",
    }));
    let out = e.eval_config(&config, &utc_params()).unwrap();
    assert_eq!(
        Value::Object(out),
        json!({
            "dollor": "$", "dollor_dollor": "$", "dollor_dollor_format": "p$s", "open": "${",
            "non_closed": "${v", "non_closed_prefix": "p${v", "close": "}", "format": "p1s",
            "format_multi": "p1m$m2s", "empty": "ab",
        })
    );
}

#[test]
fn undefined_variable_is_a_reference_error_naming_it() {
    let e = ev("UTC");
    let err = e.eval_config(&obj(json!({"key": "${no_such_var}"})), &utc_params()).unwrap_err();
    assert_eq!(err.kind, ExprErrorKind::Script);
    assert_eq!(err.path, "key");
    assert_eq!(err.template, "${no_such_var}");
    assert!(err.message.contains("ReferenceError") && err.message.contains("no_such_var"), "{err}");
    let shown = err.to_string();
    assert!(shown.starts_with("key: failed to evaluate \"${no_such_var}\": ReferenceError"), "{shown}");
    assert!(shown.contains("typeof"), "a ReferenceError suggests the typeof idiom: {shown}");
}

#[test]
fn undefined_field_is_empty_but_its_property_is_a_type_error() {
    let e = ev("UTC");
    let out = e.eval_config(&obj(json!({"key": "${timezone.no_such_field}"})), &utc_params()).unwrap();
    assert_eq!(out["key"], "");
    let err =
        e.eval_config(&obj(json!({"key": "${timezone.no_such_field.invalid_access}"})), &utc_params()).unwrap_err();
    assert!(err.message.contains("TypeError") && err.message.contains("invalid_access"), "{err}");
}

fn moment_dig() -> Object {
    obj(json!({
        "session_time": "2016-03-13T10:00:00Z",
        "default_format": "${moment(session_time).format()}",
        "tomorrow": "${moment(session_time).add(1, 'days').format()}",
        "yesterday": "${moment(session_time).add(-1, 'days').format()}",
        "hour_later": "${moment(session_time).add(1, 'hours').format()}",
        "hour_ago": "${moment(session_time).add(-1, 'hours').format()}",
        "utc": "${moment(session_time).utc().format()}",
        "format_sql_time": "${moment(session_time).format(\"YYYY-MM-DD HH:mm:ss Z\")}",
    }))
}

#[test]
fn moment_in_utc() {
    let out = ev("UTC").eval_config(&moment_dig(), &utc_params()).unwrap();
    assert_eq!(
        Value::Object(out),
        json!({
            "session_time": "2016-03-13T10:00:00Z",
            "default_format": "2016-03-13T10:00:00+00:00",
            "tomorrow": "2016-03-14T10:00:00+00:00",
            "yesterday": "2016-03-12T10:00:00+00:00",
            "hour_later": "2016-03-13T11:00:00+00:00",
            "hour_ago": "2016-03-13T09:00:00+00:00",
            "utc": "2016-03-13T10:00:00Z",
            "format_sql_time": "2016-03-13 10:00:00 +00:00",
        })
    );
}

#[test]
fn moment_in_tokyo() {
    let out = ev("Asia/Tokyo").eval_config(&moment_dig(), &obj(json!({"timezone": "Asia/Tokyo"}))).unwrap();
    assert_eq!(
        Value::Object(out),
        json!({
            "session_time": "2016-03-13T10:00:00Z",
            "default_format": "2016-03-13T19:00:00+09:00",
            "tomorrow": "2016-03-14T19:00:00+09:00",
            "yesterday": "2016-03-12T19:00:00+09:00",
            "hour_later": "2016-03-13T20:00:00+09:00",
            "hour_ago": "2016-03-13T18:00:00+09:00",
            "utc": "2016-03-13T10:00:00Z",
            "format_sql_time": "2016-03-13 19:00:00 +09:00",
        })
    );
}

#[test]
fn moment_across_a_dst_change() {
    // 2016-03-13T10:00Z is the very instant Los Angeles springs forward.
    let out = ev("America/Los_Angeles").eval_config(&moment_dig(), &utc_params()).unwrap();
    assert_eq!(
        Value::Object(out),
        json!({
            "session_time": "2016-03-13T10:00:00Z",
            "default_format": "2016-03-13T03:00:00-07:00",
            "tomorrow": "2016-03-14T03:00:00-07:00",
            "yesterday": "2016-03-12T03:00:00-08:00",
            "hour_later": "2016-03-13T04:00:00-07:00",
            "hour_ago": "2016-03-13T01:00:00-08:00",
            "utc": "2016-03-13T10:00:00Z",
            "format_sql_time": "2016-03-13 03:00:00 -07:00",
        })
    );
}

#[test]
fn moment_now_is_available() {
    let e = ev("Asia/Kathmandu");
    let now = render(&e, "${moment().format()}", &json!({}));
    assert!(now.ends_with("+05:45"), "{now}");
    assert_eq!(render(&e, "${moment().utcOffset()}", &json!({})), "345");
}

// ---- conformance case expressions ----

#[test]
fn case_026_moment_in_los_angeles() {
    let e = ev("America/Los_Angeles");
    let scope = json!({"session_time": "2023-02-14T00:00:00-08:00"});
    let cases = [
        ("${moment(session_time).format(\"YYYY-MM-DD HH:mm:ss Z\")}", "2023-02-14 00:00:00 -08:00"),
        ("${moment(session_time).utc().format(\"YYYY-MM-DD HH:mm\")}", "2023-02-14 08:00"),
        ("${moment(session_time).add(1, \"days\").format(\"YYYY-MM-DD\")}", "2023-02-15"),
        (
            "${moment(session_time).startOf(\"month\").format(\"MM/DD\")} ${moment(session_time).endOf(\"month\").format(\"MM/DD\")}",
            "02/01 02/28",
        ),
        ("${moment(session_time).format(\"dddd\")} ${moment(session_time).daysInMonth()}", "Tuesday 28"),
        ("${moment(session_time).subtract(3, \"hours\").format(\"YYYYMMDDHH\")}", "2023021321"),
    ];
    for (template, expected) in cases {
        assert_eq!(render(&e, template, &scope), expected, "{template}");
    }
}

#[test]
fn case_020_moment_utc_view_in_tokyo() {
    let e = ev("Asia/Tokyo");
    let scope = json!({"session_time": "2023-07-15T08:30:00+09:00"});
    assert_eq!(render(&e, "${moment(session_time).utc().format(\"YYYY-MM-DD HH:mm\")}", &scope), "2023-07-14 23:30");
}

#[test]
fn case_023_arithmetic_and_types() {
    let e = ev("UTC");
    let scope = json!({"qty": 3, "price": 2.5, "count": "3", "rate": "4"});
    let cases = [
        ("${qty + 1}", "4"),
        ("${count + 1}", "31"),
        ("${count * rate}", "12"),
        ("${parseInt(count) + 1}", "4"),
        ("${qty / 4} ${10 % 4} ${price * qty}", "0.75 2 7.5"),
        ("${Math.max(qty, 7)} ${Math.round(price)} ${(qty / 7).toFixed(3)}", "7 3 0.429"),
        ("${qty > 2} ${count == qty} ${count === qty}", "true true false"),
    ];
    for (template, expected) in cases {
        assert_eq!(render(&e, template, &scope), expected, "{template}");
    }
}

#[test]
fn case_024_strings() {
    let e = ev("UTC");
    let scope = json!({"csv": "north,south,east", "padded": "  trim me  ", "name": "Grace_Hopper"});
    let cases = [
        ("${name.toUpperCase()}", "GRACE_HOPPER"),
        ("${name.substring(0, 5)}|${name.slice(-6)}|${name.length}", "Grace|Hopper|12"),
        ("${csv.split(',').join(' / ')}", "north / south / east"),
        ("${csv.split(',')[1]} of ${csv.split(',').length}", "south of 3"),
        ("${name.replace(/_/g, ' ')}", "Grace Hopper"),
        ("[${padded.trim()}]", "[trim me]"),
        ("${name.indexOf('Hopper') >= 0 ? 'found' : 'missing'}", "found"),
        ("${'id-' + name.toLowerCase().charAt(0) + '-' + csv.split(',').length}", "id-g-3"),
    ];
    for (template, expected) in cases {
        assert_eq!(render(&e, template, &scope), expected, "{template}");
    }
}

#[test]
fn case_025_json_and_extended_syntax() {
    let e = ev("UTC");
    let scope = json!({"cfg": {"name": "api", "ports": [80, 443], "tls": true}, "tags": ["blue", "green"]});
    let cases = [
        ("${cfg}", r#"{"name":"api","ports":[80,443],"tls":true}"#),
        ("${tags}", r#"["blue","green"]"#),
        ("${cfg.name} ${cfg.ports[1]} ${cfg.ports.length} ${cfg.tls}", "api 443 2 true"),
        ("${ {kind: \"svc\", replicas: 2} }", r#"{"kind":"svc","replicas":2}"#),
        ("${[1, 2].concat(tags)}", r#"[1,2,"blue","green"]"#),
        ("${cfg.ports.map(function (p) { return p + 1; })}", "[81,444]"),
        ("${JSON.stringify({a: [true, null]})}", r#"{"a":[true,null]}"#),
        ("[${null}][${cfg.missing}][${undefined}]", "[][][]"),
        ("${[1,2].map(function(x){return x*2})}", "[2,4]"),
    ];
    for (template, expected) in cases {
        assert_eq!(render(&e, template, &scope), expected, "{template}");
    }
}

#[test]
fn case_019_typeof_idiom() {
    let e = ev("UTC");
    assert_eq!(render(&e, "last=${typeof last_session_time}", &json!({})), "last=undefined");
}

#[test]
fn operator_templates_pass_through() {
    let e = ev("UTC");
    assert_eq!(
        render(&e, "curl -u ${secret:user}:${secret:pass} ${host}", &json!({"host": "h"})),
        "curl -u ${secret:user}:${secret:pass} h"
    );
}

// ---- the ConfigEvalEngine walk ----

#[test]
fn issue_862_nested_objects_see_raw_params() {
    let e = ev("UTC");
    let scope = obj(json!({"a": "aaa", "b": "bbb", "c": "ccc", "d": "${a}-${b}-${c}"}));
    let config = obj(json!({
        "a": "aaa", "b": "bbb", "c": "ccc",
        "d": "${a}-${b}-${c}",
        "e": "${d}",
        "f": {"g": "${d}"},
        "h": "${f.g}",
    }));
    let out = e.eval_config(&config, &scope).unwrap();
    assert_eq!(out["d"], "aaa-bbb-ccc");
    assert_eq!(out["e"], "aaa-bbb-ccc", "a top-level key sees earlier evaluated keys");
    assert_eq!(out["f"], json!({"g": "${a}-${b}-${c}"}), "a nested object sees the raw params");
    // `h` sees the evaluated `f` (an earlier key), whose `g` is the raw text, not re-evaluated.
    assert_eq!(out["h"], "${a}-${b}-${c}");
}

#[test]
fn case_018_nested_label_stays_raw() {
    let e = ev("UTC");
    let scope = obj(json!({"first": "ada", "last": "lovelace", "full": "${first}-${last}"}));
    let config = obj(json!({
        "first": "ada", "last": "lovelace", "full": "${first}-${last}",
        "alias": "${full}",
        "card": {"label": "${full}"},
    }));
    let out = e.eval_config(&config, &scope).unwrap();
    assert_eq!(out["alias"], "ada-lovelace");
    assert_eq!(out["card"]["label"], "${first}-${last}");
}

#[test]
fn only_earlier_keys_are_visible() {
    let e = ev("UTC");
    let err = e.eval_config(&obj(json!({"x": "${y}", "y": "1"})), &Object::new()).unwrap_err();
    assert!(err.message.contains("y is not defined"), "{err}");
    assert_eq!(err.path, "x");
    let out = e.eval_config(&obj(json!({"x": "${y}", "y": "1"})), &obj(json!({"y": "raw"}))).unwrap();
    assert_eq!(out["x"], "raw");
}

#[test]
fn overlay_replaces_whole_values() {
    let e = ev("UTC");
    let scope = obj(json!({"cfg": {"a": 1, "b": 2}}));
    let config = obj(json!({"cfg": {"a": "${1 + 1}"}, "r": "${JSON.stringify(cfg)}"}));
    let out = e.eval_config(&config, &scope).unwrap();
    assert_eq!(out["cfg"], json!({"a": "2"}));
    assert_eq!(out["r"], r#"{"a":"2"}"#, "the evaluated object replaces the param, no deep merge");
}

#[test]
fn do_and_else_do_are_never_evaluated() {
    let e = ev("UTC");
    let config = obj(json!({
        "if>": "${mode == 'dev'}",
        "_do": {"echo>": "${undefined_in_dev_branch}"},
        "_else_do": [{"echo>": "${also_undefined}"}],
        "nested": {"_do": "${nope}", "x": "${mode}"},
    }));
    let out = e.eval_config(&config, &obj(json!({"mode": "prod"}))).unwrap();
    assert_eq!(out["if>"], "false");
    assert_eq!(out["_do"], json!({"echo>": "${undefined_in_dev_branch}"}));
    assert_eq!(out["_else_do"], json!([{"echo>": "${also_undefined}"}]));
    assert_eq!(out["nested"], json!({"_do": "${nope}", "x": "prod"}));
}

#[test]
fn arrays_share_their_objects_scope_and_objects_in_arrays_start_fresh() {
    let e = ev("UTC");
    let config = obj(json!({
        "a": "A",
        "list": ["${a}", ["${a}${a}"], {"k": "${typeof a}", "m": "${k}"}, 5, null, true],
    }));
    let out = e.eval_config(&config, &Object::new()).unwrap();
    assert_eq!(out["list"], json!(["A", ["AA"], {"k": "undefined", "m": "undefined"}, 5, null, true]));
}

#[test]
fn non_strings_are_copied_and_order_is_kept() {
    let e = ev("UTC");
    let config = obj(json!({"z": 1, "a": "${z}", "m": 2.5, "b": false, "n": null, "big": 12345678901234567890u64}));
    let out = e.eval_config(&config, &Object::new()).unwrap();
    assert_eq!(out.keys().collect::<Vec<_>>(), ["z", "a", "m", "b", "n", "big"]);
    assert_eq!(
        Value::Object(out),
        json!({"z": 1, "a": "1", "m": 2.5, "b": false, "n": null, "big": 12345678901234567890u64})
    );
}

#[test]
fn text_without_dollar_is_untouched() {
    let e = ev("UTC");
    let config = obj(json!({"sh>": "echo {hi}", "list": ["a", {"b": "c"}]}));
    assert_eq!(e.eval_config(&config, &Object::new()).unwrap(), config);
    assert_eq!(e.render("plain } text {", &Object::new()).unwrap(), "plain } text {");
}

#[test]
fn error_paths_name_the_key() {
    let e = ev("UTC");
    let config = obj(json!({"_export": {"ok": "${1}", "d": "${a}-${b}"}}));
    let err = e.eval_config(&config, &Object::new()).unwrap_err();
    assert_eq!(err.path, "_export.d");
    assert_eq!(err.template, "${a}-${b}");
    let config = obj(json!({"args": ["x", "${[}"]}));
    let err = e.eval_config(&config, &Object::new()).unwrap_err();
    assert_eq!(err.path, "args[1]");
    assert!(err.message.starts_with("SyntaxError"), "{err}");
    let config = obj(json!({"echo>": "${(function(){ throw new Error('boom') })()}"}));
    let err = e.eval_config(&config, &Object::new()).unwrap_err();
    assert_eq!((err.path.as_str(), err.message.as_str()), ("echo>", "Error: boom"));
    let err = e.render("${(function(){ throw 'plain' })()}", &Object::new()).unwrap_err();
    assert_eq!(err.message, "plain");
    assert_eq!(err.path, "");
}

#[test]
fn evaluations_do_not_share_mutations() {
    let e = ev("UTC");
    let scope = obj(json!({"tags": ["a", "b", "c"], "n": 1}));
    let config = obj(json!({
        "rev": "${tags.reverse().join(',')}",
        "again": "${tags.join(',')}",
        "assign": "${n = 5}",
        "after": "${n}",
        "leak": "${leaked_global = 7}",
        "probe": "${typeof leaked_global}",
    }));
    let out = e.eval_config(&config, &scope).unwrap();
    assert_eq!(out["rev"], "c,b,a");
    assert_eq!(out["again"], "a,b,c");
    assert_eq!(out["assign"], "5");
    assert_eq!(out["after"], "1");
    assert_eq!(out["leak"], "7");
    assert_eq!(out["probe"], "undefined", "globals created by a template are gone for the next one");
    // Nor across calls, and clobbering moment does not stick.
    assert_eq!(render(&e, "${moment = null}", &json!({})), "");
    assert_eq!(render(&e, "${typeof moment}", &json!({})), "function");
    // Mutating an evaluated earlier key in place does not affect the next template.
    let config = obj(json!({"o": {"l": [1]}, "p": "${o.l.push(2)}", "q": "${o.l.length}"}));
    let out = e.eval_config(&config, &Object::new()).unwrap();
    assert_eq!((out["p"].as_str(), out["q"].as_str()), (Some("2"), Some("1")));
}

#[test]
fn scope_keys_shadow_globals_and_special_names_work() {
    let e = ev("UTC");
    assert_eq!(render(&e, "${moment}", &json!({"moment": "mine"})), "mine");
    assert_eq!(render(&e, "${__proto__}", &json!({"__proto__": "p"})), "p");
    assert_eq!(render(&e, "${hasOwnProperty('x')}", &json!({"x": 1})), "false");
    let out = e.eval_config(&obj(json!({"__proto__": "q", "r": "${__proto__}"})), &Object::new()).unwrap();
    assert_eq!(out["r"], "q");
}

// ---- Date in the workflow zone ----

#[test]
fn date_local_methods_use_the_workflow_zone() {
    let e = ev("America/Los_Angeles");
    let s = json!({});
    // Skipped hour: 02:30 on the spring-forward night is 03:30 PDT.
    assert_eq!(render(&e, "${new Date(2016, 2, 13, 2, 30).toISOString()}", &s), "2016-03-13T10:30:00.000Z");
    assert_eq!(render(&e, "${new Date(2016, 2, 13, 2, 30).getHours()}", &s), "3");
    // Repeated hour: 01:30 on the fall-back night is the first one (PDT).
    assert_eq!(render(&e, "${new Date(2016, 10, 6, 1, 30).toISOString()}", &s), "2016-11-06T08:30:00.000Z");
    assert_eq!(render(&e, "${new Date('2016-11-06T09:30:00Z').getHours()}", &s), "1");
    assert_eq!(render(&e, "${new Date('2016-11-06T09:30:00Z').getTimezoneOffset()}", &s), "480");
    assert_eq!(render(&e, "${new Date('2016-07-01T00:00:00Z').getTimezoneOffset()}", &s), "420");
    assert_eq!(
        render(&e, "${new Date(Date.UTC(2023, 1, 14, 8)).toString()}", &s),
        "Tue Feb 14 2023 00:00:00 GMT-0800 (PST)"
    );
    assert_eq!(render(&e, "${new Date(Date.UTC(2023, 1, 14, 8)).toDateString()}", &s), "Tue Feb 14 2023");
    assert_eq!(render(&e, "${new Date(Date.UTC(2023, 1, 14, 20)).toLocaleString()}", &s), "02/14/2023, 12:00:00 PM");
    // Strings without an offset: date-time forms are local, date-only forms UTC (ECMAScript).
    assert_eq!(render(&e, "${new Date('2023-02-14T00:00:00').toISOString()}", &s), "2023-02-14T08:00:00.000Z");
    assert_eq!(render(&e, "${new Date('2023-02-14').toISOString()}", &s), "2023-02-14T00:00:00.000Z");
    assert_eq!(render(&e, "${Date.parse('Feb 14 2023 00:00:00')}", &s), "1676361600000");
    assert_eq!(render(&e, "${Date.parse('Feb 14 2023 00:00:00 GMT')}", &s), "1676332800000");
    // Setters keep local time, across the DST change.
    assert_eq!(
        render(&e, "${(function(){var d = new Date(2016, 2, 12, 12); d.setDate(13); return d.toISOString()})()}", &s),
        "2016-03-13T19:00:00.000Z"
    );
    assert_eq!(
        render(&e, "${(function(){var d = new Date(2016, 0, 1); d.setHours(25, 61); return d.toString()})()}", &s),
        "Sat Jan 02 2016 02:01:00 GMT-0800 (PST)"
    );
    assert_eq!(render(&e, "${String(new Date(NaN).getHours())} ${new Date(NaN).toString()}", &s), "NaN Invalid Date");
    assert_eq!(
        render(&e, "${(function(){var d = new Date(NaN); d.setFullYear(2020); return d.getMonth()})()}", &s),
        "0"
    );
    // Identity: still real Dates.
    assert_eq!(
        render(
            &e,
            "${new Date(0) instanceof Date} ${Object.prototype.toString.call(new Date(0))} ${typeof Date()}",
            &s
        ),
        "true [object Date] string"
    );
    assert_eq!(render(&e, "${JSON.stringify(new Date(0))}", &s), "\"1970-01-01T00:00:00.000Z\"");
}

#[test]
fn moment_in_several_zones_including_odd_offsets() {
    let scope = json!({"session_time": "2024-02-29T13:14:15+00:00"});
    for (zone, expected) in [
        ("UTC", "2024-02-29 13:14:15 +00:00"),
        ("Asia/Kathmandu", "2024-02-29 18:59:15 +05:45"),
        ("Asia/Kolkata", "2024-02-29 18:44:15 +05:30"),
        ("America/St_Johns", "2024-02-29 09:44:15 -03:30"),
        ("Pacific/Chatham", "2024-03-01 02:59:15 +13:45"),
        ("Europe/London", "2024-02-29 13:14:15 +00:00"),
    ] {
        let e = ev(zone);
        assert_eq!(render(&e, "${moment(session_time).format('YYYY-MM-DD HH:mm:ss Z')}", &scope), expected, "{zone}");
    }
}

#[test]
fn moment_around_dst_transitions() {
    let e = ev("Europe/Berlin");
    let s = json!({});
    // Spring forward 2024-03-31 02:00 -> 03:00 CEST.
    assert_eq!(render(&e, "${moment('2024-03-31T02:30:00').format()}", &s), "2024-03-31T03:30:00+02:00");
    assert_eq!(
        render(&e, "${moment('2024-03-30T12:00:00+01:00').add(1, 'days').format()}", &s),
        "2024-03-31T12:00:00+02:00"
    );
    assert_eq!(
        render(&e, "${moment('2024-03-31T12:00:00+02:00').startOf('day').format()}", &s),
        "2024-03-31T00:00:00+01:00"
    );
    // A 23-hour day.
    assert_eq!(
        render(&e, "${moment('2024-04-01T00:00:00+02:00').diff(moment('2024-03-31T00:00:00+01:00'), 'hours')}", &s),
        "23"
    );
    // Fall back 2024-10-27 03:00 -> 02:00 CET: the repeated 02:30 is read as CEST (earlier).
    assert_eq!(render(&e, "${moment('2024-10-27T02:30:00').format()}", &s), "2024-10-27T02:30:00+02:00");
    assert_eq!(render(&e, "${moment('2024-10-27T00:30:00Z').format('HH:mm Z')}", &s), "02:30 +02:00");
    assert_eq!(render(&e, "${moment('2024-10-27T01:30:00Z').format('HH:mm Z')}", &s), "02:30 +01:00");
}

// ---- limits ----

fn limited(time_ms: u64, memory_mib: usize) -> Evaluator {
    let limits =
        ExprLimits { time: Duration::from_millis(time_ms), memory_bytes: memory_mib << 20, ..Default::default() };
    Evaluator::new(spade_dig::Zone::UTC, limits).expect("evaluator")
}

#[test]
fn endless_loop_times_out_and_the_evaluator_survives() {
    let e = limited(200, 64);
    let started = Instant::now();
    let err = e.eval_config(&obj(json!({"echo>": "${(function(){while(true){}})()}"})), &Object::new()).unwrap_err();
    let took = started.elapsed();
    assert_eq!(err.kind, ExprErrorKind::Timeout, "{err}");
    assert_eq!(err.path, "echo>");
    assert!(took < Duration::from_secs(3), "stopped after {took:?}");
    assert!(err.to_string().contains("200ms"), "{err}");
    // A catch block cannot swallow the interruption.
    let err = e
        .render("${(function(){ try { while(true){} } catch (e) { return 'caught' } })()}", &Object::new())
        .unwrap_err();
    assert_eq!(err.kind, ExprErrorKind::Timeout, "{err}");
    assert_eq!(render(&e, "${1 + 1}", &json!({})), "2");
}

#[test]
fn memory_bombs_fail_cleanly() {
    let e = limited(5000, 32);
    let err = e.render("${'x'.repeat(1e9)}", &Object::new()).unwrap_err();
    assert!(matches!(err.kind, ExprErrorKind::Memory | ExprErrorKind::Script), "{err}");
    let err = e
        .render(
            "${(function(){ var a = []; while (true) a.push(new Array(1000).join('x') + a.length); })()}",
            &Object::new(),
        )
        .unwrap_err();
    assert_eq!(err.kind, ExprErrorKind::Memory, "{err}");
    assert!(err.to_string().contains("32 MiB"), "{err}");
    assert_eq!(render(&e, "${moment('2024-01-01T00:00:00Z').format('YYYY')}", &json!({})), "2024");
}

#[test]
fn deep_recursion_is_a_range_error() {
    let e = ev("UTC");
    let err = e.render("${(function f(n){ return f(n + 1) + 1 })(0)}", &Object::new()).unwrap_err();
    assert_eq!(err.kind, ExprErrorKind::Script);
    assert!(err.message.starts_with("RangeError"), "{err}");
    assert_eq!(render(&e, "${(function f(n){ return n ? n + f(n - 1) : 0 })(100)}", &json!({})), "5050");
}

#[test]
fn recursion_survives_a_small_thread_stack() {
    // The engine may evaluate on runtime worker threads: the stack limit must bite before the
    // thread's own stack runs out.
    let handle = std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(|| {
            let e = ev("UTC");
            e.render("${(function f(){ return f() })()}", &Object::new()).unwrap_err().message
        })
        .unwrap();
    assert!(handle.join().unwrap().starts_with("RangeError"));
}

#[test]
fn evaluator_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Evaluator>();
    // And usable from another thread than the one that created it.
    let e = ev("Asia/Tokyo");
    let out =
        std::thread::spawn(move || e.render("${moment('2024-01-01T00:00:00Z').format('HH')}", &Object::new()).unwrap())
            .join()
            .unwrap();
    assert_eq!(out, "09");
}

#[test]
fn template_cache_keeps_working_past_its_limit() {
    let e = ev("UTC");
    for i in 0..1200 {
        assert_eq!(render(&e, &format!("${{{i} + 1}}"), &json!({})), (i + 1).to_string());
    }
}

#[test]
fn results_are_formatted_as_soon_as_each_expression_ends() {
    let e = ev("UTC");
    assert_eq!(render(&e, "${o}${o.x = 2}${o}", &json!({"o": {"x": 1}})), r#"{"x":1}2{"x":2}"#);
    assert_eq!(render(&e, "${typeof __p} ${a, 'comma'}", &json!({"a": 1})), "undefined comma");
    // A line comment ends at the line end, as in digdag.js: fine before a newline only.
    assert_eq!(render(&e, "${a // note\n}", &json!({"a": 1})), "1");
    assert!(e.render("${a // note}", &obj(json!({"a": 1}))).unwrap_err().message.starts_with("SyntaxError"));
}

#[test]
fn memoized_moment_parsing_is_invisible() {
    let e = ev("America/Los_Angeles");
    let s = json!({"st": "2023-02-14T00:00:00-08:00", "plain": "2023-02-14"});
    let cases = [
        // Each call is an independent moment, even for the same text.
        (
            "${(function(){ var a = moment(st); a.add(1, 'days'); return moment(st).format() })()}",
            "2023-02-14T00:00:00-08:00",
        ),
        ("${moment(st) === moment(st)}", "false"),
        ("${moment.isMoment(moment(st))} ${moment(st) instanceof moment}", "true true"),
        (
            "${moment(st).creationData().format} ${moment(st).creationData().input}",
            "YYYY-MM-DDTHH:mm:ssZ 2023-02-14T00:00:00-08:00",
        ),
        ("${moment.parseZone(st).format()} ${moment(st).parseZone().format('Z')}", "2023-02-14T00:00:00-08:00 -08:00"),
        (
            "${moment(plain).format()} ${moment(plain, 'YYYY-MM-DD').format('LL')}",
            "2023-02-14T00:00:00-08:00 February 14, 2023",
        ),
        ("${moment('nonsense').isValid()} ${moment(undefined).isValid()}", "false true"),
        (
            "${moment.utc(st).format()} ${moment.duration(90, 'minutes').asHours()} ${typeof moment.fn.format}",
            "2023-02-14T08:00:00Z 1.5 function",
        ),
        ("${moment(st).toDate().getHours()} ${moment(st).valueOf()}", "0 1676361600000"),
        ("${typeof moment} ${moment.version}", "function 2.21.0"),
    ];
    for (template, expected) in cases {
        assert_eq!(render(&e, template, &s), expected, "{template}");
        assert_eq!(render(&e, template, &s), expected, "{template}, second time");
    }
    // Settings on `moment` reach the library (and last for the evaluator, like any built-in).
    assert_eq!(
        render(&e, "${(function(){ moment.defaultFormat = 'YYYY'; return moment(st).format() })()}", &s),
        "2023"
    );
}
