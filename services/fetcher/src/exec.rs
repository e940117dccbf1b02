//! `exec:` locators: an external program writes the NAR file to stdout
//! (`[backends.command] command = ["/path/prog", "args"…]`). For the locator
//! `exec:<value>#compression=…&fileHash=…&fileSize=…` the fetcher runs
//! `prog args… <value>` and reads the file from its stdout through
//! [`crate::nar_file`] (decompression, FileSize/FileHash checks; NarHash is
//! checked by the fetcher as for every source).
//!
//! - The child runs in its own process group; when the fetch is abandoned
//!   (the fetcher dropped the stream: a deadline, a stall, too many bytes,
//!   a faster source won), the whole group is killed with SIGKILL.
//! - A pipe cannot seek: the file is always read from byte 0 and a broken
//!   transfer is not resumed ([`crate::Opened::start`] is 0).
//! - stderr is kept (first [`STDERR_CAP`] bytes) and logged when the child
//!   ends.
//! - A non-zero exit status is a failure ([`BackendError::BadData`]: the
//!   program said its output is not to be trusted) even when the bytes
//!   looked complete.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use ds_core::{Locator, NarInfo};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};

use crate::backend::{Backend, BackendError, ByteStream, Opened};
use crate::nar_file::{self, FileBytes, FileSource};

/// How much of a child's stderr is kept for the log.
pub const STDERR_CAP: usize = 4096;

/// Default first-byte deadline of a command.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(2);

/// How long a child that closed stdout may take to exit.
const EXIT_WAIT: Duration = Duration::from_secs(5);

/// The backend for `exec:` locators.
pub struct CommandBackend {
    argv: Vec<String>,
    deadline: Duration,
}

impl CommandBackend {
    /// Run `argv` (program first) with the locator value appended; the
    /// first byte is expected within `deadline`.
    pub fn new(argv: Vec<String>, deadline: Duration) -> Self {
        CommandBackend { argv, deadline }
    }
}

impl Backend for CommandBackend {
    fn schemes(&self) -> &'static [&'static str] {
        &["exec"]
    }

    fn handles(&self, locator: &Locator) -> bool {
        !self.argv.is_empty() && nar_file::handles_file(locator, |v| !v.is_empty())
    }

    fn deadline(&self, _locator: &Locator) -> Duration {
        self.deadline
    }

    fn open(
        &self,
        locator: &Locator,
        _nar: &NarInfo,
        offset: u64,
    ) -> BoxFuture<'static, Result<Opened, BackendError>> {
        let (value, facts) = match nar_file::locator_file(
            locator,
            |v: &str| !v.is_empty() && !self.argv.is_empty(),
            "an exec",
        ) {
            Ok(parts) => parts,
            Err(e) => return futures::future::ready(Err(e)).boxed(),
        };
        let source = ExecFile {
            argv: self.argv.clone(),
            value,
        };
        nar_file::nar_from_file(Box::new(source), facts, offset)
    }
}

/// One run of the command.
struct ExecFile {
    argv: Vec<String>,
    value: String,
}

/// Kills the child's process group unless it ended on its own.
struct Group {
    child: Child,
    pgid: Option<i32>,
    done: bool,
}

impl Drop for Group {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if let Some(pgid) = self.pgid {
            kill_group(pgid);
        }
        // tokio reaps a killed child in the background (kill_on_drop).
    }
}

/// SIGKILL to every process in group `pgid`.
fn kill_group(pgid: i32) {
    let Some(pid) = rustix::process::Pid::from_raw(pgid).filter(|_| pgid > 1) else {
        return;
    };
    let r = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    tracing::debug!(pgid, ?r, "killed the command's process group");
}

impl FileSource for ExecFile {
    fn open_at(&mut self, _file_offset: u64) -> BoxFuture<'_, Result<FileBytes, BackendError>> {
        async move {
            let mut cmd = Command::new(&self.argv[0]);
            cmd.args(&self.argv[1..])
                .arg(&self.value)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .process_group(0)
                .kill_on_drop(true);
            let mut child = cmd
                .spawn()
                .map_err(|e| BackendError::Transport(format!("starting {}: {e}", self.argv[0])))?;
            let pgid = child.id().and_then(|p| i32::try_from(p).ok());
            let stdout = child.stdout.take().ok_or_else(|| {
                BackendError::Transport(format!("{}: no stdout pipe", self.argv[0]))
            })?;
            let stderr = Arc::new(Mutex::new(Vec::new()));
            if let Some(mut err) = child.stderr.take() {
                let keep = stderr.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = err.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        let mut k = keep.lock().unwrap_or_else(|p| p.into_inner());
                        let room = STDERR_CAP.saturating_sub(k.len());
                        k.extend_from_slice(&buf[..n.min(room)]);
                    }
                });
            }
            let name = format!("exec:{}", self.value);
            let group = Group {
                child,
                pgid,
                done: false,
            };
            let out = tokio_util::io::ReaderStream::with_capacity(stdout, 64 * 1024);
            let stream = read_then_wait(out, group, stderr, name);
            Ok(FileBytes {
                start: 0,
                stream,
                len: None,
            })
        }
        .boxed()
    }

    fn can_seek(&self) -> bool {
        false
    }

    fn describe(&self) -> String {
        format!("exec:{}", self.value)
    }
}

/// stdout's bytes; at its end, the exit status (non-zero: an error item).
fn read_then_wait(
    out: tokio_util::io::ReaderStream<tokio::process::ChildStdout>,
    group: Group,
    stderr: Arc<Mutex<Vec<u8>>>,
    name: String,
) -> ByteStream {
    struct State {
        out: tokio_util::io::ReaderStream<tokio::process::ChildStdout>,
        group: Group,
        stderr: Arc<Mutex<Vec<u8>>>,
        name: String,
    }
    let state = State {
        out,
        group,
        stderr,
        name,
    };
    futures::stream::unfold(Some(state), |state| async move {
        let mut s = state?;
        match s.out.next().await {
            Some(Ok(b)) => return Some((Ok::<Bytes, BackendError>(b), Some(s))),
            Some(Err(e)) => {
                let e = BackendError::Transport(format!("{}: reading stdout: {e}", s.name));
                return Some((Err(e), None));
            }
            None => {}
        }
        let status = tokio::time::timeout(EXIT_WAIT, s.group.child.wait()).await;
        let err = String::from_utf8_lossy(&s.stderr.lock().unwrap_or_else(|p| p.into_inner()))
            .trim()
            .to_string();
        match status {
            Ok(Ok(st)) if st.success() => {
                s.group.done = true;
                if !err.is_empty() {
                    tracing::info!(source = %s.name, "command stderr: {err}");
                }
                None
            }
            Ok(Ok(st)) => {
                s.group.done = true;
                tracing::warn!(source = %s.name, "command failed ({st}); stderr: {err}");
                let e = BackendError::BadData(format!("{}: command {st}: {err}", s.name));
                Some((Err(e), None))
            }
            Ok(Err(e)) => Some((
                Err(BackendError::Transport(format!("{}: wait: {e}", s.name))),
                None,
            )),
            Err(_) => Some((
                Err(BackendError::Transport(format!(
                    "{}: closed stdout but did not exit within {EXIT_WAIT:?}",
                    s.name
                ))),
                None,
            )),
        }
    })
    .boxed()
}
