//! The signing policy (`signPaths`) against real Nix (Debian nix-bin 2.8)
//! chroot stores: a path built here is signed; the same path substituted into
//! another store is refused with `NotBuiltHere` under the default and signed
//! under `signPaths = "all"`. Skips (saying why) when Nix is not installed.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use ds_core::SecretKey;
use ds_dbus::SignerError;
use ds_runtime::config::SignPaths;
use ds_runtime::service::Activity;
use ds_signer::{load_key, Signer};
use ds_store::{LocalStore, StoreUri};

const FIXTURE: &str = r#"
derivation {
  name = "signer-policy-leaf";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  args = [ "-c" "echo built by the signer policy test > $out" ];
}
"#;

fn nix_available() -> bool {
    Command::new("nix-store")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Run a Nix command confined to the chroot store `dir/<store>` (daemonless,
/// offline, own config and XDG dirs); panics with stderr on failure.
fn nix(dir: &Path, store: &str, args: &[&str]) -> String {
    let mut c = Command::new(args[0]);
    c.args(&args[1..])
        .env(
            "NIX_REMOTE",
            format!("local?root={}", dir.join(store).display()),
        )
        .env("NIX_CONF_DIR", dir.join("etc"))
        .env("XDG_CACHE_HOME", dir.join(store).join("xdg"))
        .env("XDG_CONFIG_HOME", dir.join("xdg-config"))
        .env("XDG_DATA_HOME", dir.join("xdg-data"))
        .env("XDG_STATE_HOME", dir.join("xdg-state"))
        .env(
            "NIX_CONFIG",
            "experimental-features = nix-command\n\
             build-users-group =\n\
             sandbox = true\n\
             sandbox-paths = /bin/sh=/bin/busybox\n\
             substituters =\n\
             require-sigs = true\n",
        )
        .env_remove("NIX_PATH")
        .stdin(Stdio::null());
    for var in [
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
    ] {
        c.env_remove(var);
    }
    let out = c.output().expect(args[0]);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

struct Stores {
    _dir: tempfile::TempDir,
    key: SecretKey,
    path: String,
    built: Arc<LocalStore>,
    substituted: Arc<LocalStore>,
}

/// Build one path in store `built`, publish it signed to a file:// cache,
/// substitute it from there into store `substituted`.
fn stores() -> Stores {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for sub in ["built", "substituted", "etc"] {
        std::fs::create_dir_all(d.join(sub)).unwrap();
    }
    std::fs::write(d.join("f.nix"), FIXTURE).unwrap();
    let (sec, publ) = (d.join("key.sec"), d.join("key.pub"));
    let s = |p: &PathBuf| p.to_str().unwrap().to_string();
    nix(
        d,
        "built",
        &[
            "nix-store",
            "--generate-binary-cache-key",
            "policy-1",
            &s(&sec),
            &s(&publ),
        ],
    );
    let path = nix(
        d,
        "built",
        &[
            "nix-build",
            &s(&d.join("f.nix")),
            "--no-out-link",
            "--quiet",
        ],
    );
    let cache = format!("file://{}", d.join("cache").display());
    let to = format!("{cache}?secret-key={}", sec.display());
    nix(d, "built", &["nix", "copy", "--to", &to, &path]);
    let trusted = std::fs::read_to_string(&publ).unwrap();
    nix(
        d,
        "substituted",
        &[
            "nix",
            "copy",
            "--from",
            &cache,
            "--option",
            "trusted-public-keys",
            trusted.trim(),
            &path,
        ],
    );
    let open = |name: &str| Arc::new(LocalStore::open(&StoreUri::Chroot(d.join(name))).unwrap());
    Stores {
        key: load_key(&sec).unwrap(),
        built: open("built"),
        substituted: open("substituted"),
        path,
        _dir: dir,
    }
}

fn signer(s: &Stores, store: &Arc<LocalStore>, policy: SignPaths) -> Signer {
    Signer::new(
        Some(s.key.clone()),
        store.clone(),
        "test store".into(),
        policy,
        Activity::new(),
    )
}

#[tokio::test]
async fn built_paths_only_by_default_all_when_configured() {
    if !nix_available() {
        eprintln!(
            "skipping: nix-store is not installed (Debian: apt-get install nix-bin busybox-static)"
        );
        return;
    }
    let s = stores();
    // The substituted copy holds the builder's signature (`nix copy --to`
    // signed it with the same key; ed25519 is deterministic): what the
    // signer must produce for this path.
    let info = s
        .substituted
        .path_info(&ds_core::StorePath::parse(&s.path).unwrap().hash().clone());
    let expected = info.unwrap().unwrap().sigs[0].to_string();

    let built_here = signer(&s, &s.built, SignPaths::Built);
    assert_eq!(
        built_here.sign_path(&s.path).await.unwrap(),
        expected,
        "built here: signed"
    );

    let default = signer(&s, &s.substituted, SignPaths::Built);
    match default.sign_path(&s.path).await {
        Err(SignerError::NotBuiltHere(msg)) => {
            assert!(msg.contains(&s.path) && msg.contains("signPaths"), "{msg}")
        }
        other => panic!("substituted path under signPaths = built: {other:?}"),
    }
    // Validity is still checked first: a path that is not here is not "not built here".
    let absent = "/nix/store/00000000000000000000000000000000-absent";
    assert!(matches!(
        default.sign_path(absent).await,
        Err(SignerError::PathNotValid(_))
    ));

    let all = signer(&s, &s.substituted, SignPaths::All);
    assert_eq!(
        all.sign_path(&s.path).await.unwrap(),
        expected,
        "signPaths = all: signed"
    );
}
