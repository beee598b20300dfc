//! A client session: the pure reply accounting ([`state`]), the async control-channel
//! driver ([`driver`]) and data connections ([`data`]).

pub mod data;
pub mod driver;
pub mod state;

pub use driver::{run_session, SessionContext};
