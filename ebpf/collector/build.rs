//! Builds the probes (`ebpf/probes`) for bpfel-unknown-none the aya-build way: nightly,
//! `-Z build-std=core`, bpf-linker. The probes crate is a workspace of its own (it cannot build for
//! the host), so its cargo runs from its directory. `make setup` installs what this needs.
fn main() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../probes");
    let dir = dir.canonicalize().expect("ebpf/probes exists beside ebpf/collector");
    println!("cargo:rerun-if-changed={}", dir.join("src").display());
    println!("cargo:rerun-if-changed={}", dir.join("../common/src").display());
    // aya-build runs cargo in the current directory, and passes its stderr on as warnings:
    // quiet, only real diagnostics are shown
    std::env::set_current_dir(&dir).expect("enter ebpf/probes");
    // SAFETY (edition 2021 API): the build script is single-threaded here.
    std::env::set_var("CARGO_TERM_QUIET", "true");
    let root = dir.to_str().expect("a UTF-8 path");
    let package = aya_build::Package { name: "engine-probes-ebpf", root_dir: root, ..Default::default() };
    if let Err(e) = aya_build::build_ebpf([package], aya_build::Toolchain::Nightly) {
        panic!("building the eBPF probes failed: {e:#}\n(they need the nightly toolchain with rust-src and bpf-linker: run `make setup`)");
    }
}
