//! The node's declarative TOML config. Not built yet (issue 7).
