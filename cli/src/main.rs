//! The `tasker` binary: everything is in the library (`tasker_cli`), which the dashboard's
//! benchmark also uses.

fn main() -> std::process::ExitCode {
    tasker_cli::main()
}
