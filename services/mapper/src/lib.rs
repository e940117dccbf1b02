//! distributed-store mapper (being written).
