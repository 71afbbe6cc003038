extern crate self as spade_sdk;
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "plugin",
        pub_export_macro: true,
        export_macro_name: "__export_plugin",
        default_bindings_module: "spade_sdk::bindings",
        runtime_path: "spade_sdk::__private::wit_bindgen::rt",
        debug: true,
    });
}
#[doc(hidden)]
pub mod __private { pub use wit_bindgen; }
