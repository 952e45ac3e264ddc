//! The `eddy` binary: flags → [`eddy::Config`], the logger, bind, run.
//! Nothing else lives here, so tests and benches configure a server exactly
//! as the command line does.

use std::process::ExitCode;

use eddy::Server;
use eddy::cli::{self, Command};

fn main() -> ExitCode {
    // env_logger's own default is "error"; a server should say it started.
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();

    let (addr, config) = match cli::parse(std::env::args_os().skip(1)) {
        Ok(Command::Run { addr, config }) => (addr, *config),
        Ok(Command::Help) => {
            print!("{}", cli::help());
            return ExitCode::SUCCESS;
        }
        Ok(Command::Version) => {
            println!("eddy {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!(
                "eddy: {e}\n{}\nTry 'eddy --help' for more information.",
                cli::USAGE
            );
            return ExitCode::from(2);
        }
    };

    // Before binding: the default connection cap is sized from the limit.
    let fd_limit = eddy::limits::raise_fd_limit();
    let routes = match eddy::chat::routes(&config) {
        Ok(routes) => routes,
        Err(e) => {
            eprintln!("eddy: {e}");
            return ExitCode::from(1);
        }
    };
    let mut server = match Server::bind(addr, config, routes) {
        Ok(server) => server,
        Err(e) => {
            eprintln!("eddy: {e}");
            return ExitCode::from(1);
        }
    };
    match fd_limit {
        Ok((before, now, hard)) => {
            log::info!("open-file limit {now} (soft limit was {before}; hard limit {hard})");
        }
        Err(e) => log::warn!("cannot raise the open-file limit: {e}"),
    }
    if let Err(e) = server.stop_on_signals() {
        eprintln!("eddy: cannot install signal handlers: {e}");
        return ExitCode::from(1);
    }
    match server.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("eddy: event loop failed: {e}");
            ExitCode::from(1)
        }
    }
}
