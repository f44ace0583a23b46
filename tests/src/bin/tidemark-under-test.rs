//! The `tidemark` CLI built inside the tests package, so integration tests can spawn it as a
//! child process (and SIGKILL it) via `CARGO_BIN_EXE_tidemark-under-test`.

fn main() -> std::process::ExitCode {
    tidemark_cli::main()
}
