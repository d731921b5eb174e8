//! Rebuilds when a migration is added: `sqlx::migrate!` embeds the directory's files at compile
//! time, and cargo does not watch a directory it was not told about.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
