//! `spade-test-legacy01`: a plugin built directly against the frozen 0.1 contract
//! (`wit/v0.1/operator.wit`), without the SDK, as a third party did before 0.2. Operator
//! `legacy>` prints its argument, logs, reads a secret and renders a template through the
//! 0.1 imports, and stores what it saw, so the host tests can prove that a 0.1 component
//! installs and runs on a newer host with every field carried across.

wit_bindgen::generate!({ path: "../../../wit/v0.1", world: "plugin" });

const NAME: &str = "spade-test-legacy01";
const OPERATOR: &str = "legacy";
const WIT_VERSION: &str = "0.1.0";

include!("operator.rs");
