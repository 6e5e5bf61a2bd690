//! `tbgw`: the command-line tool of tb-gateway-rs.
//!
//! * `tbgw demo`: a narrated gateway session against an in-process ThingsBoard emulator.
//! * `tbgw emulator`: the emulator as a server until Ctrl-C.
//! * `tbgw gateway`: a simulated gateway sending sub-device telemetry (load generator).
//!
//! Exit codes: 0 success, 1 the command failed, 2 the command line is wrong.

mod args;
mod demo;
mod emulator;
mod gateway;
mod report;

use std::error::Error;
use std::future::Future;
use std::process::ExitCode;

use args::{ArgError, Cli};

/// Any failure of a subcommand, printed as its message.
pub type BoxError = Box<dyn Error + Send + Sync>;

fn main() -> ExitCode {
    let mut arguments = Vec::new();
    for arg in std::env::args_os().skip(1) {
        match arg.into_string() {
            Ok(arg) => arguments.push(arg),
            Err(arg) => {
                eprintln!("tbgw: error: argument {arg:?} is not valid UTF-8");
                return ExitCode::from(2);
            }
        }
    }
    let cli = match args::parse(arguments) {
        Ok(cli) => cli,
        Err(e) => return usage_error(&e),
    };
    match cli {
        Cli::Help(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Cli::Version => {
            println!("tbgw {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Cli::Demo => run("demo", demo::run()),
        Cli::Emulator(a) => run("emulator", emulator::run(a)),
        Cli::Gateway(a) => run("gateway", gateway::run(a)),
    }
}

fn usage_error(e: &ArgError) -> ExitCode {
    eprintln!("tbgw: error: {e}\n");
    eprint!("{}", e.usage());
    ExitCode::from(2)
}

/// Runs a subcommand on a fresh multi-threaded tokio runtime.
fn run(command: &str, work: impl Future<Output = Result<(), BoxError>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("tbgw {command}: error: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(work);
    // Leftover tasks (a connection being closed) must not keep the process alive.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tbgw {command}: error: {e}");
            ExitCode::FAILURE
        }
    }
}
