//! `cvmm`: the command line. Parses arguments and hands over to the library crates; no VM or
//! API logic lives here.

mod bench;
mod cli;
mod confine;
mod explain;

use std::process::ExitCode;

fn main() -> ExitCode {
    vmm::timeline::mark_process_start();
    cli::main()
}
