//! The `order-processor` binary: parse the command line, load the
//! configuration, build the runtime, dispatch to the command (each in
//! [`order_processor::commands`], with its own output and telemetry), and
//! turn the result into an exit code (0 done, 1 runtime failure, 2 bad
//! configuration or usage).

use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser as _;
use clap::error::ErrorKind;
use order_processor::cli::{Cli, Command};
use order_processor::commands::output::note;
use order_processor::commands::{
    CommandError, TELEMETRY_FLUSH, check_config, dlq, healthcheck, migrate, publish, run,
};
use order_processor::config::Settings;
use order_processor::telemetry::{LogTarget, Telemetry};

/// Every order allocates and frees many small buffers on several threads;
/// jemalloc serves them from per-thread caches, and its background threads
/// return what a burst freed to the system within seconds (dirty pages
/// decay over 10 s), whichever thread freed it and whether or not that
/// thread allocates again. `_RJEM_MALLOC_CONF` tunes it (jemalloc's
/// `MALLOC_CONF` under this build's symbol prefix).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    // Before the allocator has touched more than a page or two.
    let small_pages = run::keep_pages_small();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => return usage(&error),
    };
    let settings = match Settings::load(&cli.config_dir) {
        Ok(settings) => settings,
        Err(error) => return failed(&CommandError::from(error)),
    };
    // Always set, so that tokio never reads TOKIO_WORKER_THREADS itself: it
    // panics on a value that is not a positive number.
    let threads = match settings.workers.threads {
        0 => std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
        threads => threads,
    };
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.worker_threads(threads);
    let runtime = match runtime.enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            note(format_args!("could not start the runtime: {error}"));
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(dispatch(
        cli.command.unwrap_or(Command::Run),
        settings,
        small_pages,
    )) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => failed(&error),
    }
}

/// The error's one line on stderr, and its exit code.
fn failed(error: &CommandError) -> ExitCode {
    note(format_args!("{error}"));
    ExitCode::from(error.exit_code())
}

/// Help and version go to stdout with 0; any other usage error is one line
/// on stderr with 2.
fn usage(error: &clap::Error) -> ExitCode {
    match error.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = write!(std::io::stdout().lock(), "{error}");
            ExitCode::SUCCESS
        }
        _ => {
            let rendered = error.render().to_string();
            note(format_args!(
                "{}",
                rendered.lines().next().unwrap_or("invalid usage")
            ));
            ExitCode::from(2)
        }
    }
}

async fn dispatch(
    command: Command,
    settings: Settings,
    small_pages: std::io::Result<()>,
) -> Result<(), CommandError> {
    match command {
        Command::Run => run::run(settings, small_pages).await,
        Command::Migrate => migrate::run(&settings).await,
        Command::CheckConfig => check_config::run(&settings),
        Command::Healthcheck => healthcheck::run(&settings).await,
        Command::Dlq(command) => {
            let telemetry = Telemetry::init("order-processor", LogTarget::Stderr)?;
            let result = dlq::run(&settings, command).await;
            telemetry.shutdown(TELEMETRY_FLUSH);
            Ok(result?)
        }
        Command::Publish(args) => {
            // stdout carries the order and trace ids; logs go to stderr.
            let telemetry = Telemetry::init("order-publisher", LogTarget::Stderr)?;
            let result = publish::run(&settings, &args).await;
            telemetry.shutdown(TELEMETRY_FLUSH);
            result?;
            Ok(())
        }
    }
}
