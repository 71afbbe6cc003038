//! `rb>`: call a Ruby method of the task's code (Digdag RbOperatorFactory), through the
//! host's `command` capability, in the task's sandbox by default.
//!
//! `rb>: method`, `Class.method` or `Name::Space::Class.method` (an instance method of a new
//! instance when the class defines one by that name), arguments from params by name;
//! `require:` loads a file of the workspace first; `Digdag.env` has `params`, `store`,
//! `export`, `add_subtask` and `set_state`; `ruby:` (text or a list) chooses the
//! interpreter; a nested `rb:` map gives defaults. A Ruby exception fails the task with its
//! message and class.

use spade_sdk::{Operator, Outcome, Request, Result};

pub struct Rb;

impl Operator for Rb {
    fn run(req: Request) -> Result<Outcome> {
        spade_sdk::script::ruby().run(&req)
    }
}

spade_sdk::plugin!(Rb, name = "spade-rb", operators = ["rb"]);
