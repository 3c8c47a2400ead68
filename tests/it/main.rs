//! The one integration-test binary: the real `pagodirecto` executable, run
//! as a child on a temporary data dir.

mod binaries;
