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
    /// Folder indexes (nss-mapper layout, docs/index-format.md): export this
    /// store's paths with their locators, import a folder into this node's
    /// mapper, summarise a folder.
    #[command(subcommand)]
    Index(IndexCmd),
    /// Check a config file and print the effective settings.
    CheckConfig {
        /// Config file.
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum IndexCmd {
    /// Write one YAML entry per NAR file of the selected store paths into
    /// DIR (unchanged entries are not rewritten).
    Export {
        /// The folder to write.
        dir: PathBuf,
        /// Config file: upstreams, trusted keys, store, [backends.*] for --publish.
        #[arg(long, env = "DISTRIBUTED_STORE_CONFIG")]
        config: Option<PathBuf>,
        /// Store to index instead of the config's (`local`, `local?root=DIR`).
        #[arg(long)]
        store: Option<String>,
        /// Only these store paths.
        #[arg(long, num_args = 1..)]
        paths: Vec<String>,
        /// Only the closures of these store paths.
        #[arg(long, num_args = 1..)]
        closure: Vec<String>,
        /// Keep only paths whose name matches one of these globs (`*`, `?`).
        #[arg(long)]
        include: Vec<String>,
        /// Drop paths whose name matches one of these globs.
        #[arg(long)]
        exclude: Vec<String>,
        /// Compression of NAR files generated for publishers: none, zstd, xz.
        #[arg(long, default_value = "zstd")]
        compression: String,
        /// Publish NAR files through these backends (comma-separated: ipfs, bittorrent, s3).
        #[arg(long, value_delimiter = ',')]
        publish: Vec<String>,
        /// Delete entries of paths this run did not select.
        #[arg(long)]
        prune: bool,
        /// Parallel narinfo requests / NAR generations.
        #[arg(long, default_value_t = 64)]
        jobs: usize,
    },
    /// Copy the valid entries of SRC into this node's import folder
    /// (<stateDirectory>/index), which its mapper reads.
    Import {
        /// The folder to import (e.g. a git checkout).
        src: PathBuf,
        /// Config file (stateDirectory, trusted keys).
        #[arg(long, env = "DISTRIBUTED_STORE_CONFIG")]
        config: Option<PathBuf>,
        /// Import into this folder instead.
        #[arg(long)]
        into: Option<PathBuf>,
    },
    /// Summarise a folder: entries, paths, locators by scheme, invalid files.
    Stats {
        /// The folder.
        dir: PathBuf,
        /// Config file: also count entries without a trusted signature.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

fn index(cmd: IndexCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        IndexCmd::Export {
            dir,
            config,
            store,
            paths,
            closure,
            include,
            exclude,
            compression,
            publish,
            prune,
            jobs,
        } => {
            let compression = match compression.as_str() {
                "none" | "zstd" | "xz" => ds_core::Compression::from_name(&compression),
                other => anyhow::bail!("--compression {other}: use none, zstd or xz"),
            };
            let opts = ds_cli::index::ExportOptions {
                dir,
                config,
                store,
                paths,
                closure,
                include,
                exclude,
                compression,
                publish,
                prune,
                jobs,
                extra_publishers: Vec::new(),
            };
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let report = rt.block_on(ds_cli::index::export(&opts))?;
            println!("{report}");
            Ok(if report.failed > 0 {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        IndexCmd::Import { src, config, into } => {
            let (dest, r) = ds_cli::index::import(&src, &config, into.as_deref())?;
            println!(
                "imported into {}: written {}, unchanged {}, invalid {}, without a trusted signature {}",
                dest.display(),
                r.written,
                r.unchanged,
                r.invalid,
                r.untrusted
            );
            Ok(ExitCode::SUCCESS)
        }
        IndexCmd::Stats { dir, config } => {
            print!("{}", ds_cli::index::stats(&dir, &config)?);
            Ok(ExitCode::SUCCESS)
        }
    }
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
            Cmd::Index(cmd) => {
                ds_runtime::logging::init("distributed-store");
                index(cmd)
            }
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
