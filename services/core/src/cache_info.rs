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
        format!(
            "StoreDir: {}\nWantMassQuery: {}\nPriority: {}\n",
            self.store_dir,
            u8::from(self.want_mass_query),
            self.priority
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_like_cache_nixos_org() {
        let info = CacheInfo {
            store_dir: crate::STORE_DIR.into(),
            want_mass_query: true,
            priority: 40,
        };
        assert_eq!(
            info.render(),
            "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n"
        );
        let info = CacheInfo {
            want_mass_query: false,
            priority: 10,
            ..info
        };
        assert_eq!(
            info.render(),
            "StoreDir: /nix/store\nWantMassQuery: 0\nPriority: 10\n"
        );
    }
}
