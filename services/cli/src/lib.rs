//! `distributed-store`: the command line of distributed-store.
//!
//! - `up`: the whole suite on this machine without systemd: a private
//!   `dbus-daemon` configured with the repo's own policy and activation
//!   files, then the proxy; the signer is D-Bus-activated on first use.
//! - `status`: what the services report over D-Bus.
//! - `keygen`: a Nix binary-cache key pair.
//! - `index`: export, import and summarise folder indexes (`docs/index-format.md`).

pub mod index;
pub mod keygen;
pub mod status;
pub mod up;
