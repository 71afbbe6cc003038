//! Capability `secrets` (`spade:operator/secrets`): a plugin reads only the secret keys both
//! its manifest asks for and its grants name (`Linked::may_read_secret`); any other key reads
//! as unset, exactly as a key that does not exist.

use crate::host::{HostState, spade};

impl spade::operator::secrets::Host for HostState {
    fn get(&mut self, key: String) -> Option<String> {
        if !self.plugin.may_read_secret(&key) {
            return None;
        }
        self.services?.secret(&key)
    }
}
