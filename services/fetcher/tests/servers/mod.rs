//! The real servers of tests/backends/servers.sh (kubo nodes; opentracker
//! and aria2 engines), started under a temporary directory and stopped by
//! PID when dropped.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;

/// Servers started by `servers.sh <kind> DIR`.
pub struct Servers {
    pub dir: tempfile::TempDir,
    pub env: HashMap<String, String>,
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/backends/servers.sh")
}

impl Servers {
    /// Start `kind` (`ipfs` or `bt`). `None`, after saying so loudly on
    /// stderr, when a server binary is missing (servers.sh exit status 3):
    /// the caller skips. Any other failure panics.
    pub fn start(kind: &str) -> Option<Servers> {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = Command::new("bash")
            .arg(script())
            .arg(kind)
            .arg(dir.path())
            .output()
            .expect("run servers.sh");
        if out.status.code() == Some(3) {
            eprintln!(
                "\n*** SKIPPED: {kind} servers unavailable: {} ***\n",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        if !out.status.success() {
            // Stop whatever did start.
            let _ = Command::new("bash")
                .arg(script())
                .arg("stop")
                .arg(dir.path())
                .status();
            panic!(
                "servers.sh {kind} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let env = std::fs::read_to_string(dir.path().join("env")).expect("env file");
        let env = env
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Some(Servers { dir, env })
    }

    /// A value from the env file.
    pub fn get(&self, key: &str) -> String {
        self.env
            .get(key)
            .unwrap_or_else(|| panic!("{key} not in servers.sh env"))
            .clone()
    }

    /// Run `servers.sh <cmd> DIR <args>`.
    pub fn run(&self, cmd: &str, args: &[&str]) {
        let st = Command::new("bash")
            .arg(script())
            .arg(cmd)
            .arg(self.dir.path())
            .args(args)
            .status()
            .expect("run servers.sh");
        assert!(st.success(), "servers.sh {cmd} {args:?} failed");
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .arg("stop")
            .arg(self.dir.path())
            .status();
    }
}
