//! spade-dig (being written)
