//! Plumbing shared by every distributed-store service: the one TOML config
//! file, logging (journald under systemd, stderr otherwise), systemd
//! readiness/watchdog notification and socket activation.

pub mod config;
pub mod logging;
pub mod systemd;

pub use config::{Config, ConfigError};
