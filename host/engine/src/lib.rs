//! spade-engine (being written)
