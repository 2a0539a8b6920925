//! The `weir` binary: everything is in the library; see `weir::cli`.

fn main() -> std::process::ExitCode {
    weir::cli::run()
}
