//! `distributed-store status`: the services' D-Bus properties.

use std::fmt::Write;

use anyhow::Context;
use ds_dbus::{Fetcher1Proxy, Mapper1Proxy, Proxy1Proxy, Signer1Proxy};
use zbus::proxy::CacheProperties;

/// Connect to the system bus, or `address` when given.
pub async fn connect(address: Option<&str>) -> anyhow::Result<zbus::Connection> {
    let builder = match address {
        Some(a) => zbus::connection::Builder::address(a)?,
        None => zbus::connection::Builder::system()?,
    };
    builder
        .build()
        .await
        .context("connecting to the system bus (DBUS_SYSTEM_BUS_ADDRESS or --bus selects another)")
}

/// Render the status report. Never D-Bus-activates a service that is not
/// running (reading a property of an activatable name would start it).
pub async fn report(conn: &zbus::Connection) -> anyhow::Result<(String, bool)> {
    let dbus = zbus::fdo::DBusProxy::new(conn).await?;
    let mut out = String::new();
    let mut healthy = true;
    let running = |name: &'static str| {
        let dbus = dbus.clone();
        async move {
            let n = zbus::names::BusName::try_from(name).expect("valid name");
            dbus.name_has_owner(n).await.unwrap_or(false)
        }
    };
    if running(ds_dbus::PROXY_NAME).await {
        let p = Proxy1Proxy::builder(conn)
            .cache_properties(CacheProperties::No)
            .build()
            .await?;
        writeln!(out, "proxy ({}): running", ds_dbus::PROXY_NAME)?;
        writeln!(out, "  version        {}", p.version().await?)?;
        writeln!(out, "  listen         {}", p.listen().await?)?;
        writeln!(out, "  store          {}", p.store().await?)?;
        writeln!(out, "  uptime         {}s", p.uptime_seconds().await?)?;
        writeln!(out, "  requests       {}", p.requests().await?)?;
        writeln!(out, "  narinfo hits   {}", p.narinfo_hits().await?)?;
        writeln!(out, "  narinfo remote {}", p.narinfo_remote().await?)?;
        writeln!(out, "  narinfo misses {}", p.narinfo_misses().await?)?;
        writeln!(out, "  NAR bytes sent {}", p.nar_bytes_sent().await?)?;
    } else {
        healthy = false;
        writeln!(
            out,
            "proxy ({}): not on the bus (socket activation starts it on the first request)",
            ds_dbus::PROXY_NAME
        )?;
    }
    if running(ds_dbus::SIGNER_NAME).await {
        let s = Signer1Proxy::builder(conn)
            .cache_properties(CacheProperties::No)
            .build()
            .await?;
        writeln!(out, "signer ({}): running", ds_dbus::SIGNER_NAME)?;
        let key = s.public_key().await?;
        writeln!(
            out,
            "  public key     {}",
            if key.is_empty() {
                "(none configured)".into()
            } else {
                key
            }
        )?;
        writeln!(out, "  store          {}", s.store().await?)?;
        writeln!(out, "  signatures     {}", s.signatures_issued().await?)?;
        writeln!(out, "  refused        {}", s.requests_refused().await?)?;
    } else {
        writeln!(
            out,
            "signer ({}): not running (D-Bus activation starts it on the first Sign)",
            ds_dbus::SIGNER_NAME
        )?;
    }
    if running(ds_dbus::MAPPER_NAME).await {
        let m = Mapper1Proxy::builder(conn)
            .cache_properties(CacheProperties::No)
            .build()
            .await?;
        writeln!(out, "mapper ({}): running", ds_dbus::MAPPER_NAME)?;
        writeln!(out, "  indexed paths  {}", m.indexed_paths().await?)?;
        writeln!(out, "  index bytes    {}", m.index_bytes().await?)?;
        writeln!(out, "  peer paths     {}", m.peer_paths().await?)?;
        let (found, missed) = m.lookups().await?;
        writeln!(out, "  lookups        {found} found, {missed} not found")?;
        let last = m.last_sync().await?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        if last == 0 {
            writeln!(out, "  last sync      never")?;
        } else {
            writeln!(out, "  last sync      {}s ago", now.saturating_sub(last))?;
        }
        let peers = m.peers().await?;
        if peers.is_empty() {
            writeln!(out, "  peers          (none)")?;
        }
        for (url, state, source, ago, paths) in peers {
            let seen = if ago < 0 {
                "never seen".to_string()
            } else {
                format!("seen {ago}s ago")
            };
            writeln!(
                out,
                "  peer           {url} {state} ({source}, {seen}, {paths} paths)"
            )?;
        }
    } else {
        writeln!(
            out,
            "mapper ({}): not running (D-Bus activation starts it on the first lookup)",
            ds_dbus::MAPPER_NAME
        )?;
    }
    if running(ds_dbus::FETCHER_NAME).await {
        let f = Fetcher1Proxy::builder(conn)
            .cache_properties(CacheProperties::No)
            .build()
            .await?;
        writeln!(out, "fetcher ({}): running", ds_dbus::FETCHER_NAME)?;
        writeln!(
            out,
            "  cache          {} NARs, {} of {} bytes",
            f.cache_entries().await?,
            f.cache_bytes().await?,
            f.cache_max_bytes().await?
        )?;
        writeln!(out, "  in flight      {}", f.in_flight().await?)?;
        let mut fetched: Vec<_> = f.bytes_fetched().await?.into_iter().collect();
        fetched.sort();
        for (scheme, bytes) in fetched {
            writeln!(out, "  fetched        {bytes} bytes from {scheme}")?;
        }
        writeln!(out, "  failed         {}", f.fetches_failed().await?)?;
        writeln!(out, "  bad sources    {}", f.verification_failures().await?)?;
    } else {
        writeln!(
            out,
            "fetcher ({}): not running (D-Bus activation starts it on the first fetch)",
            ds_dbus::FETCHER_NAME
        )?;
    }
    Ok((out, healthy))
}
