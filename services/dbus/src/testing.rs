//! Test support for the round-trip tests of each service
//! (`services/<crate>/tests/dbus_roundtrip.rs`), behind the `testing`
//! feature (enabled only as a dev-dependency, so no service binary carries it).
//!
//! The servers (`#[interface]` impls in each service) and the client proxies
//! (`#[proxy]` traits in this crate) are written by hand, twice. A test
//! serves the real server object on a peer-to-peer connection
//! ([`serve_p2p`]), calls every member through the real client proxy while a
//! [`WireLog`] writes down what travelled, and then [`assert_no_drift`]
//! compares three descriptions of the interface that must be equal:
//!
//! - the table the test states (one line per member, e.g.
//!   `method Sign(s) -> s`, `property PublicKey s read`), whose member names
//!   must be exactly those of the client trait in this crate's source
//!   (read from `lib.rs` itself, so a member added to the trait only fails);
//! - what the server object says about itself (`Introspect` on the p2p
//!   connection), so a member added, renamed or retyped on the server fails;
//! - what the client proxy actually sent and got back (`WireLog`): argument
//!   and reply signatures of every method, the type of every property read,
//!   so the table cannot say something the client does not do, and a member
//!   the test forgot to exercise fails.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use zbus::message::Type;
use zbus::object_server::Interface;
use zbus::{connection, Connection, MessageStream};

/// The two ends of a peer-to-peer D-Bus connection (no bus daemon).
pub struct P2p {
    /// The end serving the object.
    pub server: Connection,
    /// The end the client proxies use.
    pub client: Connection,
}

/// Serve `object` at `path` on one end of a fresh `UnixStream::pair()` and
/// connect the other end as a client (both handshakes run at once: each
/// waits for the other).
pub async fn serve_p2p<I: Interface>(path: &str, object: I) -> zbus::Result<P2p> {
    let (a, b) = tokio::net::UnixStream::pair().map_err(|e| zbus::Error::InputOutput(e.into()))?;
    let server = connection::Builder::unix_stream(a)
        .server(zbus::Guid::generate())?
        .p2p()
        .serve_at(path, object)?
        .build();
    let client = connection::Builder::unix_stream(b).p2p().build();
    let (server, client) = tokio::try_join!(server, client)?;
    Ok(P2p { server, client })
}

/// What the client proxy sent and got back on a [`P2p`] connection, for
/// one interface. Start it before the first call.
pub struct WireLog {
    state: Arc<Mutex<Wire>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

#[derive(Default)]
struct Wire {
    /// serial → (`method Name(in)` or `property Name`), as the server received it.
    calls: HashMap<NonZeroU32, String>,
    /// reply serial → Ok(body signature; for a property, the value's) or Err(error name).
    replies: HashMap<NonZeroU32, Result<String, String>>,
}

impl WireLog {
    /// Record calls to `interface` (and `Properties.Get` of its
    /// properties) arriving at `p2p.server`, and their replies arriving at
    /// `p2p.client`.
    pub fn start(p2p: &P2p, interface: &str) -> WireLog {
        let state = Arc::new(Mutex::new(Wire::default()));
        let mut calls = MessageStream::from(&p2p.server);
        let iface = interface.to_string();
        let st = state.clone();
        let on_server = tokio::spawn(async move {
            while let Some(Ok(msg)) = calls.next().await {
                let header = msg.header();
                if msg.message_type() != Type::MethodCall {
                    continue;
                }
                let serial = header.primary().serial_num();
                let (Some(i), Some(member)) = (header.interface(), header.member()) else {
                    continue;
                };
                let entry = if i.as_str() == iface {
                    // The body of several arguments is one structure: its
                    // members are the arguments (as introspection lists them).
                    format!(
                        "method {member}({})",
                        msg.body().signature().to_string_no_parens()
                    )
                } else if i.as_str() == "org.freedesktop.DBus.Properties"
                    && member.as_str() == "Get"
                {
                    match msg.body().deserialize::<(String, String)>() {
                        Ok((of, name)) if of == iface => format!("property {name}"),
                        _ => continue,
                    }
                } else {
                    continue;
                };
                lock(&st).calls.insert(serial, entry);
            }
        });
        let mut replies = MessageStream::from(&p2p.client);
        let st = state.clone();
        let on_client = tokio::spawn(async move {
            while let Some(Ok(msg)) = replies.next().await {
                let header = msg.header();
                let Some(serial) = header.reply_serial() else {
                    continue;
                };
                let reply = match msg.message_type() {
                    Type::MethodReturn => {
                        let body = msg.body();
                        // A property arrives as a variant: its type is the value's.
                        let sig = if body.signature().to_string() == "v" {
                            match body.deserialize::<zbus::zvariant::Value>() {
                                Ok(v) => format!("v:{}", v.value_signature()),
                                Err(_) => "v:?".to_string(),
                            }
                        } else {
                            body.signature().to_string_no_parens()
                        };
                        Ok(sig)
                    }
                    Type::Error => Err(header
                        .error_name()
                        .map(|n| n.to_string())
                        .unwrap_or_default()),
                    _ => continue,
                };
                lock(&st).replies.insert(serial, reply);
            }
        });
        WireLog {
            state,
            tasks: vec![on_server, on_client],
        }
    }

    /// Wait (up to 5 s) until every recorded call has its reply recorded.
    async fn settle(&self) {
        for _ in 0..500 {
            {
                let w = lock(&self.state);
                if w.calls.keys().all(|s| w.replies.contains_key(s)) {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Members exchanged successfully, in table form without the access of
    /// properties: `method Name(in) -> out`, `property Name type`.
    pub async fn members(&self) -> BTreeSet<String> {
        self.settle().await;
        let w = lock(&self.state);
        let mut out = BTreeSet::new();
        for (serial, call) in &w.calls {
            match w.replies.get(serial) {
                Some(Ok(sig)) if call.starts_with("property ") => {
                    out.insert(format!("{call} {}", sig.strip_prefix("v:").unwrap_or(sig)));
                }
                Some(Ok(sig)) => {
                    out.insert(format!("{call} -> {sig}"));
                }
                _ => {}
            }
        }
        out
    }

    /// Errors the client received: `Member org.….Error.Variant`.
    pub async fn errors(&self) -> BTreeSet<String> {
        self.settle().await;
        let w = lock(&self.state);
        let mut out = BTreeSet::new();
        for (serial, call) in &w.calls {
            if let Some(Err(name)) = w.replies.get(serial) {
                let member = call
                    .split_whitespace()
                    .nth(1)
                    .and_then(|m| m.split('(').next())
                    .unwrap_or_default();
                out.insert(format!("{member} {name}"));
            }
        }
        out
    }
}

impl Drop for WireLog {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The members of `interface` as the object at `path` describes itself
/// (`org.freedesktop.DBus.Introspectable.Introspect`), in table form.
pub async fn introspect(conn: &Connection, path: &str, interface: &str) -> BTreeSet<String> {
    // A p2p connection ignores the destination, but a proxy needs one.
    let proxy = zbus::fdo::IntrospectableProxy::builder(conn)
        .destination(interface.to_string())
        .expect("bus name")
        .path(path.to_string())
        .expect("object path")
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .expect("Introspectable proxy");
    let xml = proxy.introspect().await.expect("Introspect");
    parse_introspection(&xml, interface)
        .unwrap_or_else(|e| panic!("introspection of {path}: {e}\n{xml}"))
}

/// One XML tag: `(closing, name, attributes, self-closing)`.
type Tag = (bool, String, BTreeMap<String, String>, bool);

/// The tags of an XML text (declarations, comments and text skipped). The
/// introspection format needs no more: elements and attributes only.
fn tags(xml: &str) -> Result<Vec<Tag>, String> {
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find('<') {
        rest = &rest[start + 1..];
        if let Some(after) = rest.strip_prefix("!--") {
            let end = after.find("-->").ok_or("unterminated comment")?;
            rest = &after[end + 3..];
            continue;
        }
        let end = rest.find('>').ok_or("unterminated tag")?;
        let inner = &rest[..end];
        rest = &rest[end + 1..];
        if inner.starts_with('!') || inner.starts_with('?') {
            continue;
        }
        let closing = inner.starts_with('/');
        let self_closing = inner.ends_with('/');
        let inner = inner.trim_start_matches('/').trim_end_matches('/');
        let (name, mut attrs_text) = inner.split_once(char::is_whitespace).unwrap_or((inner, ""));
        let mut attrs = BTreeMap::new();
        loop {
            attrs_text = attrs_text.trim_start();
            if attrs_text.is_empty() {
                break;
            }
            let (key, value) = attrs_text.split_once('=').ok_or("attribute without =")?;
            let value = value.trim_start();
            let quote = value.chars().next().ok_or("attribute without value")?;
            if quote != '"' && quote != '\'' {
                return Err(format!("unquoted attribute {key}"));
            }
            let close = value[1..].find(quote).ok_or("unterminated attribute")?;
            attrs.insert(key.trim().to_string(), unescape(&value[1..1 + close]));
            attrs_text = &value[close + 2..];
        }
        out.push((closing, name.to_string(), attrs, self_closing));
    }
    Ok(out)
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

/// The members of `interface` in introspection XML, in table form:
/// `method Name(in) -> out`, `property Name type access`, `signal Name(args)`.
/// Annotations are not compared (they are server-side hints).
pub fn parse_introspection(xml: &str, interface: &str) -> Result<BTreeSet<String>, String> {
    let mut members = BTreeSet::new();
    let mut in_iface = false;
    let mut found = false;
    // The member being read: (kind, name, in-args, out-args).
    let mut current: Option<(String, String, String, String)> = None;
    let finish = |c: (String, String, String, String), members: &mut BTreeSet<String>| {
        let (kind, name, ins, outs) = c;
        members.insert(match kind.as_str() {
            "method" => format!("method {name}({ins}) -> {outs}"),
            _ => format!("signal {name}({outs})"),
        });
    };
    for (closing, tag, attrs, self_closing) in tags(xml)? {
        let attr = |k: &str| attrs.get(k).cloned().ok_or(format!("<{tag}> without {k}"));
        match (tag.as_str(), closing) {
            ("interface", false) => {
                in_iface = attr("name")? == interface;
                found |= in_iface;
            }
            ("interface", true) => in_iface = false,
            _ if !in_iface => {}
            ("method" | "signal", false) => {
                let c = (tag.clone(), attr("name")?, String::new(), String::new());
                if self_closing {
                    finish(c, &mut members);
                } else {
                    current = Some(c);
                }
            }
            ("method" | "signal", true) => {
                if let Some(c) = current.take() {
                    finish(c, &mut members);
                }
            }
            ("arg", false) => {
                let c = current.as_mut().ok_or("<arg> outside a member")?;
                // Signal arguments have no direction; method arguments default to "in".
                let dir = attrs.get("direction").map(String::as_str);
                match (c.0.as_str(), dir) {
                    ("method", None | Some("in")) => c.2.push_str(&attr("type")?),
                    _ => c.3.push_str(&attr("type")?),
                }
            }
            ("property", false) => {
                members.insert(format!(
                    "property {} {} {}",
                    attr("name")?,
                    attr("type")?,
                    attr("access")?
                ));
            }
            _ => {}
        }
    }
    if !found {
        return Err(format!("no interface {interface}"));
    }
    Ok(members)
}

/// The source of this crate's `lib.rs`: the client proxies.
const CLIENT_SOURCE: &str = include_str!("lib.rs");

/// The members the client trait `trait_name` (e.g. `Signer1`) declares in
/// this crate, as `method Name`, `property Name` or `signal Name` (D-Bus
/// names: zbus's default PascalCase of the Rust name, or an explicit
/// `name = "…"`). Read from the source, because a `#[proxy]` trait exposes
/// nothing to introspect at run time.
pub fn client_members(trait_name: &str) -> BTreeSet<String> {
    let start = format!("pub trait {trait_name} {{");
    let body = CLIENT_SOURCE
        .split_once(start.as_str())
        .unwrap_or_else(|| panic!("no `{start}` in ds-dbus's lib.rs"))
        .1;
    let mut members = BTreeSet::new();
    let mut attrs = String::new();
    for line in body.lines() {
        let line = line.trim();
        if line == "}" {
            break;
        }
        if line.starts_with("#[") {
            attrs.push_str(line);
        } else if let Some(rest) = line.strip_prefix("fn ") {
            let rust = rest.split(['(', '<']).next().unwrap_or_default();
            let kind = if attrs.contains("property") {
                "property"
            } else if attrs.contains("signal") {
                "signal"
            } else {
                "method"
            };
            let name = attrs
                .split_once("name = \"")
                .and_then(|(_, n)| n.split('"').next())
                .map(str::to_string)
                .unwrap_or_else(|| pascal_case(rust));
            members.insert(format!("{kind} {name}"));
            attrs.clear();
        }
    }
    members
}

fn pascal_case(snake: &str) -> String {
    snake
        .split('_')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_uppercase().chain(c).collect::<String>())
                .unwrap_or_default()
        })
        .collect()
}

/// `method Sign(s) -> s` → `method Sign`; `property X s read` → `property X`.
fn member_name(line: &str) -> String {
    let mut words = line.split([' ', '(']);
    format!(
        "{} {}",
        words.next().unwrap_or_default(),
        words.next().unwrap_or_default()
    )
}

/// What the wire shows of a table line: a property without its access
/// (`property X s read` → `property X s`); a method's arguments and reply
/// as zbus reads a body, where one structure and its members as separate
/// arguments are the same bytes and parse to the same signature
/// (`-> (sb)` and `-> sb` both show as `-> sb`; zbus clients decode either,
/// so only the introspection comparison tells them apart).
fn wire_form(line: &str) -> String {
    if line.starts_with("property ") {
        return line
            .rsplit_once(' ')
            .map(|(l, _)| l.to_string())
            .unwrap_or_default();
    }
    let flat = |sig: &str| {
        zbus::zvariant::Signature::try_from(sig)
            .map(|s| s.to_string_no_parens())
            .unwrap_or_else(|e| panic!("table signature {sig:?}: {e}"))
    };
    match line.split_once('(').zip(line.rsplit_once(") -> ")) {
        Some(((head, _), (args, out))) if line.starts_with("method ") => {
            let args = &args[head.len() + 1..];
            format!("{head}({}) -> {}", flat(args), flat(out))
        }
        _ => line.to_string(),
    }
}

fn diff(what: &str, left: &str, l: &BTreeSet<String>, right: &str, r: &BTreeSet<String>) {
    let only_l: Vec<_> = l.difference(r).collect();
    let only_r: Vec<_> = r.difference(l).collect();
    assert!(
        only_l.is_empty() && only_r.is_empty(),
        "{what}: drift\n  only in {left}: {only_l:#?}\n  only in {right}: {only_r:#?}"
    );
}

/// The drift check (see the module doc): `table` equals the introspected
/// members of `interface` at `path`, names exactly the members of client
/// trait `trait_name`, and every method and property in it was exchanged by
/// the client proxy with the table's signatures (`wire`).
pub async fn assert_no_drift(
    p2p: &P2p,
    path: &str,
    interface: &str,
    trait_name: &str,
    table: &[&str],
    wire: &WireLog,
) {
    let table: BTreeSet<String> = table.iter().map(|s| s.to_string()).collect();
    let served = introspect(&p2p.client, path, interface).await;
    diff(interface, "the server", &served, "the table", &table);
    let names: BTreeSet<String> = table.iter().map(|l| member_name(l)).collect();
    diff(
        interface,
        &format!("the client trait {trait_name}"),
        &client_members(trait_name),
        "the table",
        &names,
    );
    // Signals are not calls: the wire shows methods and property reads.
    let exercised: BTreeSet<String> = table
        .iter()
        .filter(|l| !l.starts_with("signal "))
        .map(|l| wire_form(l))
        .collect();
    diff(
        interface,
        "what the client proxy exchanged",
        &wire.members().await,
        "the table",
        &exercised,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_introspection_and_the_client_traits() {
        let xml = r#"<!DOCTYPE node PUBLIC "-//freedesktop//DTD D-BUS Object Introspection 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd">
<node>
  <interface name="org.example.Other"><method name="Nope"/></interface>
  <!-- a comment <with> brackets -->
  <interface name="org.example.X1">
    <method name="Get">
      <arg name="a" type="s" direction="in"/>
      <arg type="as"/>
      <arg type="(sas)" direction="out"/>
    </method>
    <method name="Ping"/>
    <signal name="Changed"><arg name="what" type="a{st}"/></signal>
    <property name="Count" type="t" access="read">
      <annotation name="org.freedesktop.DBus.Property.EmitsChangedSignal" value="false"/>
    </property>
  </interface>
</node>"#;
        let got = parse_introspection(xml, "org.example.X1").unwrap();
        let want: BTreeSet<String> = [
            "method Get(sas) -> (sas)",
            "method Ping() -> ",
            "signal Changed(a{st})",
            "property Count t read",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(got, want);
        assert!(parse_introspection(xml, "org.example.Missing").is_err());
        assert!(parse_introspection("<node><interface name=x>", "x").is_err());

        let signer = client_members("Signer1");
        assert!(signer.contains("method Sign"), "{signer:?}");
        assert!(signer.contains("property SignaturesIssued"), "{signer:?}");
        assert_eq!(signer.len(), 5, "{signer:?}");
        assert_eq!(member_name("method Sign(s) -> s"), "method Sign");
        assert_eq!(wire_form("property X s read"), "property X s");
        assert_eq!(wire_form("method M((sb)) -> (sas)"), "method M(sb) -> sas");
        assert_eq!(wire_form("method M(sb) -> "), "method M(sb) -> ");
    }
}
