//! `include/tally.h` is what cbindgen makes of this crate, and CI fails when it is not.

use std::path::Path;

/// The header cbindgen generates from this crate now.
fn generate() -> String {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml"))
        .expect("client/ffi/cbindgen.toml reads");
    let mut out = Vec::new();
    cbindgen::Builder::new()
        .with_crate(crate_dir)
        .with_config(config)
        .generate()
        .expect("cbindgen generates the header")
        .write(&mut out);
    String::from_utf8(out).expect("the header is UTF-8")
}

#[test]
fn the_committed_header_is_current() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("include/tally.h");
    let generated = generate();
    if std::env::var_os("TALLY_UPDATE_HEADER").is_some() {
        std::fs::write(&path, &generated).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "{} is stale: the C API changed and the header was not regenerated. Run\n    \
         TALLY_UPDATE_HEADER=1 cargo test -p tally-ffi --lib header\nand commit the result.",
        path.display()
    );
}
