//! `py>`: call a Python function of the task's code (Digdag PyOperatorFactory), through
//! the host's `command` capability, in the task's sandbox by default.
//!
//! `py>: module.function`, `module.Class.method` or `module.Class` (then its `run`),
//! arguments taken from params by name; `import digdag` gives `digdag.env` with `params`,
//! `store()`, `export()`, `add_subtask()` and `set_state()`. `python:` (text or a list)
//! chooses the interpreter (default `python`, else `python3`); `script:` runs a whole script
//! instead of a function; a nested `py:` map gives defaults. A Python exception fails the
//! task with its message and class (the traceback goes to the task log). See
//! `spade_sdk::script` for the runner protocol.

use spade_sdk::{Operator, Outcome, Request, Result};

pub struct Py;

impl Operator for Py {
    fn run(req: Request) -> Result<Outcome> {
        spade_sdk::script::python().run(&req)
    }
}

spade_sdk::plugin!(Py, name = "spade-py", operators = ["py"]);
