//! spade-sdk (being written)
