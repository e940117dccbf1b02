//! The small text parsers never panic and round-trip what they accept:
//! nix-base32, hashes, store paths, keys and signatures.
#![no_main]

use ds_core::{base32, Hash, PublicKey, SecretKey, Signature, StorePath};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(bytes) = base32::decode(s) {
        // canonical: exactly one encoding per byte string
        assert_eq!(base32::encode(&bytes), s);
    }
    if let Ok(h) = Hash::parse(s) {
        assert_eq!(h.digest.len(), h.algo.len());
        assert_eq!(Hash::parse(&h.to_nix32_string()).unwrap(), h);
        assert_eq!(Hash::parse(&h.to_base16_string()).unwrap(), h);
        assert_eq!(Hash::parse(&h.to_sri_string()).unwrap(), h);
    }
    if let Ok(p) = StorePath::parse(s) {
        assert_eq!(p.to_absolute(), s);
        assert_eq!(StorePath::from_basename(&p.basename()).unwrap(), p);
    }
    if let Ok(sig) = Signature::parse(s) {
        assert_eq!(Signature::parse(&sig.to_string()).unwrap(), sig);
    }
    if let Ok(pk) = PublicKey::parse(s) {
        assert_eq!(PublicKey::parse(&pk.to_string()).unwrap(), pk);
    }
    if let Ok(sk) = SecretKey::parse(s) {
        let again = SecretKey::parse(&sk.to_file_string()).unwrap();
        assert_eq!(again.to_file_string(), sk.to_file_string());
        let sig = sk.sign(data);
        assert!(sk.public().verify(data, &sig));
    }
});
