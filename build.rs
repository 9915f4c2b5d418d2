//! The chart is bundled into the binary by `include_dir!` (src/create.rs), a
//! proc macro that cannot tell cargo which files it read: rebuild when any file
//! under chart/ changes, so the bundled chart is never stale.
fn main() {
    println!("cargo:rerun-if-changed=chart");
}
