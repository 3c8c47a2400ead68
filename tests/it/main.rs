//! The one integration-test binary: the real `pagodirecto` executable, run
//! as a child on a temporary data dir with the real PostgreSQL.

// Test code casts and nests freely; the library is held to pedantic lints.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::items_after_statements,
    clippy::too_many_lines
)]

mod support;

mod api;
mod api_resources;
mod api_support;
mod backup;
mod api_users;
mod binaries;
mod browser;
mod cli;
mod edge;
mod external;
mod handover;
mod lifecycle;
mod service;
mod update;
mod update_support;
mod limits;
