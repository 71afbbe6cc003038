//! spade:operator 0.2.x (frozen in `wit/v0.2`): 0.1 plus the `http` capability, which is the
//! standard `wasi:http` and needs nothing here. Served by the same host functions as 0.3.

frozen_contract!("../../wit/v0.2");
