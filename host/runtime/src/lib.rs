//! spade-runtime (being written)
