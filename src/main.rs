//! The `purchase-saga` binary: see `purchase_saga::cli`.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    purchase_saga::cli::main(purchase_saga::cli::Cli::parse())
}
