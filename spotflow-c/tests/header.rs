//! `include/spotflow.h` is what cbindgen makes of `src/lib.rs` with `cbindgen.toml`: regenerated
//! here and compared, so that the checked-in header never drifts from the library.
//! `SPOTFLOW_UPDATE_HEADER=1 cargo test -p spotflow-c --test header` writes it anew.

use std::path::Path;

#[test]
fn the_checked_in_header_is_the_generated_one() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("cbindgen.toml");
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_crate(dir)
        .with_config(config)
        .generate()
        .expect("cbindgen generates the header")
        .write(&mut generated);
    let generated = String::from_utf8(generated).expect("UTF-8");
    let path = dir.join("include/spotflow.h");
    if std::env::var_os("SPOTFLOW_UPDATE_HEADER").is_some() {
        std::fs::write(&path, &generated).expect("write include/spotflow.h");
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "include/spotflow.h differs from what cbindgen makes of src/lib.rs: run \
         SPOTFLOW_UPDATE_HEADER=1 cargo test -p spotflow-c --test header and commit the header"
    );
}
