use std::process::ExitCode;

use clap::Parser;
use invitations::config::{Cli, Command};
use invitations::startup::Application;
use invitations::{dev, telemetry};

#[tokio::main]
async fn main() -> ExitCode {
    let mut cli = Cli::parse();
    if let Err(reason) = cli.config.read_secret_files() {
        // Names the setting and the file, never what the file holds.
        eprintln!("invitations: {reason}");
        return ExitCode::FAILURE;
    }
    let database_url = cli.config.database_url.clone();
    let telemetry = match telemetry::init(cli.config.log_format, &database_url) {
        Ok(telemetry) => telemetry,
        Err(reason) => {
            eprintln!("invitations: {reason}");
            return ExitCode::FAILURE;
        }
    };
    let code = match run(cli).await {
        Ok(code) => code,
        Err(reason) => {
            // A driver's error may quote the URL: its password never reaches the terminal.
            eprintln!("invitations: {}", database_url.redact(&reason.to_string()));
            ExitCode::FAILURE
        }
    };
    telemetry.shutdown().await;
    code
}

async fn run(cli: Cli) -> Result<ExitCode, Box<dyn std::error::Error>> {
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            // Listening before anything else, so a SIGTERM during start-up is a shutdown.
            let stop = invitations::startup::shutdown_signal();
            let settings = cli.config.settings()?;
            let stopped = Application::build(&settings).await?.run_until(stop).await?;
            return Ok(stopped.exit_code());
        }
        Command::Migrate => {
            let store = invitations::store::Store::connect(&cli.config.store_settings()?)
                .await
                .map_err(invitations::startup::StartupError::Connect)?;
            let first_retry =
                std::time::Duration::from_millis(cli.config.health_interval_ms.max(1));
            invitations::health::migrate_with_retries(&store, first_retry).await?;
            eprintln!("invitations: migrations applied");
        }
        Command::Dev => dev::run(&cli.config).await?,
        Command::HealthCheck {
            addr,
            service,
            timeout_ms,
            cacert,
            tls_server_name,
            cert,
            key,
        } => {
            let tls = cacert.map(|ca| invitations::health::CheckTls {
                ca,
                server_name: tls_server_name,
                identity: cert.zip(key),
            });
            // The operations listener when there is one: it is plaintext whatever the main
            // listener speaks. Asked to speak TLS, the main listener.
            let addr = match (addr, cli.config.ops_listen_addr) {
                (Some(addr), _) => addr,
                (None, _) if tls.is_some() => cli.config.listen_addr,
                (None, Some(addr)) => addr,
                (None, None) if cli.config.tls_cert_path.is_some() && tls.is_none() => {
                    return Err(
                        "the gRPC listener speaks TLS: set INVITATIONS_OPS_LISTEN_ADDR \
                                (plaintext health), or give --cacert (and --cert/--key under \
                                mTLS)"
                            .into(),
                    );
                }
                (None, None) => cli.config.listen_addr,
            };
            let status = invitations::health::check(
                addr,
                &service,
                std::time::Duration::from_millis(timeout_ms),
                tls.as_ref(),
            )
            .await?;
            println!("{service}: {status}");
            if status != "SERVING" {
                return Err(format!("{service} is {status}").into());
            }
        }
        Command::MintToken {
            sub,
            enterprise,
            capabilities,
            ttl_secs,
        } => {
            println!(
                "{}",
                dev::mint_token(&cli.config, sub, enterprise, &capabilities, ttl_secs)?
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
