//! `natter`: parse flags, set up logging, bind, run until SIGINT/SIGTERM.

use std::process::ExitCode;

use clap::Parser;
use natter_backend::ServerError;
use natter_backend::config::cli::{Cli, LogFormat};
use natter_backend::store::transfer;
use tracing::{error, info};
use tracing_subscriber::EnvFilter;

/// The log filter when `RUST_LOG` is not set.
const DEFAULT_LOG_FILTER: &str = "info";

#[allow(clippy::print_stderr)] // main reports startup errors to the terminal
fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER));
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_target(false).with_writer(std::io::stderr);
    match cli.serve.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }

    if let Some(command) = &cli.command {
        return match transfer::run(command) {
            Ok(report) => {
                eprintln!("natter: {report}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("natter: {} failed: {e}", command.name());
                ExitCode::from(1)
            }
        };
    }
    let cli = cli.serve;
    let config = match cli.config() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("natter: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("natter: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async {
        let listener = match natter_backend::net::server::bind(cli.listen) {
            Ok(listener) => listener,
            Err(e) => {
                eprintln!("natter: cannot listen on {}: {e}", cli.listen);
                return ExitCode::from(1);
            }
        };
        let metrics = match cli.metrics_listen.map(natter_backend::net::server::bind).transpose() {
            Ok(metrics) => metrics,
            Err(e) => {
                eprintln!("natter: cannot listen for metrics on {}: {e}", cli.metrics_listen.unwrap_or(cli.listen));
                return ExitCode::from(1);
            }
        };
        let listeners = natter_backend::Listeners { main: listener, metrics };
        match natter_backend::run_with(config, listeners, shutdown_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(ServerError::Config(e)) => {
                eprintln!("natter: {e}");
                ExitCode::from(2)
            }
            Err(e) => {
                error!(error = %e, "server failed");
                ExitCode::from(1)
            }
        }
    })
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sig) => {
                sig.recv().await;
            }
            Err(e) => {
                error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => info!("SIGINT received"),
        () = term => info!("SIGTERM received"),
    }
}
