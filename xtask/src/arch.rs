//! The CPU architectures multihome is built, packaged and VM-tested for, named as Debian names
//! them. Everything that differs between them (Rust target, cross toolchain, qemu) is derived
//! here, so the build, the set-up and the VM tier have one code path for all of them.

use std::fmt;

/// A Debian architecture multihome supports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub(crate) enum Arch {
    Amd64,
    Arm64,
}

impl Arch {
    pub(crate) const ALL: [Arch; 2] = [Arch::Amd64, Arch::Arm64];

    /// The machine xtask runs on (it is built for the host).
    pub(crate) fn host() -> Arch {
        if cfg!(target_arch = "aarch64") {
            Arch::Arm64
        } else {
            Arch::Amd64
        }
    }

    /// Debian's name (`dpkg --print-architecture`, package file names).
    pub(crate) fn debian(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }

    /// The Rust target multihome is built for: musl, linked statically (a static PIE), so the
    /// one binary runs on any Linux of the architecture whatever its C library: Debian 11's
    /// glibc 2.31 as well as the build machine's newer one (a glibc build would need the build
    /// machine's glibc or newer).
    pub(crate) fn triple(self) -> &'static str {
        match self {
            Arch::Amd64 => "x86_64-unknown-linux-musl",
            Arch::Arm64 => "aarch64-unknown-linux-musl",
        }
    }

    /// The architecture of a Rust target triple (`--target`), if it is one of ours.
    pub(crate) fn from_triple(triple: &str) -> Option<Arch> {
        Arch::ALL.into_iter().find(|a| a.triple() == triple)
    }

    /// The GNU triplet: Debian's cross tools are `<gnu>-gcc`, `<gnu>-strip`, and its
    /// multiarch library directory is `/usr/lib/<gnu>`.
    pub(crate) fn gnu(self) -> &'static str {
        match self {
            Arch::Amd64 => "x86_64-linux-gnu",
            Arch::Arm64 => "aarch64-linux-gnu",
        }
    }

    /// The Debian package of this architecture's binutils when it is not the host's: the
    /// package strips its binary with `<gnu>-strip` (linking needs no cross toolchain, see
    /// [`Self::linker_env`]). Debian spells the x86-64 triplet with a dash in package names.
    pub(crate) fn cross_binutils(self) -> String {
        format!("binutils-{}", self.gnu().replace('_', "-"))
    }

    /// The environment variable naming cargo's linker for this target, and its value: the
    /// toolchain's own `rust-lld`, with the C library and start files the Rust target ships
    /// (musl's, self-contained), so that every architecture links the same way, with nothing
    /// from the host's C toolchain.
    pub(crate) fn linker_env(self) -> (String, String) {
        (
            format!(
                "CARGO_TARGET_{}_LINKER",
                self.triple().to_uppercase().replace('-', "_")
            ),
            "rust-lld".to_owned(),
        )
    }

    /// The qemu system emulator that boots this architecture's kernels, and its Debian package.
    pub(crate) fn qemu(self) -> (&'static str, &'static str) {
        match self {
            Arch::Amd64 => ("qemu-system-x86_64", "qemu-system-x86"),
            Arch::Arm64 => ("qemu-system-aarch64", "qemu-system-arm"),
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.debian())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_architecture_links_with_rust_lld_and_strips_with_its_binutils() {
        assert_eq!(
            Arch::Arm64.linker_env(),
            (
                "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER".to_string(),
                "rust-lld".to_string()
            )
        );
        assert_eq!(
            Arch::Amd64.linker_env().0,
            "CARGO_TARGET_X86_64_UNKNOWN_LINUX_MUSL_LINKER"
        );
        assert_eq!(Arch::Arm64.cross_binutils(), "binutils-aarch64-linux-gnu");
        assert_eq!(Arch::Amd64.cross_binutils(), "binutils-x86-64-linux-gnu");
    }

    #[test]
    fn triples_name_their_architecture() {
        for arch in Arch::ALL {
            assert_eq!(Arch::from_triple(arch.triple()), Some(arch));
        }
        assert_eq!(Arch::from_triple("riscv64gc-unknown-linux-musl"), None);
        // A glibc build is not what the package ships.
        assert_eq!(Arch::from_triple("aarch64-unknown-linux-gnu"), None);
    }
}
