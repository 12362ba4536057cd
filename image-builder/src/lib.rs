//! The `drover` build-host tool. Each subcommand is one file in
//! [`commands`] with an `Args` struct and a `run` method; `main.rs` only
//! parses arguments and dispatches.

pub mod blocks;
pub mod build;
pub mod commands;
pub mod install;
pub mod media;
pub mod spec;
pub mod tuf;
