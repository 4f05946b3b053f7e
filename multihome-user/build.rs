//! Builds the TC guard (the `multihome-ebpf` bin) for the BPF target with the nightly toolchain
//! (aya-build adds `-Z build-std=core` and `-C link-arg=--btf`), so a plain stable `cargo build`
//! yields a `multihome` binary that embeds the object as `$OUT_DIR/multihome-guard`.
//! `AYA_BUILD_SKIP=1` skips it (the loader then fails at run time, naming the cause).

use std::path::Path;

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR")?;
    let ebpf_dir = Path::new(&manifest_dir).join("../multihome-ebpf");
    let ebpf_dir = ebpf_dir.canonicalize()?;
    let ebpf_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow::anyhow!("non-UTF-8 path {}", ebpf_dir.display()))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "multihome-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
