//! The bindings of a frozen contract version and their forwarding to the current host
//! functions. Every frozen version has the same six capability interfaces and the same
//! records as the current one (only later versions added interfaces), so one macro serves
//! them all; a version that changes a record gets its own conversion instead.

macro_rules! frozen_contract {
    ($path:tt) => {
        wasmtime::component::bindgen!({
            path: $path,
            world: "plugin",
        });

        use spade::operator as old;
        use wasmtime::Store;

        use crate::host::{
            HostState, wit_engine, wit_expressions, wit_log, wit_output, wit_secrets, wit_types, wit_workflows,
        };

        pub(crate) fn describe(p: &Plugin, store: &mut Store<HostState>) -> wasmtime::Result<wit_types::PluginInfo> {
            let i = p.call_describe(store)?;
            Ok(wit_types::PluginInfo {
                name: i.name,
                version: i.version,
                operators: i.operators,
                wit_version: i.wit_version,
            })
        }

        pub(crate) fn run(
            p: &Plugin,
            store: &mut Store<HostState>,
            r: &wit_types::TaskRequest,
        ) -> wasmtime::Result<wit_types::Outcome> {
            let req = old::types::TaskRequest {
                operator: r.operator.clone(),
                task_name: r.task_name.clone(),
                project_name: r.project_name.clone(),
                workflow_name: r.workflow_name.clone(),
                attempt_id: r.attempt_id,
                session_id: r.session_id,
                session_uuid: r.session_uuid.clone(),
                session_time: r.session_time.clone(),
                timezone: r.timezone.clone(),
                retry_attempt_name: r.retry_attempt_name.clone(),
                command: r.command.clone(),
                params: r.params.clone(),
                local_params: r.local_params.clone(),
                raw: r.raw.clone(),
                state: r.state.clone(),
                retry_count: r.retry_count,
            };
            Ok(match p.call_run(store, &req)? {
                old::types::Outcome::Done(d) => wit_types::Outcome::Done(wit_types::Done {
                    store_params: d.store_params,
                    reset_store_params: d.reset_store_params,
                    export_params: d.export_params,
                    subtasks: d.subtasks,
                }),
                old::types::Outcome::Poll(p) => {
                    wit_types::Outcome::Poll(wit_types::Poll { after_seconds: p.after_seconds, state: p.state })
                }
                old::types::Outcome::Error(f) => {
                    wit_types::Outcome::Error(wit_types::Failure { message: f.message, retryable: f.retryable })
                }
            })
        }

        impl old::types::Host for HostState {}

        impl old::log::Host for HostState {
            fn write(&mut self, level: old::log::Level, message: String) {
                use old::log::Level as L;
                let level = match level {
                    L::Trace => wit_log::Level::Trace,
                    L::Debug => wit_log::Level::Debug,
                    L::Info => wit_log::Level::Info,
                    L::Warn => wit_log::Level::Warn,
                    L::Error => wit_log::Level::Error,
                };
                wit_log::Host::write(self, level, message)
            }
        }

        impl old::output::Host for HostState {
            fn print(&mut self, line: String) {
                wit_output::Host::print(self, line)
            }
        }

        impl old::secrets::Host for HostState {
            fn get(&mut self, key: String) -> Option<String> {
                wit_secrets::Host::get(self, key)
            }
        }

        impl old::workflows::Host for HostState {
            fn load(&mut self, path: String) -> Result<String, String> {
                wit_workflows::Host::load(self, path)
            }
        }

        impl old::expressions::Host for HostState {
            fn render(&mut self, template: String, scope: String) -> Result<String, String> {
                wit_expressions::Host::render(self, template, scope)
            }
        }

        fn old_ref(r: wit_engine::AttemptRef) -> old::engine::AttemptRef {
            old::engine::AttemptRef {
                attempt_id: r.attempt_id,
                session_id: r.session_id,
                state: match r.state {
                    wit_engine::AttemptState::Running => old::engine::AttemptState::Running,
                    wit_engine::AttemptState::Success => old::engine::AttemptState::Success,
                    wit_engine::AttemptState::Failure => old::engine::AttemptState::Failure,
                },
            }
        }

        impl old::engine::Host for HostState {
            fn start_or_find(&mut self, req: old::engine::StartRequest) -> Result<old::engine::AttemptRef, String> {
                let req = wit_engine::StartRequest {
                    project_name: req.project_name,
                    workflow_name: req.workflow_name,
                    session_time: req.session_time,
                    attempt_name: req.attempt_name,
                    params: req.params,
                    rerun_on: req.rerun_on,
                };
                wit_engine::Host::start_or_find(self, req).map(old_ref)
            }

            fn status(&mut self, attempt_id: i64) -> Result<old::engine::AttemptRef, String> {
                wit_engine::Host::status(self, attempt_id).map(old_ref)
            }
        }
    };
}
