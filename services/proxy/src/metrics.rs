//! Prometheus metrics (`GET /metrics`, text exposition format): the one
//! place the proxy counts; the D-Bus `Proxy1` properties read these.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Labels of the request counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `narinfo`, `nar`, `nix-cache-info`, `metrics`, `other`, `bad`
    pub route: &'static str,
    /// HTTP status code
    pub status: u16,
}

/// Labels of the latency histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// route as above
    pub route: &'static str,
}

/// All proxy metrics.
pub struct Metrics {
    registry: Registry,
    /// Requests by route and status.
    pub requests: Family<RequestLabels, Counter>,
    /// Time to response headers, by route.
    pub latency: Family<RouteLabels, Histogram>,
    /// Body bytes sent for NARs (after compression).
    pub nar_bytes: Counter,
    /// Of those, bytes sent with `sendfile` straight from store files.
    pub nar_bytes_sendfile: Counter,
    /// All HTTP requests answered.
    pub requests_answered: Counter,
    /// narinfo answered from the local store.
    pub narinfo_hits: Counter,
    /// narinfo answered from the fleet (peers, upstream) through the mapper.
    pub narinfo_remote: Counter,
    /// narinfo answered 404.
    pub narinfo_misses: Counter,
}

impl Metrics {
    /// Register everything.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("distributed_store_proxy");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5,
            ])
        });
        let nar_bytes = Counter::default();
        let nar_bytes_sendfile = Counter::default();
        registry.register(
            "requests",
            "HTTP requests answered, by route and status",
            requests.clone(),
        );
        registry.register(
            "response_seconds",
            "Time from request to response headers, by route",
            latency.clone(),
        );
        registry.register(
            "nar_bytes_sent",
            "NAR body bytes sent (after compression)",
            nar_bytes.clone(),
        );
        registry.register(
            "nar_bytes_sendfile",
            "Of the NAR body bytes sent, those sent with sendfile straight from store files",
            nar_bytes_sendfile.clone(),
        );
        let [requests_answered, narinfo_hits, narinfo_remote, narinfo_misses] =
            std::array::from_fn(|_| Counter::default());
        for (name, help, c) in [
            (
                "requests_answered",
                "HTTP requests answered (all routes and statuses)",
                &requests_answered,
            ),
            (
                "narinfo_local",
                "narinfo answered from the local store",
                &narinfo_hits,
            ),
            (
                "narinfo_remote",
                "narinfo answered from peers or upstream (through the mapper)",
                &narinfo_remote,
            ),
            ("narinfo_misses", "narinfo answered 404", &narinfo_misses),
        ] {
            registry.register(name, help, c.clone());
        }
        Metrics {
            registry,
            requests,
            latency,
            nar_bytes,
            nar_bytes_sendfile,
            requests_answered,
            narinfo_hits,
            narinfo_remote,
            narinfo_misses,
        }
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
