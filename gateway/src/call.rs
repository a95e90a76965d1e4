//! The one vocabulary of a call, from extraction to the record: what was called, by whom, and
//! how a request becomes calls.

pub mod extract;
