//! The `tessera` binary: parse the command line, load settings, start logging, run.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tessera::config::Settings;
use tessera::service::accounts::grant_role;
use tessera::startup::Application;
use tessera::store::{self, Db};

#[derive(Parser)]
#[command(
    name = "tessera",
    version,
    about = "Identity and token-issuing service"
)]
struct Cli {
    /// TOML configuration file (also `TESSERA_CONFIG`); `TESSERA__SECTION__KEY` overrides it.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP service.
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Inspect the configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Administer users directly in the database (works before any admin exists).
    Users {
        #[command(subcommand)]
        command: UsersCommand,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate and print the effective configuration, secrets redacted.
    Check,
}

#[derive(Subcommand)]
enum UsersCommand {
    /// Grant a role (e.g. `admin`) to the account with this e-mail.
    GrantRole { email: String, role: String },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("tessera: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    tessera::telemetry::init(&settings.log);
    let result = match cli.command {
        Command::Serve => serve(settings),
        Command::Migrate => store::migrate(&settings.database.url)
            .map(|applied| {
                println!(
                    "applied {} migration(s){}",
                    applied.len(),
                    if applied.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", applied.join(", "))
                    }
                );
            })
            .map_err(|e| e.to_string()),
        Command::Config {
            command: ConfigCommand::Check,
        } => {
            print!("{}", settings.redacted_toml());
            println!("# configuration is valid");
            Ok(())
        }
        Command::Users {
            command: UsersCommand::GrantRole { email, role },
        } => run_async(async move {
            let db = Db::connect(&settings.database).map_err(|e| e.to_string())?;
            let granted = grant_role(&db, &email, &role, "cli")
                .await
                .map_err(|e| match e {
                    tessera::service::AccountError::Invalid(fields) => fields
                        .iter()
                        .map(|f| format!("{}: {}", f.field, f.message))
                        .collect::<Vec<_>>()
                        .join("; "),
                    other => other.to_string(),
                })?;
            println!(
                "{}",
                if granted {
                    "role granted"
                } else {
                    "the user already had this role"
                }
            );
            Ok(())
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            tracing::error!(error = %message, "tessera failed");
            eprintln!("tessera: {message}");
            ExitCode::FAILURE
        }
    }
}

fn serve(settings: Settings) -> Result<(), String> {
    actix_web::rt::System::new().block_on(async move {
        let app = Application::build(settings)
            .await
            .map_err(|e| e.to_string())?;
        app.run_until_stopped().await.map_err(|e| e.to_string())
    })
}

fn run_async(fut: impl std::future::Future<Output = Result<(), String>>) -> Result<(), String> {
    actix_web::rt::System::new().block_on(fut)
}
