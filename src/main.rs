//! The `order-processor` binary: parse the command line, load the
//! configuration, start telemetry, run the command, turn the result into
//! an exit code (0 done, 1 runtime failure, 2 bad configuration or usage).

use std::fmt::Arguments;
use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser as _;
use clap::error::ErrorKind;
use order_processor::app;
use order_processor::cli::{Cli, Command};
use order_processor::commands::{dlq, publish};
use order_processor::config::{ConfigError, Settings};
use order_processor::healthcheck;
use order_processor::telemetry::{self, LogTarget, Telemetry, TelemetryError};

/// Every order allocates and frees many small buffers on several threads;
/// mimalloc's thread-local free lists make that markedly cheaper than the
/// system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How a command failed; decides the exit code.
enum Failure {
    Config(ConfigError),
    Runtime(String),
}

impl From<ConfigError> for Failure {
    fn from(error: ConfigError) -> Self {
        Self::Config(error)
    }
}

impl From<TelemetryError> for Failure {
    fn from(error: TelemetryError) -> Self {
        Self::Config(ConfigError {
            key: error.key.to_owned(),
            problem: error.problem,
        })
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => return usage(&error),
    };
    let settings = match Settings::load(&cli.config_dir) {
        Ok(settings) => settings,
        Err(error) => {
            complain(format_args!("{error}"));
            return ExitCode::from(2);
        }
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
            complain(format_args!("could not start the runtime: {error}"));
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(execute(cli, settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Config(error)) => {
            complain(format_args!("{error}"));
            ExitCode::from(2)
        }
        Err(Failure::Runtime(message)) => {
            complain(format_args!("{message}"));
            ExitCode::from(1)
        }
    }
}

/// Writes a line of the command's result. `println!` would panic once the
/// reader has gone away (`dlq list | head -1`); then no one is left to tell.
fn say(line: Arguments<'_>) {
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

/// Writes a line on stderr, which may be closed too.
fn complain(line: Arguments<'_>) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
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
            complain(format_args!(
                "{}",
                rendered.lines().next().unwrap_or("invalid usage")
            ));
            ExitCode::from(2)
        }
    }
}

async fn execute(cli: Cli, settings: Settings) -> Result<(), Failure> {
    match cli.command.unwrap_or(Command::Run) {
        Command::CheckConfig => {
            telemetry::check("order-processor")?;
            let shown = serde_json::to_string_pretty(&settings).map_err(|error| {
                Failure::Runtime(format!("could not print the configuration: {error}"))
            })?;
            say(format_args!("{shown}"));
            Ok(())
        }
        // No telemetry: a probe run every few seconds must not log or export.
        Command::Healthcheck => healthcheck::check(settings.http.listen)
            .await
            .map_err(|error| Failure::Runtime(error.to_string())),
        Command::Migrate => {
            let telemetry = Telemetry::init("order-processor", LogTarget::Stdout)?;
            let result = app::migrate(&settings).await;
            telemetry.shutdown(Duration::from_secs(5));
            result.map_err(|error| Failure::Runtime(error.to_string()))
        }
        Command::Run => {
            let telemetry = Telemetry::init("order-processor", LogTarget::Stdout)?;
            let result = app::run(settings, telemetry.order_tracer()).await;
            telemetry.shutdown(Duration::from_secs(5));
            result.map_err(|error| Failure::Runtime(error.to_string()))
        }
        Command::Dlq(command) => {
            let telemetry = Telemetry::init("order-processor", LogTarget::Stderr)?;
            let result = dlq::run(&settings, command).await;
            telemetry.shutdown(Duration::from_secs(5));
            result.map_err(|error| Failure::Runtime(error.to_string()))
        }
        Command::Publish(args) => {
            // stdout carries the order and trace ids; logs go to stderr.
            let telemetry = Telemetry::init("order-publisher", LogTarget::Stderr)?;
            let result = publish::run(&settings, &args).await;
            telemetry.shutdown(Duration::from_secs(5));
            result
                .map(|_| ())
                .map_err(|error| Failure::Runtime(error.to_string()))
        }
    }
}
