//! The `tidemark` CLI (`tidemark-cli`) built inside the tests package with the `crash-points`
//! feature, so integration tests can spawn it as a child process (and SIGKILL it) via
//! `CARGO_BIN_EXE_tidemark-under-test`.

fn main() -> std::process::ExitCode {
    tidemark_cli::main()
}
