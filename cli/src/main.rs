//! The `tidemark` binary: see `tidemark --help`.

fn main() -> std::process::ExitCode {
    tidemark_cli::main()
}
