//! distributed-store fetcher (being written).
