//! The `eddy` binary: flags → [`eddy::Config`], the logger, bind, run; or,
//! with `--workers N`, bind and run N workers ([`eddy::workers`]).
//! Nothing else lives here, so tests and benches configure a server exactly
//! as the command line does.

use std::process::ExitCode;

use eddy::cli::{self, Command};
use eddy::{Config, Server, workers};

fn main() -> ExitCode {
    // env_logger's own default is "error"; a server should say it started.
    // A worker's lines say which worker wrote them.
    eddy::logging::init(std::env::var(workers::WORKER_ENV).ok());

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
    let inherited = workers::inherited_listener();
    if inherited.is_none() && config.workers > 1 {
        return supervise(addr, config);
    }
    let mut config = config;
    if let (Some(number), Some(addr)) = (workers::worker_number(), config.metrics_addr) {
        config.metrics_addr = Some(workers::metrics_addr_of(addr, number));
    }
    let routes = match eddy::chat::routes(&config) {
        Ok(routes) => routes,
        Err(e) => {
            eprintln!("eddy: {e}");
            return ExitCode::from(1);
        }
    };
    let bound = match inherited {
        // A worker: its parent bound the port.
        Some(listener) => listener.and_then(|l| Server::from_listener(l, config, routes)),
        None => Server::bind(addr, config, routes),
    };
    let mut server = match bound {
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

/// `--workers N`: binds `addr` once and runs N workers on it until SIGTERM.
fn supervise(addr: std::net::SocketAddr, mut config: Config) -> ExitCode {
    // What a worker would refuse, refused once, here.
    if let Err(e) = config.validate() {
        eprintln!("eddy: {e}");
        return ExitCode::from(1);
    }
    if let Err(e) = eddy::templates::load(config.templates.as_deref()) {
        eprintln!("eddy: {e}");
        return ExitCode::from(1);
    }
    #[cfg(feature = "tls")]
    if let Some(files) = &config.tls
        && let Err(e) = eddy::tls::Certificates::load(&files.cert, &files.key)
    {
        eprintln!("eddy: {e}");
        return ExitCode::from(1);
    }
    let listener = match std::net::TcpListener::bind(addr)
        .and_then(|l| eddy::limits::widen_backlog(&l).map(|()| l))
    {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("eddy: cannot listen on {addr}: {e}");
            return ExitCode::from(1);
        }
    };
    match listener.local_addr() {
        Ok(local) => log::info!(
            "listening on {}://{local}/ with {} workers",
            config.scheme(),
            config.workers
        ),
        Err(e) => log::warn!("cannot read the bound address: {e}"),
    }
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    match workers::supervise(&listener, config.workers, &args, config.shutdown_timeout) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("eddy: workers: {e}");
            ExitCode::from(1)
        }
    }
}
