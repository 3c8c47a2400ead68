//! Rebuild when a migration or a built web-app file is added or edited:
//! refinery's `embed_migrations!` reads `migrations/` and rust-embed reads
//! `assets/dist/` at compile time, and cargo does not know that on its own
//! (a directory here makes cargo watch every file below it).
fn main() {
    println!("cargo:rerun-if-changed=migrations");
    println!("cargo:rerun-if-changed=assets/dist");
}
