//! The plugin components that ship inside the `spade` binary.
//!
//! `build.rs` compiles every crate under `plugins/` (and the test-only crates under
//! `tests/plugins/`) to a WASI 0.2 component; this crate embeds the former. It knows
//! nothing of how they are loaded: that is `spade-runtime`'s job.

include!(concat!(env!("OUT_DIR"), "/bundled.rs"));

/// The bytes of the bundled plugin built from crate `name`, if any.
pub fn plugin(name: &str) -> Option<&'static [u8]> {
    PLUGINS.iter().find(|(n, _)| *n == name).map(|(_, b)| *b)
}

/// The sha256 (hex) of the bundled plugin `name`, computed when it was built.
pub fn plugin_digest(name: &str) -> Option<&'static str> {
    PLUGIN_DIGESTS.iter().find(|(n, _)| *n == name).map(|(_, d)| *d)
}

/// Path of the test-only plugin built from crate `name` (e.g. `spade-test-hostile`).
pub fn test_plugin_path(name: &str) -> Option<&'static str> {
    TEST_PLUGINS.iter().find(|(n, _)| *n == name).map(|(_, p)| *p)
}
