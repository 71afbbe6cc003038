//! `spade-test-alien`: a test-only plugin that exports the `plugin` world but also imports
//! `spade-test:alien/weird`, an interface no spade host provides. Installing it must fail
//! with a message naming that import.

wit_bindgen::generate!({
    path: "../../../wit",
    inline: r#"
        package spade-test:alien;
        interface weird {
            poke: func() -> u32;
        }
        world alien {
            include spade:operator/plugin@0.3.0;
            import weird;
        }
    "#,
    world: "spade-test:alien/alien",
    generate_all,
});

use spade::operator::types::Done;

struct Alien;

impl Guest for Alien {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "spade-test-alien".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            operators: vec!["alien".into()],
            wit_version: "0.1.0".into(),
        }
    }

    fn run(_request: TaskRequest) -> Outcome {
        // Using the import keeps it in the component.
        let n = spade_test::alien::weird::poke();
        Outcome::Done(Done {
            store_params: format!("{{\"poked\": {n}}}"),
            reset_store_params: vec![],
            export_params: "{}".into(),
            subtasks: None,
        })
    }
}

export!(Alien);
