//! `sqlx::migrate!` embeds the migrations at compile time; without this the crate is not
//! rebuilt when a migration is added or edited on a stable toolchain.
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
