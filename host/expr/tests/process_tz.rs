//! The workflow time zone wins over the process `TZ` (the conformance runner starts spade
//! with `TZ=Asia/Kathmandu`, +05:45). Its own test binary: it sets `TZ` for the whole process.

use serde_json::{Map, Value, json};
use spade_expr::{Evaluator, ExprLimits};

fn scope(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap()
}

#[test]
fn local_time_follows_the_workflow_zone_not_the_process_tz() {
    // SAFETY: this binary has this single test, so no other thread reads the environment.
    unsafe { std::env::set_var("TZ", "Asia/Kathmandu") };

    // Proof the setting bites: plain QuickJS now computes local time in Kathmandu.
    let rt = rquickjs::Runtime::new().unwrap();
    let ctx = rquickjs::Context::full(&rt).unwrap();
    let native_offset: i32 = ctx.with(|ctx| ctx.eval("new Date(Date.UTC(2024, 0, 1)).getTimezoneOffset()").unwrap());
    assert_eq!(native_offset, -345, "the process TZ should be Asia/Kathmandu for this test");

    let cases = [
        ("UTC", "2024-02-29T13:14:15+00:00", "2024-02-29 13:14:15 +00:00 0"),
        ("America/Los_Angeles", "2023-02-14T00:00:00-08:00", "2023-02-14 00:00:00 -08:00 480"),
        ("Asia/Tokyo", "2023-07-15T08:30:00+09:00", "2023-07-15 08:30:00 +09:00 -540"),
    ];
    for (zone, session_time, expected) in cases {
        let e = Evaluator::new(zone.parse().unwrap(), ExprLimits::default()).unwrap();
        let s = scope(json!({"session_time": session_time}));
        let out = e
            .render(
                "${moment(session_time).format('YYYY-MM-DD HH:mm:ss Z')} ${new Date(session_time).getTimezoneOffset()}",
                &s,
            )
            .unwrap();
        assert_eq!(out, expected, "{zone}");
        assert!(e.render("${moment().format('Z')}", &s).unwrap() != "+05:45" || zone == "Asia/Kathmandu");
        let local = e.render("${new Date(2024, 0, 1).toISOString()}", &s).unwrap();
        let want = match zone {
            "UTC" => "2024-01-01T00:00:00.000Z",
            "America/Los_Angeles" => "2024-01-01T08:00:00.000Z",
            _ => "2023-12-31T15:00:00.000Z",
        };
        assert_eq!(local, want, "{zone}");
    }
}
