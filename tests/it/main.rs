//! The one integration-test binary: the real `pagodirecto` executable, run
//! as a child on a temporary data dir with the real PostgreSQL.

mod support;

mod binaries;
mod cli;
mod lifecycle;
