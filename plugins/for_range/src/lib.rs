//! `for_range>: {from, to, step | slices}`: generate one child per range
//! `+range-from=<a>&to=<b>`, each a copy of the raw `_do` exporting
//! `range: {from, to, index}` (Digdag ForRangeOperatorFactory). The last range is clipped to
//! `to`; with `slices`, step = ceil((to - from) / slices). `_parallel` is copied into the
//! generated group. Uses no capability.

use serde::Deserialize;
use spade_sdk::control::{Generated, check_count, child, parallel_of, required_body};
use spade_sdk::{Failure, Object, Operator, Outcome, Request, Result, json};

pub struct ForRange;

#[derive(Deserialize)]
struct Spec {
    from: i64,
    to: i64,
    step: Option<i64>,
    slices: Option<i64>,
}

impl Operator for ForRange {
    fn run(req: Request) -> Result<Outcome> {
        let spec: Spec = req.command_as()?;
        let step = step(&spec).map_err(|m| Failure::new(format!("{}: {m}", req.location())))?;
        check_count(&req, "for_range", count(spec.from, spec.to, step))?;
        let body = required_body(&req, "_do")?;
        let mut generated = Generated::new();
        for (index, (from, to)) in ranges(spec.from, spec.to, step).enumerate() {
            let mut export = Object::new();
            export.insert("range".into(), json!({"from": from, "to": to, "index": index}));
            generated.push(&format!("+range-from={from}&to={to}"), child(&body, export));
        }
        if let Some(parallel) = parallel_of(&req) {
            generated.set("_parallel", parallel);
        }
        Ok(Outcome::done().generated(generated).into())
    }
}

/// The step, validated like Digdag (messages included).
fn step(spec: &Spec) -> std::result::Result<i64, String> {
    match (spec.step, spec.slices) {
        (Some(_), Some(_)) => Err("Setting both step and slices options to for_range is invalid".into()),
        (None, None) => Err("step or slices option is required for for_range".into()),
        (Some(step), None) if step <= 0 => Err(format!("step option must be same or greater than 1 but got {step}")),
        (None, Some(slices)) if slices <= 0 => {
            Err(format!("slices option must be same or greater than 1 but got {slices}"))
        }
        (Some(step), None) => Ok(step),
        (None, Some(slices)) => {
            // ceil((to - from) / slices), in i128 so no input overflows; at least 1 when
            // from >= to (no ranges are generated then anyway).
            let width = i128::from(spec.to) - i128::from(spec.from);
            let step = (width + i128::from(slices) - 1).div_euclid(i128::from(slices));
            Ok(step.clamp(1, i128::from(i64::MAX)) as i64)
        }
    }
}

/// How many ranges `ranges(from, to, step)` yields, computed without iterating.
fn count(from: i64, to: i64, step: i64) -> u64 {
    if from >= to {
        return 0;
    }
    let width = (i128::from(to) - i128::from(from)) as u128;
    width.div_ceil(step as u128) as u64
}

/// `[from, min(from + step, to))`, `[from + step, ...)`, ... up to `to`.
fn ranges(from: i64, to: i64, step: i64) -> impl Iterator<Item = (i64, i64)> {
    let mut pos = i128::from(from);
    std::iter::from_fn(move || {
        if pos >= i128::from(to) {
            return None;
        }
        let end = (pos + i128::from(step)).min(i128::from(to));
        let range = (pos as i64, end as i64);
        pos = end;
        Some(range)
    })
}

spade_sdk::plugin!(ForRange, name = "spade-for-range", operators = ["for_range"]);

#[cfg(test)]
mod tests {
    use super::*;
    use spade_sdk::Value;
    use spade_sdk::testing::{MockHost, request};

    fn spec(from: i64, to: i64, step: Option<i64>, slices: Option<i64>) -> Spec {
        Spec { from, to, step, slices }
    }

    #[test]
    fn step_ranges_clip_the_last_one() {
        let r: Vec<_> = ranges(10, 35, 10).collect();
        assert_eq!(r, [(10, 20), (20, 30), (30, 35)]);
        assert_eq!(count(10, 35, 10), 3);
    }

    #[test]
    fn slices_use_ceiling_division() {
        let step = step(&spec(0, 10, None, Some(4))).unwrap();
        assert_eq!(step, 3);
        assert_eq!(ranges(0, 10, step).collect::<Vec<_>>(), [(0, 3), (3, 6), (6, 9), (9, 10)]);
        assert_eq!(super::step(&spec(0, 9, None, Some(3))).unwrap(), 3);
        // More slices than integers: step 1, fewer ranges than slices (as in Digdag).
        assert_eq!(count(0, 2, super::step(&spec(0, 2, None, Some(5))).unwrap()), 2);
    }

    #[test]
    fn empty_and_extreme_ranges() {
        assert_eq!(count(5, 5, 1), 0);
        assert_eq!(count(7, 5, 1), 0);
        assert_eq!(ranges(7, 5, 1).count(), 0);
        assert_eq!(count(i64::MIN, i64::MAX, 1), u64::MAX);
        let r: Vec<_> = ranges(i64::MAX - 3, i64::MAX, 2).collect();
        assert_eq!(r, [(i64::MAX - 3, i64::MAX - 1), (i64::MAX - 1, i64::MAX)]);
        assert_eq!(count(-5, 5, 3), 4);
    }

    #[test]
    fn invalid_specs() {
        assert!(step(&spec(0, 1, Some(1), Some(1))).unwrap_err().contains("both step and slices"));
        assert!(step(&spec(0, 1, None, None)).unwrap_err().contains("step or slices option is required"));
        assert!(step(&spec(0, 1, Some(0), None)).unwrap_err().contains("greater than 1 but got 0"));
        assert!(step(&spec(0, 1, None, Some(-2))).unwrap_err().contains("but got -2"));
    }

    #[test]
    fn generates_named_children_exporting_range() {
        let req = request("for_range")
            .command(json!({"from": "0", "to": 10, "slices": 4}))
            .local("_parallel", json!({"limit": 2}))
            .raw("_do", json!({"echo>": "${range.index}"}))
            .build();
        let done = MockHost::default().run::<ForRange>(req).unwrap();
        let sub = Value::Object(done.as_done().unwrap().subtasks_object().unwrap());
        let keys: Vec<_> = sub.as_object().unwrap().keys().cloned().collect();
        assert_eq!(
            keys,
            ["+range-from=0&to=3", "+range-from=3&to=6", "+range-from=6&to=9", "+range-from=9&to=10", "_parallel"]
        );
        assert_eq!(
            sub["+range-from=9&to=10"],
            json!({"echo>": "${range.index}", "_export": {"range": {"from": 9, "to": 10, "index": 3}}})
        );
        assert_eq!(sub["_parallel"], json!({"limit": 2}));
    }

    #[test]
    fn task_errors_name_the_task() {
        let run = |cmd: Value| {
            let req = request("for_range").command(cmd).raw("_do", json!({"echo>": "x"})).build();
            MockHost::default().run::<ForRange>(req).unwrap_err().message
        };
        assert!(run(json!({"from": 0, "to": 1})).contains("+test+for_range"));
        assert!(run(json!({"from": 0})).contains("missing field `to`"));
        assert!(
            run(json!({"from": 0, "to": 20_000_000, "step": 1})).contains("too many for_range subtasks (20000000)")
        );
    }
}
