//! The `stratus` binary: everything lives in the library (`stratus::main`).
fn main() -> std::process::ExitCode {
    stratus::main()
}
