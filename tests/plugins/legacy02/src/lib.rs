//! `spade-test-legacy02`: a plugin built directly against the frozen 0.2 contract
//! (`wit/v0.2/operator.wit`), without the SDK. The same operator as `spade-test-legacy01`
//! (named `legacy2>`), so the host tests can prove that a 0.2 component installs and runs
//! on the 0.3 host with every field carried across.

wit_bindgen::generate!({ path: "../../../wit/v0.2", world: "plugin" });

const NAME: &str = "spade-test-legacy02";
const OPERATOR: &str = "legacy2";
const WIT_VERSION: &str = "0.2.0";

include!("../../legacy01/src/operator.rs");
