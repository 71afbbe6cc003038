//! Native test support: run an operator with `cargo test` on the build machine, no wasm
//! runtime needed. Only compiled for non-wasm targets.
//!
//! [`MockHost`] stands in for the spade host: it records what the operator printed, logged
//! and asked the engine, and answers capability calls from its fields. [`RequestBuilder`]
//! makes task requests the way the host would.
//!
//! ```
//! use spade_sdk::testing::{request, MockHost};
//! use spade_sdk::{output, Operator, Outcome, Request, Result, json};
//!
//! struct Hello;
//! impl Operator for Hello {
//!     fn run(req: Request) -> Result<Outcome> {
//!         output::print(format!("hello {}", req.command_str()?));
//!         Ok(Outcome::done().into())
//!     }
//! }
//!
//! let mut host = MockHost::default();
//! let outcome = host.run::<Hello>(request("hello").command(json!("world")).build());
//! assert_eq!(outcome, Ok(Outcome::done().into()));
//! assert_eq!(host.printed, ["hello world"]);
//! ```

use std::cell::RefCell;
use std::collections::HashMap;

use serde_json::Value;

use crate::engine::{AttemptRef, StartRequest};
use crate::log::Level;
use crate::{Failure, Object, Operator, Outcome, Request};

/// A call an operator made to the `engine` capability.
#[derive(Clone, Debug, PartialEq)]
pub enum EngineCall {
    StartOrFind(StartRequest),
    Status(i64),
}

type Renderer = Box<dyn FnMut(&str, &Object) -> Result<String, String>>;
type Engine = Box<dyn FnMut(&EngineCall) -> Result<AttemptRef, String>>;
type Http = Box<dyn FnMut(&crate::http::Request) -> Result<crate::http::Response, crate::http::Error>>;
/// Runs a command "to completion": may write files into [`MockHost::files`].
type CommandRunner =
    Box<dyn FnMut(&crate::command::Spec, &mut HashMap<String, Vec<u8>>) -> Result<crate::command::Finished, String>>;

/// A stand-in host for native tests. Fill the answer fields, call [`MockHost::run`], then
/// inspect the record fields.
#[derive(Default)]
pub struct MockHost {
    /// Record: lines passed to `output::print`.
    pub printed: Vec<String>,
    /// Record: lines passed to `log::*`.
    pub logs: Vec<(Level, String)>,
    /// Record: calls to `engine::*`, in order.
    pub engine_calls: Vec<EngineCall>,
    /// Answers for `secrets::get`.
    pub secrets: HashMap<String, String>,
    /// The parameter server `params::get` reads and `params::set` writes.
    pub params: HashMap<String, String>,
    /// Answers for `workflows::load`, keyed by the path exactly as the operator passes it.
    pub workflows: HashMap<String, Result<Object, String>>,
    /// Answers for `expressions::render`.
    pub renderer: Option<Renderer>,
    /// Answers for `engine::start_or_find` and `engine::status`.
    pub engine: Option<Engine>,
    /// Answers for `http::send`, one call per request (redirect hops included).
    pub http: Option<Http>,
    /// Record: every request `http::send` made, hop by hop.
    pub http_requests: Vec<crate::http::Request>,
    /// Answers for `command::wait`: every command finishes on its first wait.
    pub command: Option<CommandRunner>,
    /// Record: every command `command::start` started (the handle is `mock-<index>`).
    pub commands_started: Vec<crate::command::Spec>,
    /// Record: handles passed to `command::cancel`.
    pub commands_cancelled: Vec<String>,
    /// Workspace files `command::read_file` answers from (commands may add to them).
    pub files: HashMap<String, Vec<u8>>,
}

thread_local! {
    static MOCK: RefCell<Option<MockHost>> = const { RefCell::new(None) };
}

impl MockHost {
    /// Run operator `O` on `req` with this host answering its capability calls.
    pub fn run<O: Operator>(&mut self, req: Request) -> Result<Outcome, Failure> {
        MOCK.with_borrow_mut(|m| *m = Some(std::mem::take(self)));
        let result = O::run(req);
        *self = MOCK.with_borrow_mut(|m| m.take()).expect("MockHost was removed during the run");
        result
    }
}

/// Run `f` on the installed mock host; a clear panic when a capability is used natively
/// without one (the generated native stubs would only say `unreachable`).
pub(crate) fn with_mock<R>(capability: &str, f: impl FnOnce(&mut MockHost) -> R) -> R {
    MOCK.with_borrow_mut(|m| match m.as_mut() {
        Some(host) => f(host),
        None => panic!(
            "spade-sdk: the `{capability}` capability was called outside a spade host; \
             in native tests run the operator through spade_sdk::testing::MockHost::run"
        ),
    })
}

/// Start a [`RequestBuilder`] for `operator`.
pub fn request(operator: &str) -> RequestBuilder {
    let mut req = Request::new(operator);
    req.task_name = format!("+test+{operator}");
    req.project_name = "test".into();
    req.workflow_name = "test".into();
    req.session_time = "2024-01-01T00:00:00+00:00".into();
    req.session_uuid = "00000000-0000-0000-0000-000000000000".into();
    RequestBuilder { req }
}

/// Builds a [`Request`] like the host does: `local` keys are also visible in `params`.
pub struct RequestBuilder {
    req: Request,
}

impl RequestBuilder {
    pub fn command(mut self, command: Value) -> Self {
        self.req.command = command;
        self
    }
    /// An inherited param (export, store or built-in).
    pub fn param(mut self, key: &str, value: Value) -> Self {
        self.req.params.insert(key.into(), value);
        self
    }
    /// One of the task's own keys (also visible in params, like on the host).
    pub fn local(mut self, key: &str, value: Value) -> Self {
        self.req.local_params.insert(key.into(), value.clone());
        self.req.params.insert(key.into(), value);
        self
    }
    /// An unevaluated subtree such as `_do`.
    pub fn raw(mut self, key: &str, value: Value) -> Self {
        self.req.raw.insert(key.into(), value);
        self
    }
    pub fn state(mut self, state: Value) -> Self {
        self.req.state = Some(state);
        self
    }
    pub fn task_name(mut self, name: &str) -> Self {
        self.req.task_name = name.into();
        self
    }
    pub fn session_time(mut self, time: &str) -> Self {
        self.req.session_time = time.into();
        self
    }
    pub fn retry_attempt_name(mut self, name: Option<&str>) -> Self {
        self.req.retry_attempt_name = name.map(str::to_string);
        self
    }
    pub fn build(self) -> Request {
        self.req
    }
}
