//! Pure FTP wire codec: no I/O, no allocation on the hot path where avoidable.
//!
//! - [`line`](mod@line): bounded line framer (CRLF or bare LF in, CRLF out).
//! - [`command`]: command lines (`VERB arg`), verb classification, log redaction.
//! - [`reply`]: reply lines and the multi-line reply framer (RFC 959 §4.2).
//! - [`addr`]: the address forms carried in `227`, `229`, `PORT`, `EPRT`.
//! - [`rewrite`]: replace only the address part of a line, keeping every other byte.
//! - [`logtext`]: network text escaped for logs (no control characters, no forged lines).
//!
//! Everything here is total on arbitrary bytes from the network: no panics, which the
//! lints below enforce outside tests.

// No unwrap/expect/panic crate-wide (lib.rs); here indexing is checked as well.
#![cfg_attr(not(test), deny(clippy::indexing_slicing, clippy::string_slice))]

pub mod addr;
pub mod command;
pub mod line;
pub mod logtext;
pub mod reply;
pub mod rewrite;
