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

    /// The Rust target triple of a glibc Linux binary.
    pub(crate) fn triple(self) -> &'static str {
        match self {
            Arch::Amd64 => "x86_64-unknown-linux-gnu",
            Arch::Arm64 => "aarch64-unknown-linux-gnu",
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

    /// Debian packages that cross-build for this architecture on another one: the C compiler
    /// cargo links with and the target's C library and start files it links against.
    pub(crate) fn cross_packages(self) -> [String; 2] {
        [
            format!("gcc-{}", self.gnu().replace('_', "-")),
            format!("libc6-dev-{}-cross", self.debian()),
        ]
    }

    /// The environment variable naming cargo's linker for this target, and its value (Debian's
    /// cross gcc), for a build on another architecture.
    pub(crate) fn linker_env(self) -> (String, String) {
        (
            format!(
                "CARGO_TARGET_{}_LINKER",
                self.triple().to_uppercase().replace('-', "_")
            ),
            format!("{}-gcc", self.gnu()),
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
    fn arm64_cross_build_uses_debians_cross_gcc() {
        assert_eq!(
            Arch::Arm64.linker_env(),
            (
                "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER".to_string(),
                "aarch64-linux-gnu-gcc".to_string()
            )
        );
        assert_eq!(
            Arch::Arm64.cross_packages(),
            ["gcc-aarch64-linux-gnu", "libc6-dev-arm64-cross"]
        );
        // Debian spells the x86-64 triplet with a dash in package names.
        assert_eq!(
            Arch::Amd64.cross_packages(),
            ["gcc-x86-64-linux-gnu", "libc6-dev-amd64-cross"]
        );
    }

    #[test]
    fn triples_name_their_architecture() {
        for arch in Arch::ALL {
            assert_eq!(Arch::from_triple(arch.triple()), Some(arch));
        }
        assert_eq!(Arch::from_triple("riscv64gc-unknown-linux-gnu"), None);
    }
}
