//! A client session: the pure reply accounting ([`state`]), the async control-channel
//! driver ([`driver`]) and passive data mappings ([`passive`]).

pub mod driver;
pub mod passive;
pub mod state;

pub use driver::{run_session, SessionContext};
