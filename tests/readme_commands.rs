//! The README's two commands must work as written on a fresh clone. `cargo run --release` needs to
//! know which of the package's binaries is the server (the load tool is a second one): without
//! `default-run` it stops with "could not determine which binary to run".

#[test]
fn cargo_run_starts_the_server_binary() {
    let manifest = include_str!("../Cargo.toml");
    let readme = include_str!("../README.md");
    assert!(
        readme.contains("cargo run --release "),
        "the README's run command"
    );
    assert!(
        manifest
            .lines()
            .any(|l| l.replace(' ', "") == "default-run=\"switchboard\""),
        "Cargo.toml's [package] must say default-run = \"switchboard\""
    );
}
