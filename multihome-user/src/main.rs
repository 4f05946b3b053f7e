//! The `multihome` binary: everything is in the library (`multihome::main`).

fn main() -> std::process::ExitCode {
    multihome::main()
}
