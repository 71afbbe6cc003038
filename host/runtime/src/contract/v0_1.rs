//! spade:operator 0.1.x (frozen in `wit/v0.1`): its interfaces are today's `log`, `output`,
//! `secrets`, `workflows`, `expressions` and `engine`, served by the same host functions.

frozen_contract!("../../wit/v0.1");
