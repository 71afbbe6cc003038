//! spade-expr (being written)
