//! `distributed-store`: see the crate docs of `ds_cli`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// distributed-store: a peer-to-peer Nix binary cache.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the suite on this machine in the foreground, without systemd: a
    /// private dbus-daemon with the repo's policy and activation files, the
    /// proxy, and the signer on demand. Ctrl-C stops everything.
    Up {
        /// Config file (TOML; keys as the NixOS module's `settings`).
        #[arg(long, env = "DISTRIBUTED_STORE_CONFIG")]
        config: Option<PathBuf>,
        /// Directory for the bus socket and generated files (default: a fresh temporary directory).
        #[arg(long)]
        runtime_dir: Option<PathBuf>,
        /// Directory holding distributed-store-proxy and distributed-store-signer (default: next to this program).
        #[arg(long)]
        bindir: Option<PathBuf>,
    },
    /// Print what the services report over D-Bus (exit 1 if the proxy is not on the bus).
    Status {
        /// D-Bus address (default: the system bus, or $DBUS_SYSTEM_BUS_ADDRESS).
        #[arg(long)]
        bus: Option<String>,
    },
    /// Generate a Nix binary-cache signing key pair (like `nix-store --generate-binary-cache-key`).
    Keygen {
        /// Key name, e.g. "myfleet-1" (appears in every signature).
        name: String,
        /// Secret key file to create (mode 0600).
        secret_file: PathBuf,
        /// Public key file to create.
        public_file: PathBuf,
    },
    /// Check a config file and print the effective settings.
    CheckConfig {
        /// Config file.
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result =
        match cli.cmd {
            Cmd::Up {
                config,
                runtime_dir,
                bindir,
            } => {
                ds_runtime::logging::init("distributed-store");
                ds_cli::up::up(ds_cli::up::UpOptions {
                    config,
                    runtime_dir,
                    bindir,
                })
                .map(|_| ExitCode::SUCCESS)
            }
            Cmd::Status { bus } => status(bus),
            Cmd::Keygen {
                name,
                secret_file,
                public_file,
            } => ds_cli::keygen::keygen(&name, &secret_file, &public_file).map(|public| {
                println!("{public}");
                ExitCode::SUCCESS
            }),
            Cmd::CheckConfig { config } => ds_runtime::Config::load(&config)
                .map_err(Into::into)
                .map(|c| {
                    println!("{c:#?}");
                    ExitCode::SUCCESS
                }),
        };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("distributed-store: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn status(bus: Option<String>) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let conn = ds_cli::status::connect(bus.as_deref()).await?;
        let (text, healthy) = ds_cli::status::report(&conn).await?;
        print!("{text}");
        Ok(if healthy {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        })
    })
}
