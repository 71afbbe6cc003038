//! spade-store (being written)
