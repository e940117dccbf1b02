//! A private, daemonless Nix store for tests (Debian nix-bin 2.8, root):
//! a chroot store `local?root=DIR/root` (logical /nix/store) with its own
//! config and XDG dirs, and toy derivations built offline with the
//! sandbox's `/bin/sh` = static busybox. Never touches the host's store.

#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use ds_store::StoreUri;

/// Print why and return from the test when `nix-store` is not installed.
#[macro_export]
macro_rules! require_nix {
    () => {
        if !$crate::common::nix_available() {
            eprintln!("skipping: nix-store is not installed (Debian: apt-get install nix-bin busybox-static)");
            return;
        }
    };
}

pub fn nix_available() -> bool {
    Command::new("nix-store")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Derivations used by the tests. `tree` has nested directories, an
/// executable, empty file and directory, symlinks (relative, absolute,
/// escaping the store, into another store path) and a file larger than one
/// 64 KiB chunk; `link` is a store path that is itself a symlink.
const FIXTURE: &str = r#"
{ salt ? "" }:
let
  mk = name: script: derivation {
    inherit name salt;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" script ];
  };
  leaf = mk "tb-leaf" ''echo "leaf data ${salt}" > $out'';
  lib  = mk "tb-lib"  ''mkdir -p $out/share; echo "lib uses ${leaf}" > $out/share/lib.txt'';
  app  = mk "tb-app"  ''
    mkdir -p $out/bin
    printf '#!/bin/sh\ncat ${lib}/share/lib.txt ${leaf}\n' > $out/bin/tb-app
    chmod 555 $out/bin/tb-app
  '';
  tree = mk "tb-tree" ''
    mkdir -p $out/a/b/c $out/bin $out/empty-dir
    echo nested > $out/a/b/c/deep.txt
    printf "" > $out/empty-file
    printf 12345678 > $out/eight
    printf '#!/bin/sh\necho hi\n' > $out/bin/run
    chmod 555 $out/bin/run
    ln -s a/b $out/link-rel
    ln -s /etc/passwd $out/link-abs
    ln -s ../../../../../../escape $out/a/b/link-up
    ln -s ${leaf} $out/link-store
    touch $out/Z $out/_ $out/a.b $out/a-
    i=0
    while [ $i -lt 6000 ]; do echo "line $i of a file larger than one chunk"; i=$((i+1)); done > $out/big.txt
  '';
  link = mk "tb-link" ''ln -s /etc/passwd $out'';
  # a file name that is not UTF-8 (byte 0xff): valid for Nix, served byte for byte
  badname = mk "tb-badname" ''mkdir $out; echo a > $out/a; echo x > "$out/$(printf '\377')"; echo z > $out/z'';
in { inherit leaf lib app tree link badname; }
"#;

/// One private store in a temporary directory (removed on drop).
pub struct NixEnv {
    dir: tempfile::TempDir,
}

impl NixEnv {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("ds-store-test-")
            .tempdir()
            .expect("temp dir");
        // Readable by the unprivileged reader test (tempdir makes it 0700).
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        for sub in [
            "root",
            "etc",
            "xdg/cache",
            "xdg/config",
            "xdg/data",
            "xdg/state",
        ] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        std::fs::write(dir.path().join("fixture.nix"), FIXTURE).unwrap();
        NixEnv { dir }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    pub fn uri(&self) -> StoreUri {
        StoreUri::Chroot(self.root())
    }

    pub fn db_dir(&self) -> PathBuf {
        self.root().join("nix/var/nix/db")
    }

    /// A command confined to this store (as testbed/nix-env.sh sets up).
    pub fn cmd(&self, program: &str) -> Command {
        let d = self.dir.path();
        let mut c = Command::new(program);
        c.env(
            "NIX_REMOTE",
            format!("local?root={}", self.root().display()),
        )
        .env("NIX_CONF_DIR", d.join("etc"))
        .env("XDG_CACHE_HOME", d.join("xdg/cache"))
        .env("XDG_CONFIG_HOME", d.join("xdg/config"))
        .env("XDG_DATA_HOME", d.join("xdg/data"))
        .env("XDG_STATE_HOME", d.join("xdg/state"))
        .env(
            "NIX_CONFIG",
            "experimental-features = nix-command\n\
                 build-users-group =\n\
                 sandbox = true\n\
                 sandbox-paths = /bin/sh=/bin/busybox\n\
                 substituters =\n\
                 require-sigs = true\n\
                 fallback = false\n",
        )
        .stdin(Stdio::null());
        for var in [
            "http_proxy",
            "https_proxy",
            "ftp_proxy",
            "all_proxy",
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "FTP_PROXY",
            "ALL_PROXY",
            "NIX_PATH",
        ] {
            c.env_remove(var);
        }
        c
    }

    /// Run, panic with stderr on failure, return stdout.
    pub fn run(&self, program: &str, args: &[&str]) -> Vec<u8> {
        let out = self.cmd(program).args(args).output().expect(program);
        check(program, args, &out);
        out.stdout
    }

    pub fn run_str(&self, program: &str, args: &[&str]) -> String {
        String::from_utf8(self.run(program, args))
            .unwrap()
            .trim()
            .to_string()
    }

    /// Build an attribute of the fixture; returns its store path.
    pub fn build(&self, attr: &str) -> String {
        let fixture = self.dir.path().join("fixture.nix");
        self.run_str(
            "nix-build",
            &[
                fixture.to_str().unwrap(),
                "-A",
                attr,
                "--no-out-link",
                "--quiet",
            ],
        )
    }

    /// `nix-store --add` a new file with these contents (a CA path).
    pub fn add_file(&self, name: &str, contents: &[u8]) -> String {
        let src = self.dir.path().join("src").join(name);
        std::fs::create_dir_all(src.parent().unwrap()).unwrap();
        std::fs::write(&src, contents).unwrap();
        self.run_str("nix-store", &["--add", src.to_str().unwrap()])
    }

    /// `nix path-info --json` of these paths (or `--all`).
    pub fn path_info_json(&self, args: &[&str]) -> Json {
        let mut a = vec!["path-info", "--json"];
        a.extend_from_slice(args);
        Json::parse(&self.run_str("nix", &a))
    }
}

fn check(program: &str, args: &[&str], out: &Output) {
    assert!(
        out.status.success(),
        "{program} {args:?} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Hash part of a store path string.
pub fn hash_of(path: &str) -> ds_core::StorePathHash {
    let base = path.strip_prefix("/nix/store/").expect(path);
    ds_core::StorePathHash::parse(&base[..32]).unwrap()
}

/// Just enough JSON to read `nix path-info --json` (no dependency for it).
#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

impl Json {
    pub fn parse(s: &str) -> Json {
        let mut p = Parser {
            s: s.as_bytes(),
            i: 0,
        };
        let v = p.value();
        p.ws();
        assert_eq!(p.i, s.len(), "trailing data in JSON: {s}");
        v
    }

    pub fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Obj(kv) => kv.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn str(&self) -> Option<&str> {
        match self {
            Json::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn arr(&self) -> &[Json] {
        match self {
            Json::Arr(a) => a,
            other => panic!("not an array: {other:?}"),
        }
    }

    pub fn u64(&self) -> u64 {
        match self {
            Json::Num(n) => *n as u64,
            other => panic!("not a number: {other:?}"),
        }
    }
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) {
        self.ws();
        assert_eq!(
            self.s.get(self.i),
            Some(&c),
            "JSON: expected {:?} at {}",
            c as char,
            self.i
        );
        self.i += 1;
    }

    fn value(&mut self) -> Json {
        self.ws();
        match self.s[self.i] {
            b'{' => {
                self.i += 1;
                let mut kv = Vec::new();
                self.ws();
                if self.s[self.i] == b'}' {
                    self.i += 1;
                    return Json::Obj(kv);
                }
                loop {
                    self.ws();
                    let k = self.string();
                    self.eat(b':');
                    kv.push((k, self.value()));
                    self.ws();
                    self.i += 1;
                    if self.s[self.i - 1] == b'}' {
                        return Json::Obj(kv);
                    }
                }
            }
            b'[' => {
                self.i += 1;
                let mut a = Vec::new();
                self.ws();
                if self.s[self.i] == b']' {
                    self.i += 1;
                    return Json::Arr(a);
                }
                loop {
                    a.push(self.value());
                    self.ws();
                    self.i += 1;
                    if self.s[self.i - 1] == b']' {
                        return Json::Arr(a);
                    }
                }
            }
            b'"' => Json::Str(self.string()),
            b't' => self.word("true", Json::Bool(true)),
            b'f' => self.word("false", Json::Bool(false)),
            b'n' => self.word("null", Json::Null),
            _ => {
                let start = self.i;
                while self.i < self.s.len() && b"+-.eE0123456789".contains(&self.s[self.i]) {
                    self.i += 1;
                }
                let text = std::str::from_utf8(&self.s[start..self.i]).unwrap();
                Json::Num(
                    text.parse()
                        .unwrap_or_else(|_| panic!("JSON number {text:?}")),
                )
            }
        }
    }

    fn word(&mut self, w: &str, v: Json) -> Json {
        assert!(
            self.s[self.i..].starts_with(w.as_bytes()),
            "JSON at {}",
            self.i
        );
        self.i += w.len();
        v
    }

    fn string(&mut self) -> String {
        self.eat(b'"');
        let mut out = Vec::new();
        loop {
            let c = self.s[self.i];
            self.i += 1;
            match c {
                b'"' => return String::from_utf8(out).unwrap(),
                b'\\' => {
                    let e = self.s[self.i];
                    self.i += 1;
                    match e {
                        b'n' => out.push(b'\n'),
                        b't' => out.push(b'\t'),
                        b'r' => out.push(b'\r'),
                        b'b' => out.push(8),
                        b'f' => out.push(12),
                        b'u' => {
                            let hex = std::str::from_utf8(&self.s[self.i..self.i + 4]).unwrap();
                            self.i += 4;
                            let ch = char::from_u32(u32::from_str_radix(hex, 16).unwrap()).unwrap();
                            out.extend_from_slice(ch.to_string().as_bytes());
                        }
                        other => out.push(other),
                    }
                }
                c => out.push(c),
            }
        }
    }
}
