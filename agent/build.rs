//! Link the agent's binaries with packed relative relocations (`DT_RELR`) on Linux/glibc.
//!
//! A position-independent executable carries one 24-byte `R_*_RELATIVE` entry for every pointer
//! in its data (vtables, string tables): 1.1 MB of the agent's 27 MB. `-z pack-relative-relocs`
//! stores them as a bitmap (9 KB), keeps the binary position-independent (ASLR unchanged) and
//! costs nothing at run time. It needs GNU ld ≥ 2.38 or lld ≥ 15 to link (older linkers warn
//! and ignore the option) and glibc ≥ 2.36 where the binary runs: a dynamically linked build
//! records that as the `GLIBC_ABI_DT_RELR` version, so an older glibc refuses it by name at
//! start instead of misbehaving; a statically linked build carries its own glibc. For a device
//! with an older glibc, build with `AGENT_PACK_RELATIVE_RELOCS=0` (1.1 MB larger). See
//! docs/performance.md ("Where the binary's bytes go") and docs/deploying.md.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=AGENT_PACK_RELATIVE_RELOCS");
    if std::env::var("AGENT_PACK_RELATIVE_RELOCS").is_ok_and(|v| v == "0") {
        return;
    }
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os == "linux" && env == "gnu" {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
