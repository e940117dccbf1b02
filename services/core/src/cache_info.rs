//! `/nix-cache-info`.

/// The cache's self-description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheInfo {
    /// Always `/nix/store` for us.
    pub store_dir: String,
    /// Whether Nix may query many paths at once.
    pub want_mass_query: bool,
    /// Lower is preferred; cache.nixos.org is 40.
    pub priority: u32,
}

impl CacheInfo {
    /// Render as Nix expects (`StoreDir: …\nWantMassQuery: 1\nPriority: 40\n`).
    pub fn render(&self) -> String {
        todo!()
    }
}
