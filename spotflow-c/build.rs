//! libspotflow.so gets its soname (`libspotflow.so`), so that a program linked with it records
//! that name (found through its rpath or the loader's path), not the path it was linked from.
fn main() {
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libspotflow.so");
    }
}
