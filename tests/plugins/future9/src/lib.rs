//! `spade-test-future9`: a plugin built against `spade:operator@9.0.0` (a copy of the
//! contract under a major version no host knows). Installing it must fail with a message
//! naming the plugin, the version it was built for and the versions the host supports.

wit_bindgen::generate!({ path: "wit", world: "plugin" });

use spade::operator::types::Done;

struct Future;

impl Guest for Future {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "spade-test-future9".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            operators: vec!["future".into()],
            wit_version: "9.0.0".into(),
        }
    }

    fn run(_request: TaskRequest) -> Outcome {
        spade::operator::output::print("from the future");
        Outcome::Done(Done {
            store_params: "{}".into(),
            reset_store_params: vec![],
            export_params: "{}".into(),
            subtasks: None,
        })
    }
}

export!(Future);
