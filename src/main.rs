//! The `tessera` binary: parse the command line, load settings, start logging, run.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use std::sync::Arc;

use tessera::config::Settings;
use tessera::crypto::keys::{KeyAlg, KeyMaterial};
use tessera::domain::SystemClock;
use tessera::service::accounts::grant_role;
use tessera::service::keyring::state_at;
use tessera::service::AccountError;
use tessera::startup::{open_key_ring, Application};
use tessera::store::keys::KeyRecord;
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
    /// Manage signing keys directly in the database.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// List every key with its state and timestamps.
    List,
    /// Start a rotation: a new key is published now and signs after the publish lead.
    Rotate {
        /// ES256, EdDSA or RS256 (default: keys.algorithm).
        #[arg(long)]
        alg: Option<String>,
        /// Import this PEM private key (PKCS#8, or PKCS#1 for RSA) instead of generating one.
        #[arg(long, requires = "alg")]
        pem: Option<PathBuf>,
    },
    /// Revoke a key at once (compromise); a fresh key signs if it was the signing key.
    Revoke { kid: String },
    /// Re-seal every private key under the current KEK (after a KEK rotation).
    Rewrap,
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
    // The service logs to stdout; other commands keep stdout for their own output.
    let serving = matches!(cli.command, Command::Serve);
    tessera::telemetry::init(&settings.log, !serving);
    match run(cli.command, settings) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            if serving {
                tracing::error!(error = %message, "tessera failed");
            }
            eprintln!("tessera: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command, settings: Settings) -> Result<(), String> {
    match command {
        Command::Serve => serve(settings),
        Command::Migrate => {
            let applied = store::migrate(&settings.database.url).map_err(|e| e.to_string())?;
            let list = if applied.is_empty() {
                String::new()
            } else {
                format!(": {}", applied.join(", "))
            };
            println!("applied {} migration(s){list}", applied.len());
            Ok(())
        }
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
                    AccountError::Invalid(fields) => fields
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
        Command::Keys { command } => run_async(keys(command, settings)),
    }
}

async fn keys(command: KeysCommand, settings: Settings) -> Result<(), String> {
    let (_, ring) = open_key_ring(&settings, Arc::new(SystemClock))
        .await
        .map_err(|e| e.to_string())?;
    let parse_alg = |alg: Option<String>| -> Result<Option<KeyAlg>, String> {
        alg.map(|a| {
            KeyAlg::parse(&a).map_err(|_| format!("--alg {a}: must be ES256, EdDSA or RS256"))
        })
        .transpose()
    };
    let show = |r: &KeyRecord, state: &str| {
        let opt = |t: Option<i64>| t.map_or_else(|| "-".to_owned(), |t| t.to_string());
        println!(
            "{}  {:<6} {:<8} created {} activates {} retires {} removes {} revoked {}  kek {}",
            r.kid,
            r.alg,
            state,
            r.created_at,
            r.activates_at,
            opt(r.retires_at),
            opt(r.removes_at),
            opt(r.revoked_at),
            r.kek_id
        );
    };
    let t = ring.now();
    let changes = !matches!(command, KeysCommand::List);
    match command {
        KeysCommand::List => {
            for (r, state) in ring.list().await.map_err(|e| e.to_string())? {
                show(&r, state.as_str());
            }
        }
        KeysCommand::Rotate { alg, pem } => {
            let alg = parse_alg(alg)?;
            let record = match (pem, alg) {
                (Some(path), Some(alg)) => {
                    let text = zeroize::Zeroizing::new(
                        std::fs::read_to_string(&path)
                            .map_err(|e| format!("{}: {e}", path.display()))?,
                    );
                    let material = KeyMaterial::from_pem(alg, &text)
                        .map_err(|e| format!("{}: {e}", path.display()))?;
                    ring.rotate_to(material, "cli").await
                }
                (_, alg) => ring.rotate(alg, "cli").await,
            }
            .map_err(|e| e.to_string())?;
            show(&record, state_at(&record, t).as_str());
        }
        KeysCommand::Revoke { kid } => {
            let outcome = ring.revoke(&kid, "cli").await.map_err(|e| e.to_string())?;
            if outcome.already_revoked {
                println!("already revoked");
            }
            show(&outcome.revoked, "revoked");
            if let Some(r) = outcome.replacement {
                show(&r, state_at(&r, t).as_str());
            }
        }
        KeysCommand::Rewrap => {
            let moved = ring.rewrap("cli").await.map_err(|e| e.to_string())?;
            println!("re-sealed {moved} key(s) under the current KEK");
        }
    }
    announce_to_replicas(&settings, changes).await;
    Ok(())
}

/// Tells running replicas (through Redis, when configured) to re-read the keys now rather
/// than at their next `keys.reload_interval`.
async fn announce_to_replicas(settings: &Settings, changed: bool) {
    if !changed {
        return;
    }
    match tessera::startup::redis_connection(settings) {
        Ok(Some((_, conn))) => match tessera::cluster::announce(&conn).await {
            Ok(()) => println!("announced to running replicas"),
            Err(e) => eprintln!("could not announce over Redis ({e}); running replicas pick the change up within keys.reload_interval"),
        },
        Ok(None) => println!("running replicas pick the change up within keys.reload_interval (no Redis configured)"),
        Err(e) => eprintln!("{e}"),
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
