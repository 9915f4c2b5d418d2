//! The `vcluster` binary: parses the command line and reports errors as one line.

use std::process::ExitCode;

fn main() -> ExitCode {
    vcluster::cli::main()
}
