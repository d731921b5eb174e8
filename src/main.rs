use std::process::ExitCode;

use clap::Parser;
use voucher_gateway::{
    app::{self, App},
    config::{Cli, Command, ReconcileConfig},
    telemetry,
};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    let threads = match &cli.command {
        Command::Serve(config) => config.worker_threads,
        Command::Migrate(_) | Command::Reconcile(_) => 1,
    };
    match app::runtime(threads) {
        Ok(runtime) => runtime.block_on(run(cli.command)),
        Err(error) => {
            tracing::error!("cannot start the async runtime: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> ExitCode {
    let result = match command {
        Command::Reconcile(config) => return reconcile(&config).await,
        Command::Serve(config) => serve(*config).await,
        Command::Migrate(config) => app::prepare_database(&config, true)
            .await
            .map(|_| tracing::info!("migrations applied")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Prints the report on stdout; exits 0 in sync, 1 with differences, 2 when it could not finish.
async fn reconcile(config: &ReconcileConfig) -> ExitCode {
    match voucher_gateway::reconcile::run(config).await {
        Ok(report) => {
            print!("{}", report.render(config.format));
            if report.is_in_sync() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(error) => {
            eprintln!("reconcile failed: {error:#}");
            ExitCode::from(2)
        }
    }
}

async fn serve(config: voucher_gateway::config::ServeConfig) -> anyhow::Result<()> {
    App::build(config).await?.run(shutdown_signal()).await
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    // A handler that cannot be installed must not count as the signal.
    let interrupt = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for SIGINT; only SIGTERM stops the server");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM; only SIGINT stops the server");
                std::future::pending().await
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {},
        () = terminate => {},
    }
    tracing::info!("shutdown signal received");
}
