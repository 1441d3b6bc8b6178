//! The `sealpost` command: serve, migrate, keygen, config, invite, approve, healthcheck, and the day-two
//! commands (backup, restore, export, import, stats).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sealpost::config::{Config, Loaded};
use sealpost::domain::Aci;
use sealpost::storage::Storage;

/// mimalloc instead of the system allocator: allocation was a sixth of the server's CPU per message
/// under load (docs/benchmarks.md), and mimalloc's thread-local free lists cut that for small buffers.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "sealpost", version, about = "Relay server for end-to-end-encrypted messengers")]
struct Cli {
    /// Optional TOML config file (the environment always wins over it). Also `SEALPOST_CONFIG`.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default).
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Create any missing server key files and print the sealed-sender trust root's public key.
    Keygen,
    /// Print the effective configuration (secrets masked) and where each value came from.
    Config {
        /// Print the documentation table of every setting instead.
        #[arg(long)]
        markdown: bool,
    },
    /// Manage invite codes.
    Invite {
        #[command(subcommand)]
        command: InviteCommand,
    },
    /// Approve an account waiting under the `approval` registration policy.
    Approve { aci: String },
    /// Ask a running server's `/healthz` (on SEALPOST_LISTEN, over TLS when a certificate is configured)
    /// and exit 0 when it answers 200: the container health check, with no curl in the image.
    Healthcheck,
    /// Write a consistent copy of the embedded database, the key files and the attachments directory to
    /// one archive (mode 0600), while the server runs.
    Backup { file: PathBuf },
    /// Restore a backup archive into the configured (empty) data directory; the server must be stopped.
    Restore {
        file: PathBuf,
        /// Replace what the data directory and key files hold.
        #[arg(long)]
        force: bool,
    },
    /// Write a consistent copy of the embedded database for `sealpost import` (the server may run).
    Export { file: PathBuf },
    /// Import an export into the configured scale-out Postgres and Redis (idempotent, resumable).
    Import {
        file: PathBuf,
        /// The embedded attachments directory: copy its objects into the configured object store.
        #[arg(long)]
        attachments_dir: Option<PathBuf>,
    },
    /// Print aggregate counts (no identifiers): accounts, devices, queues, prekey pool levels, attachments.
    Stats {
        /// Print JSON instead of `name value` lines.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum InviteCommand {
    /// Create a single-use invite code.
    Create {
        /// Lifetime in seconds (default: SEALPOST_INVITE_TTL_SECONDS).
        #[arg(long)]
        ttl_seconds: Option<u64>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let loaded = match Config::load(cli.config.as_deref(), std::env::vars()) {
        Ok(loaded) => loaded,
        Err(err) => {
            eprintln!("configuration error: {err}");
            return ExitCode::from(2);
        }
    };
    sealpost::telemetry::init_logging(&loaded.config);
    for warning in &loaded.warnings {
        tracing::warn!("{warning}");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command.unwrap_or(Command::Serve), loaded)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command, loaded: Loaded) -> Result<(), Box<dyn std::error::Error>> {
    let config = loaded.config;
    match command {
        Command::Serve => serve(config).await,
        Command::Backup { .. }
        | Command::Restore { .. }
        | Command::Export { .. }
        | Command::Import { .. }
        | Command::Stats { .. } => upkeep(command, config).await,
        Command::Migrate => {
            let ran = Storage::migrate(&config).await?;
            println!("applied {ran} migration(s)");
            Ok(())
        }
        Command::Keygen => {
            let created = sealpost::server_keys::generate_missing(&config)?;
            for path in &created {
                println!("created {}", path.display());
            }
            let keys = sealpost::server_keys::ServerKeys::load(&config)?;
            println!("trust root public key (pin this in clients): {}", keys.trust_root_public_b64());
            Ok(())
        }
        Command::Config { markdown } => {
            if markdown {
                println!("| variable | default | meaning |\n| --- | --- | --- |");
                for field in Config::fields() {
                    let secret =
                        if field.secret { format!(" Secret: also `{}_FILE`.", field.env) } else { String::new() };
                    println!("| `{}` | `{}` | {}{} |", field.env, field.default, field.doc, secret);
                }
            } else {
                print!("{}", config.describe(&loaded.sources));
            }
            Ok(())
        }
        Command::Invite { command: InviteCommand::Create { ttl_seconds } } => {
            let tasks = sealpost::shutdown::Tasks::default();
            let storage = Storage::connect(&config, &tasks).await?;
            let ttl = ttl_seconds.unwrap_or(config.invite_ttl_seconds);
            let code = sealpost::accounts::service::create_invite(&storage, ttl).await?;
            println!("{code}");
            Ok(())
        }
        Command::Healthcheck => healthcheck(&config).await,
        Command::Approve { aci } => {
            let aci = Aci::parse(&aci).ok_or("not an aci (UUID)")?;
            let tasks = sealpost::shutdown::Tasks::default();
            let storage = Storage::connect(&config, &tasks).await?;
            if storage.accounts.approve(aci).await? {
                // Scale-out instances forget their cached view at once; an embedded server notices within
                // SEALPOST_DIRECTORY_CACHE_SECONDS.
                storage.bus.publish_invalidation(aci).await?;
                println!("approved");
                Ok(())
            } else {
                Err("no such account".into())
            }
        }
    }
}

async fn upkeep(command: Command, config: Config) -> Result<(), Box<dyn std::error::Error>> {
    use sealpost::upkeep::{archive, stats, transfer};
    match command {
        Command::Backup { file } => {
            let started = std::time::Instant::now();
            let s = archive::backup(&config, &file).await?;
            println!(
                "backup written: {} bytes (database {} bytes, {} key files, {} attachment objects) in {} ms",
                s.archive_bytes,
                s.database_bytes,
                s.key_files,
                s.objects,
                started.elapsed().as_millis()
            );
        }
        Command::Restore { file, force } => {
            let s = archive::restore(&config, &file, force)?;
            println!(
                "restored: database {} bytes, {} key files, {} attachment objects",
                s.database_bytes, s.key_files, s.objects
            );
        }
        Command::Export { file } => {
            let bytes = transfer::export(&config, &file).await?;
            println!("export written: {bytes} bytes");
        }
        Command::Import { file, attachments_dir } => {
            let summary = transfer::import(&config, &file, attachments_dir.as_deref()).await?;
            let new: u64 = summary.steps.iter().map(|(_, i)| i.new).sum();
            let existing: u64 = summary.steps.iter().map(|(_, i)| i.existing).sum();
            println!("import done: {new} records written, {existing} already there");
        }
        Command::Stats { json } => {
            let tasks = sealpost::shutdown::Tasks::default();
            let storage = Storage::connect(&config, &tasks).await?;
            let figures = stats::collect(&storage, sealpost::domain::now_millis()).await;
            tasks.stop(std::time::Duration::from_secs(5)).await;
            let figures = figures?;
            if json {
                println!("{}", serde_json::to_string_pretty(&figures)?);
            } else {
                println!("{}", figures.text());
            }
        }
        _ => return Err("not a day-two command".into()),
    }
    Ok(())
}

async fn serve(config: Config) -> Result<(), Box<dyn std::error::Error>> {
    // A certificate that does not load stops the start here, before anything listens.
    let scheme = match sealpost::http::tls::Tls::from_config(&config)? {
        Some(_) => "https",
        None => "http",
    };
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    let metrics_listener = tokio::net::TcpListener::bind(config.metrics_listen).await?;
    let app = sealpost::build_app(config).await?;
    tracing::info!(backend = app.storage.kind, "metrics on http://{}/metrics", metrics_listener.local_addr()?);
    tracing::info!(backend = app.storage.kind, "listening on {scheme}://{}", listener.local_addr()?);
    sealpost::serve(app, listener, metrics_listener, shutdown_signal()).await?;
    Ok(())
}

async fn healthcheck(config: &Config) -> Result<(), Box<dyn std::error::Error>> {
    let mut address = config.listen;
    if address.ip().is_unspecified() {
        address.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let tls = config.tls_cert_file.is_some();
    let url = format!("{}://{address}/healthz", if tls { "https" } else { "http" });
    // The question is whether this server answers, not who it is: the certificate names the public host,
    // not the loopback address asked here.
    let client = reqwest::Client::builder()
        .danger_accept_invalid_certs(tls)
        .timeout(std::time::Duration::from_secs(5))
        .build()?;
    let status = client.get(&url).send().await?.status();
    if !status.is_success() {
        return Err(format!("{url} answered {status}").into());
    }
    println!("healthy");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
