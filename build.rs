// `sqlx::migrate!` embeds `migrations/` at compile time, but stable Rust can't tell cargo that a
// macro read a directory: without this, a changed or added migration leaves a stale binary.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
