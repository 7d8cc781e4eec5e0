//! The commands an operator runs besides the daemon itself, each printing
//! its own output: stdout carries the result, stderr the progress and the
//! logs.

pub mod dlq;
mod output;
mod pace;
pub mod publish;
