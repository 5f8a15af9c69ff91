//! `include/tasker_core.h` is what cbindgen generates from this crate: the test fails when the
//! committed header drifts. `TASKER_UPDATE_HEADER=1 cargo test -p tasker-core-c --test header`
//! writes it anew.

use std::path::Path;

#[test]
fn the_committed_header_is_what_cbindgen_generates() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config =
        cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).expect("cbindgen.toml");
    let bindings = cbindgen::Builder::new()
        .with_crate(crate_dir)
        .with_config(config)
        .generate()
        .expect("cbindgen generates the header");
    let mut generated = Vec::new();
    bindings.write(&mut generated);
    let header = crate_dir.join("../include/tasker_core.h");
    if std::env::var_os("TASKER_UPDATE_HEADER").is_some() {
        std::fs::write(&header, &generated).expect("write include/tasker_core.h");
    }
    let committed = std::fs::read(&header).unwrap_or_default();
    assert!(
        committed == generated,
        "include/tasker_core.h differs from what cbindgen generates: \
         run TASKER_UPDATE_HEADER=1 cargo test -p tasker-core-c --test header and commit it"
    );
}
