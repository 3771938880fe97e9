//! Subcommands of the `monivault` binary that are more than wiring: each owns its flags and
//! its errors. Only the binary uses them; the library's rooms know nothing of the CLI.

pub mod backup;
pub mod plugin;
pub mod runner;
pub mod seal;
