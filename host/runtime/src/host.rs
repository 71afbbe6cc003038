//! The host side of the `spade:operator` world: generated bindings, the per-call store
//! data (`HostState`), and the always-granted imports (`types`, `log`, `output`). Each
//! capability's imports live in its own module of `crate::capability`.
//!
//! It also replaces wasmtime-wasi's clock subscriptions so that a guest sleeping in
//! `wasi:io/poll` (where epoch interruption cannot reach it) still stops on kill/deadline.
//!
//! Capability checks happen twice: at install time a plugin that imports an interface it
//! was not granted is refused (see `Runtime::install`), and at each call the capability's
//! module checks what is asked (`secrets.get` only answers keys both the plugin's manifest
//! and its grants name).

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use spade_api::{CancelToken, LogLevel, TaskServices};
use wasmtime::StoreContextMut;
use wasmtime::component::{Linker, Resource, ResourceTable};
use wasmtime_wasi::p2::{DynPollable, Pollable, subscribe};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::capability::http::{HttpGuard, HttpPolicy};
use crate::manifest::Linked;
use crate::sandbox::{Limiter, LineBudget};

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "plugin",
});

pub(crate) use spade::operator::{command as wit_command, engine as wit_engine, log as wit_log, types as wit_types};
pub(crate) use spade::operator::{expressions as wit_expressions, output as wit_output};
pub(crate) use spade::operator::{params as wit_params, secrets as wit_secrets, workflows as wit_workflows};

/// What the plugin is linked with, as the host functions need it.
pub(crate) struct PluginCtx {
    pub name: String,
    /// What its commands may use, when it is granted `command`.
    pub command: Option<Arc<crate::capability::command::CommandGrant>>,
    /// The intersection of its manifest's request and its grants.
    pub linked: Linked,
    /// Where the plugin may send HTTP requests (checked per request by [`HttpGuard`]).
    pub http: Arc<HttpPolicy>,
    /// Where it may open TCP connections (checked per connect by wasmtime-wasi's hook).
    pub tcp: Arc<crate::capability::tcp::TcpPolicy>,
}

impl PluginCtx {
    pub fn new(name: &str, linked: Linked) -> PluginCtx {
        let http = Arc::new(linked.http.clone().unwrap_or(HttpPolicy { granted: Vec::new(), wanted: None }));
        let command = linked.command.clone().map(Arc::new);
        let tcp = Arc::new(
            linked.tcp.clone().unwrap_or(crate::capability::tcp::TcpPolicy { granted: Vec::new(), wanted: None }),
        );
        PluginCtx { name: name.to_string(), command, linked, http, tcp }
    }

    pub fn may_read_secret(&self, key: &str) -> bool {
        self.linked.may_read_secret(key)
    }
}

/// Why a call was stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Interrupt {
    Cancelled,
    Deadline,
}

/// When a call must stop: shared by the epoch callback (guest code running) and the
/// guest's sleeps (host blocked in `wasi:io/poll`), which epochs cannot interrupt.
pub(crate) struct Stop {
    cancel: Option<CancelToken>,
    deadline: Instant,
    /// 0: running; otherwise the `Interrupt` that fired (1 cancelled, 2 deadline).
    fired: AtomicU8,
}

impl Stop {
    pub fn new(cancel: Option<CancelToken>, deadline: Instant) -> Arc<Stop> {
        Arc::new(Stop { cancel, deadline, fired: AtomicU8::new(0) })
    }

    /// Whether the call must stop now; remembers why.
    pub fn check(&self) -> Option<Interrupt> {
        let why = if self.cancel.as_ref().is_some_and(|c| c.is_cancelled()) {
            Interrupt::Cancelled
        } else if Instant::now() >= self.deadline {
            Interrupt::Deadline
        } else {
            return None;
        };
        let code = if why == Interrupt::Cancelled { 1 } else { 2 };
        let _ = self.fired.compare_exchange(0, code, Ordering::SeqCst, Ordering::SeqCst);
        Some(why)
    }

    /// When the call runs out of time.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// The interrupt that fired during the call, if any.
    pub fn fired(&self) -> Option<Interrupt> {
        match self.fired.load(Ordering::SeqCst) {
            1 => Some(Interrupt::Cancelled),
            2 => Some(Interrupt::Deadline),
            _ => None,
        }
    }
}

/// The guest's monotonic clock: nanoseconds since the store was created (like
/// wasmtime-wasi's own), with its origin known to our `subscribe-instant`.
pub(crate) struct Clock(pub Instant);

impl wasmtime_wasi::HostMonotonicClock for Clock {
    fn resolution(&self) -> u64 {
        1
    }
    fn now(&self) -> u64 {
        u64::try_from(self.0.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// A guest sleep (`subscribe-duration`/`-instant` + `poll`) that also ends when the call
/// is killed or runs out of time, checking every [`SLEEP_SLICE`].
struct Sleep {
    until: Option<tokio::time::Instant>,
    stop: Arc<Stop>,
    yielded: bool,
}

const SLEEP_SLICE: Duration = Duration::from_millis(20);

#[wasmtime_wasi::async_trait]
impl Pollable for Sleep {
    async fn ready(&mut self) {
        loop {
            if self.stop.check().is_some() {
                return;
            }
            let now = tokio::time::Instant::now();
            if self.until.is_some_and(|u| now >= u) {
                if !self.yielded {
                    // Like wasmtime-wasi: a zero timeout still yields once to the runtime.
                    self.yielded = true;
                    tokio::task::yield_now().await;
                }
                return;
            }
            let slice = now + SLEEP_SLICE;
            tokio::time::sleep_until(self.until.map_or(slice, |u| u.min(slice))).await;
        }
    }
}

/// The WASI 0.2 version wasmtime-wasi 48 defines; components importing any 0.2.x resolve
/// to it. `shadow_sleeps` fails loudly if a wasmtime-wasi upgrade moves it.
const WASI_CLOCKS: &str = "wasi:clocks/monotonic-clock@0.2.12";

fn subscribe_sleep(data: &mut HostState, duration: Duration) -> wasmtime::Result<Resource<DynPollable>> {
    let until = tokio::time::Instant::now().checked_add(duration);
    let sleep = data.table.push(Sleep { until, stop: data.stop.clone(), yielded: false })?;
    subscribe(&mut data.table, sleep)
}

/// Replaces wasmtime-wasi's clock subscriptions with interruptible ones (see [`Sleep`]).
pub(crate) fn shadow_sleeps(linker: &mut Linker<HostState>) -> Result<(), String> {
    let probe = linker.instance(WASI_CLOCKS).and_then(|mut i| {
        i.func_wrap(
            "subscribe-duration",
            |_: StoreContextMut<'_, HostState>, (_,): (u64,)| -> wasmtime::Result<(u64,)> { Ok((0,)) },
        )
    });
    if probe.is_ok() {
        return Err(format!(
            "internal: wasmtime-wasi no longer defines {WASI_CLOCKS}; update WASI_CLOCKS in spade-runtime"
        ));
    }
    linker.allow_shadowing(true);
    let result = linker.instance(WASI_CLOCKS).and_then(|mut i| {
        i.func_wrap("subscribe-duration", |mut cx: StoreContextMut<'_, HostState>, (nanos,): (u64,)| {
            Ok((subscribe_sleep(cx.data_mut(), Duration::from_nanos(nanos))?,))
        })?;
        i.func_wrap("subscribe-instant", |mut cx: StoreContextMut<'_, HostState>, (when,): (u64,)| {
            let data = cx.data_mut();
            let now = u64::try_from(data.clock_origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
            Ok((subscribe_sleep(data, Duration::from_nanos(when.saturating_sub(now)))?,))
        })
    });
    linker.allow_shadowing(false);
    result.map_err(|e| format!("cannot define {WASI_CLOCKS}: {e:#}"))
}

/// Data of one `Store`: lives exactly as long as one invocation (or one `describe`).
pub(crate) struct HostState {
    pub wasi: WasiCtx,
    pub table: ResourceTable,
    pub limiter: Limiter,
    pub plugin: Arc<PluginCtx>,
    /// `None` while describing a plugin at install time.
    pub services: Option<&'static dyn TaskServices>,
    pub log: LineBudget,
    pub print: LineBudget,
    pub stop: Arc<Stop>,
    /// Origin of the guest's monotonic clock ([`Clock`]).
    pub clock_origin: Instant,
    pub http: WasiHttpCtx,
    pub http_guard: HttpGuard,
    /// The workspace's disk quota ([`crate::disk`]).
    pub disk: crate::disk::DiskGuard,
    /// The `command` capability ([`crate::capability::command`]).
    pub command: crate::capability::command::CommandCall,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: &mut self.http_guard }
    }
}

impl HostState {
    /// Forwards a log line within the budget.
    pub fn log_line(&mut self, level: LogLevel, line: &str) {
        if let Some(line) = self.log.admit(line) {
            match self.services {
                Some(s) => s.log(level, &line),
                None => tracing::debug!(plugin = %self.plugin.name, "describe log: {line}"),
            }
        }
    }
}

impl wit_types::Host for HostState {}

impl wit_log::Host for HostState {
    fn write(&mut self, level: wit_log::Level, message: String) {
        let level = match level {
            wit_log::Level::Trace => LogLevel::Trace,
            wit_log::Level::Debug => LogLevel::Debug,
            wit_log::Level::Info => LogLevel::Info,
            wit_log::Level::Warn => LogLevel::Warn,
            wit_log::Level::Error => LogLevel::Error,
        };
        self.log_line(level, &message);
    }
}

impl spade::operator::output::Host for HostState {
    fn print(&mut self, line: String) {
        if let Some(line) = self.print.admit(&line) {
            match self.services {
                Some(s) => s.print(&line),
                None => tracing::debug!(plugin = %self.plugin.name, "describe output: {line}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_grants() {
        let ctx = |keys: &[&str]| {
            let linked = Linked { secrets: keys.iter().map(|k| k.to_string()).collect(), ..Linked::default() };
            PluginCtx::new("p", linked)
        };
        let p = ctx(&["a", "slack.*"]);
        assert!(p.may_read_secret("a"));
        assert!(!p.may_read_secret("ab"));
        assert!(p.may_read_secret("slack.token"));
        assert!(!p.may_read_secret("slackx"));
        assert!(!ctx(&["*x", ""]).may_read_secret("y"));
        assert!(ctx(&["*"]).may_read_secret("anything"));
    }
}
