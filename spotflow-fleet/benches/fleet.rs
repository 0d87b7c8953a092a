//! The fleet simulator as a benchmark target: `cargo bench -p spotflow-fleet --bench fleet --
//! --devices 500 --rate 1 --duration 15` runs the `spotflow-fleet` binary (built by that command
//! with the same profile and features as the other benchmarks, so a CI run that builds them all
//! in one `cargo bench --no-run` builds the simulator once) with the arguments after `--`.

use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    // `cargo bench` adds `--bench`; the simulator does not take it.
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let status = Command::new(env!("CARGO_BIN_EXE_spotflow-fleet")).args(&args).status();
    match status {
        Ok(status) if status.success() => ExitCode::SUCCESS,
        Ok(status) => {
            eprintln!("spotflow-fleet {}", status);
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("spotflow-fleet could not start: {e}");
            ExitCode::FAILURE
        }
    }
}
