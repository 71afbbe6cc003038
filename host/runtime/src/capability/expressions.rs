//! Capability `expressions` (`spade:operator/expressions`, for `param_eval>` and `embulk>`):
//! render `${...}` templates with Digdag's expression language, inputs size-checked.

use super::{MAX_CAPABILITY_INPUT, parse_object, services_missing};
use crate::host::{HostState, spade};

impl spade::operator::expressions::Host for HostState {
    fn render(&mut self, template: String, scope: String) -> Result<String, String> {
        let services = self.services.ok_or_else(|| services_missing("expressions.render"))?;
        if template.len() > MAX_CAPABILITY_INPUT {
            return Err(format!("template is {} bytes; the limit is {} bytes", template.len(), MAX_CAPABILITY_INPUT));
        }
        let scope = parse_object("scope", &scope)?;
        services.render_template(&template, &scope)
    }
}
