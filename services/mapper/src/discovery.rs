//! LAN peer discovery with mDNS/DNS-SD (config `discovery`, default on).
//!
//! The mapper registers this node as an instance of [`SERVICE_TYPE`]: the
//! instance name is the node id (the index epoch), the port is the proxy's
//! (`listen`), the TXT record is `v=1` and `id=<epoch>`. It browses the same
//! type; every resolved instance that is not this node becomes a peer
//! `http://<addr>:<port>` with source `mdns`, polled like a configured one.
//! When `discovery` is off, [`Discovery::start`] is never called and no
//! socket is opened.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use mdns_sd::{ServiceDaemon, ServiceEvent, ServiceInfo};

use crate::index::Index;
use crate::peers::{poll_peer, Added, Peers, MAX_DISCOVERED};

/// The DNS-SD service type (its name is longer than RFC 6763's 15
/// characters; the daemon is told to accept it).
pub const SERVICE_TYPE: &str = "_distributed-store._tcp.local.";
/// The TXT `v` this node speaks.
pub const TXT_VERSION: &str = "1";
/// A discovered peer that has not answered for this long is dropped (it is
/// added again when its record is seen again).
pub const DROP_SILENT: Duration = Duration::from_secs(120);
/// How often dropped peers are looked for.
pub const REAP_INTERVAL: Duration = Duration::from_secs(2);
/// Longest DNS-SD instance full name accepted (a DNS name).
const MAX_FULLNAME: usize = 255;
/// Service name length the daemon accepts ("distributed-store" is 17).
const SERVICE_NAME_LEN_MAX: u8 = 30;

/// Why discovery could not start.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// The mDNS daemon (sockets on 5353/udp) failed.
    #[error("mDNS: {0}")]
    Mdns(#[from] mdns_sd::Error),
}

/// Which addresses to advertise for a proxy listening on `listen`:
/// `None` means every interface address (a wildcard listen), `Some(v)` just
/// those; an empty list means "do not advertise" (loopback: nobody else
/// could connect).
pub fn advertised_addrs(listen: SocketAddr) -> Option<Vec<IpAddr>> {
    let ip = listen.ip();
    if ip.is_unspecified() {
        None
    } else if ip.is_loopback() {
        Some(Vec::new())
    } else {
        Some(vec![ip])
    }
}

/// A node id as announced: the same shape as an announcement's epoch.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn usable(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            !(v4.is_unspecified() || v4.is_loopback() || v4.is_multicast() || v4.is_broadcast())
        }
        // Link-local IPv6 needs a zone id, which a URL for reqwest cannot carry.
        IpAddr::V6(v6) => {
            !(v6.is_unspecified()
                || v6.is_loopback()
                || v6.is_multicast()
                || (v6.segments()[0] & 0xffc0) == 0xfe80)
        }
    }
}

/// The URL to poll a peer at, from its advertised addresses and port:
/// IPv4 preferred (not link-local if there is another), then IPv6 in
/// brackets; lowest address first so the choice is stable. `None` when the
/// port is 0 or no address is usable (loopback, multicast, unspecified,
/// link-local IPv6).
pub fn peer_url(addrs: &[IpAddr], port: u16) -> Option<String> {
    if port == 0 {
        return None;
    }
    let mut v: Vec<&IpAddr> = addrs.iter().filter(|a| usable(a)).collect();
    v.sort_by_key(|a| match a {
        IpAddr::V4(v4) if !v4.is_link_local() => (0, **a),
        IpAddr::V4(_) => (1, **a),
        IpAddr::V6(_) => (2, **a),
    });
    match v.first()? {
        IpAddr::V4(a) => Some(format!("http://{a}:{port}")),
        IpAddr::V6(a) => Some(format!("http://[{a}]:{port}")),
    }
}

/// What a resolved instance says, checked: `Ok((id, url))`, or why it is
/// ignored.
pub fn check_instance(
    fullname: &str,
    version: Option<&str>,
    id: Option<&str>,
    addrs: &[IpAddr],
    port: u16,
) -> Result<(String, String), String> {
    if fullname.len() > MAX_FULLNAME {
        return Err("instance name too long".into());
    }
    if version != Some(TXT_VERSION) {
        return Err(format!(
            "TXT v={:?}, not {TXT_VERSION}",
            version.map(|v| v.chars().take(16).collect::<String>())
        ));
    }
    let id = id.ok_or("no TXT id")?;
    if !valid_id(id) {
        return Err("bad TXT id".into());
    }
    let url = peer_url(addrs, port).ok_or("no usable address or port 0")?;
    Ok((id.to_string(), url))
}

/// Running discovery: the mDNS daemon (its own thread) and the task that
/// turns its events into peers.
pub struct Discovery {
    daemon: ServiceDaemon,
    registered: Option<String>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Discovery {
    /// Register `epoch` at the proxy's `listen` port and browse for others,
    /// adding them to `peers` and polling each with `timeout`.
    pub fn start(
        listen: SocketAddr,
        epoch: &str,
        peers: Arc<Peers>,
        index: Arc<Index>,
        timeout: Duration,
    ) -> Result<Self, DiscoveryError> {
        let daemon = ServiceDaemon::new()?;
        daemon.set_service_name_len_max(SERVICE_NAME_LEN_MAX)?;
        let registered = match advertised_addrs(listen) {
            Some(a) if a.is_empty() => {
                tracing::info!(
                    %listen,
                    "discovery: the proxy listens on loopback only; browsing, not advertising"
                );
                None
            }
            addrs => {
                let host = format!("ds-{epoch}.local.");
                let txt = [("v", TXT_VERSION), ("id", epoch)];
                let info = match &addrs {
                    Some(a) => ServiceInfo::new(
                        SERVICE_TYPE,
                        epoch,
                        &host,
                        &a[..],
                        listen.port(),
                        &txt[..],
                    )?,
                    None => {
                        ServiceInfo::new(SERVICE_TYPE, epoch, &host, (), listen.port(), &txt[..])?
                            .enable_addr_auto()
                    }
                };
                let fullname = info.get_fullname().to_string();
                daemon.register(info)?;
                tracing::info!(%fullname, port = listen.port(), "discovery: advertising");
                Some(fullname)
            }
        };
        let events = daemon.browse(SERVICE_TYPE)?;
        let mut tasks = Vec::new();
        let (p, own) = (peers.clone(), epoch.to_string());
        tasks.push(tokio::spawn(async move {
            let client = crate::http::client();
            // instance full name → the URL it gave us
            let mut instances: HashMap<String, String> = HashMap::new();
            while let Ok(ev) = events.recv_async().await {
                handle_event(ev, &own, &p, &index, &client, timeout, &mut instances);
            }
            tracing::debug!("discovery: browse ended");
        }));
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::time::sleep(REAP_INTERVAL).await;
                for url in peers.reap(DROP_SILENT) {
                    tracing::info!(peer = %url, "discovery: dropped peer");
                }
            }
        }));
        Ok(Discovery {
            daemon,
            registered,
            tasks,
        })
    }

    /// Unregister (so peers drop us now rather than at record expiry) and
    /// stop the daemon; best effort, bounded to about a second.
    pub async fn shutdown(self) {
        for t in &self.tasks {
            t.abort();
        }
        if let Some(name) = &self.registered {
            if let Ok(rx) = self.daemon.unregister(name) {
                let _ = tokio::time::timeout(Duration::from_secs(1), rx.recv_async()).await;
            }
        }
        if let Ok(rx) = self.daemon.shutdown() {
            let _ = tokio::time::timeout(Duration::from_millis(500), rx.recv_async()).await;
        }
    }
}

fn handle_event(
    ev: ServiceEvent,
    own: &str,
    peers: &Arc<Peers>,
    index: &Arc<Index>,
    client: &reqwest::Client,
    timeout: Duration,
    instances: &mut HashMap<String, String>,
) {
    match ev {
        ServiceEvent::ServiceResolved(r) => {
            let addrs: Vec<IpAddr> = r.get_addresses().iter().map(|a| a.to_ip_addr()).collect();
            let checked = check_instance(
                r.get_fullname(),
                r.get_property_val_str("v"),
                r.get_property_val_str("id"),
                &addrs,
                r.get_port(),
            );
            let (id, url) = match checked {
                Ok(x) => x,
                Err(why) => {
                    tracing::debug!(instance = %r.get_fullname().chars().take(80).collect::<String>(), "discovery: ignored: {why}");
                    return;
                }
            };
            if id == own {
                return;
            }
            let fullname = r.get_fullname().to_string();
            match instances.get(&fullname) {
                Some(old) if *old == url => {}
                Some(old) => {
                    // Same node, new address: the old URL goes once it is down.
                    peers.mark_gone(old);
                }
                None if instances.len() >= 2 * MAX_DISCOVERED => {
                    tracing::debug!("discovery: too many instances; ignoring {fullname}");
                    return;
                }
                None => {}
            }
            instances.insert(fullname, url.clone());
            match peers.add_discovered(&url, &id) {
                Added::New(generation) => {
                    tracing::info!(peer = %url, node = %id, "discovery: new peer");
                    tokio::spawn(poll_peer(
                        client.clone(),
                        peers.clone(),
                        index.clone(),
                        url,
                        generation,
                        timeout,
                    ));
                }
                Added::Full => {
                    tracing::warn!(peer = %url, "discovery: {MAX_DISCOVERED} peers already; ignored")
                }
                Added::Known | Added::OurEpoch => {}
            }
        }
        ServiceEvent::ServiceRemoved(_, fullname) => {
            if let Some(url) = instances.remove(&fullname) {
                tracing::info!(peer = %url, "discovery: record removed");
                peers.mark_gone(&url);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn advertised_addresses_follow_listen() {
        assert_eq!(advertised_addrs("[::]:5496".parse().unwrap()), None);
        assert_eq!(advertised_addrs("0.0.0.0:5496".parse().unwrap()), None);
        assert_eq!(
            advertised_addrs("127.0.0.1:5496".parse().unwrap()),
            Some(vec![])
        );
        assert_eq!(
            advertised_addrs("10.77.0.11:5496".parse().unwrap()),
            Some(vec![ip("10.77.0.11")])
        );
    }

    #[test]
    fn peer_url_prefers_ipv4_and_brackets_ipv6() {
        let p = 5496;
        assert_eq!(
            peer_url(&[ip("fd00::2"), ip("10.0.0.9"), ip("10.0.0.3")], p).as_deref(),
            Some("http://10.0.0.3:5496")
        );
        assert_eq!(
            peer_url(&[ip("169.254.1.1"), ip("192.168.1.4")], p).as_deref(),
            Some("http://192.168.1.4:5496")
        );
        assert_eq!(
            peer_url(&[ip("fe80::1"), ip("fd00::2")], p).as_deref(),
            Some("http://[fd00::2]:5496")
        );
        // Nothing usable.
        for bad in [
            vec![],
            vec![ip("127.0.0.1")],
            vec![ip("::1"), ip("fe80::1")],
            vec![ip("0.0.0.0"), ip("224.0.0.251"), ip("255.255.255.255")],
        ] {
            assert_eq!(peer_url(&bad, p), None, "{bad:?}");
        }
        assert_eq!(peer_url(&[ip("10.0.0.1")], 0), None, "port 0");
    }

    #[test]
    fn instances_are_validated() {
        let a = [ip("10.0.0.5")];
        let name = "abc._distributed-store._tcp.local.";
        assert_eq!(
            check_instance(name, Some("1"), Some("abc"), &a, 5496),
            Ok(("abc".into(), "http://10.0.0.5:5496".into()))
        );
        assert!(check_instance(name, Some("2"), Some("abc"), &a, 5496).is_err());
        assert!(check_instance(name, None, Some("abc"), &a, 5496).is_err());
        assert!(check_instance(name, Some("1"), None, &a, 5496).is_err());
        assert!(check_instance(name, Some("1"), Some("../x"), &a, 5496).is_err());
        assert!(check_instance(name, Some("1"), Some(&"a".repeat(129)), &a, 5496).is_err());
        assert!(check_instance(&"a".repeat(300), Some("1"), Some("abc"), &a, 5496).is_err());
        assert!(check_instance(name, Some("1"), Some("abc"), &[], 5496).is_err());
    }

    #[test]
    fn discovered_peers_dedupe_filter_and_limit() {
        let peers = Peers::new(
            &["http://10.0.0.1:5496/".to_string()],
            "me",
            Default::default(),
        );
        // Ourselves, by id.
        assert_eq!(
            peers.add_discovered("http://10.0.0.2:5496", "me"),
            Added::OurEpoch
        );
        // A configured peer found again stays "config".
        assert_eq!(
            peers.add_discovered("http://10.0.0.1:5496", "n1"),
            Added::Known
        );
        assert_eq!(peers.status()[0].2, "config");
        let Added::New(g) = peers.add_discovered("http://10.0.0.3:5496", "n3") else {
            panic!("not added")
        };
        assert_eq!(
            peers.add_discovered("http://10.0.0.3:5496/", "n3"),
            Added::Known
        );
        let st = peers.status();
        assert_eq!(st.len(), 2);
        assert_eq!(
            (st[1].0.as_str(), st[1].2.as_str()),
            ("http://10.0.0.3:5496", "mdns")
        );
        assert_eq!(peers.generation("http://10.0.0.3:5496"), Some(g));
        assert!(
            peers.find("http://10.0.0.3:5496/").is_some(),
            "ReportBad finds it"
        );
        // Limit.
        for i in 0..MAX_DISCOVERED + 10 {
            peers.add_discovered(
                &format!("http://10.1.{}.{}:1", i / 250, i % 250),
                &format!("x{i}"),
            );
        }
        assert_eq!(peers.all_urls().len(), 1 + MAX_DISCOVERED);
        assert_eq!(
            peers.add_discovered("http://10.9.9.9:1", "late"),
            Added::Full
        );
    }

    #[test]
    fn discovered_peers_are_reaped() {
        let peers = Peers::new(
            &["http://10.0.0.1:5496".to_string()],
            "me",
            Default::default(),
        );
        let up = |url: &str, epoch: &str| {
            peers.apply(
                url,
                &crate::AnnounceJson {
                    epoch: epoch.into(),
                    full: true,
                    ..Default::default()
                },
            )
        };
        let (a, b, c) = (
            "http://10.0.0.2:1",
            "http://10.0.0.3:1",
            "http://10.0.0.4:1",
        );
        for (u, id) in [(a, "na"), (b, "nb"), (c, "nc")] {
            assert!(matches!(peers.add_discovered(u, id), Added::New(_)));
        }
        up(a, "na");
        up(b, "nb");
        // Record gone but still answering: kept; once down, dropped.
        peers.mark_gone(a);
        assert!(peers.reap(DROP_SILENT).is_empty());
        peers.mark_down(a);
        assert_eq!(peers.reap(DROP_SILENT), vec![a.to_string()]);
        assert_eq!(peers.generation(a), None, "its poller stops");
        // Never answered for long enough: dropped; answering: kept.
        assert_eq!(peers.reap(Duration::ZERO), vec![c.to_string()]);
        // A configured peer turns out to be the same node as a discovered one.
        up("http://10.0.0.1:5496", "nb");
        assert_eq!(peers.reap(DROP_SILENT), vec![b.to_string()]);
        assert_eq!(peers.all_urls(), vec!["http://10.0.0.1:5496".to_string()]);
        // Found again: a new generation.
        assert!(matches!(peers.add_discovered(a, "na"), Added::New(g) if g > 1));
    }
}
