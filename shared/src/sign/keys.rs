//! Cosign key pairs: ECDSA P-256, the private key as PKCS#8 DER encrypted the way cosign
//! (go-securesystemslib's `encrypted` package) does — scrypt (N=32768, r=8, p=1) derives a
//! 32-byte key from the passphrase, NaCl secretbox (XSalsa20-Poly1305) seals the DER, and
//! a JSON envelope carries salt, nonce and ciphertext inside a PEM block. The public key is
//! a plain SubjectPublicKeyInfo PEM.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use crypto_secretbox::aead::{Aead, KeyInit};
use crypto_secretbox::{Key, Nonce, XSalsa20Poly1305};
use p256::ecdsa::signature::{Signer, Verifier};
use p256::ecdsa::{DerSignature, Signature, SigningKey, VerifyingKey};
use p256::pkcs8::der::pem::LineEnding;
use p256::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// What Hangar (and cosign before 2.0) writes; cosign 2 writes the SIGSTORE label. Both read.
pub const PRIVATE_KEY_LABEL: &str = "ENCRYPTED COSIGN PRIVATE KEY";
const SIGSTORE_PRIVATE_KEY_LABEL: &str = "ENCRYPTED SIGSTORE PRIVATE KEY";
const SCRYPT_LOG_N: u8 = 15;

#[derive(Serialize, Deserialize)]
struct Envelope {
    kdf: Kdf,
    cipher: Cipher,
    #[serde(with = "b64")]
    ciphertext: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct Kdf {
    name: String,
    params: ScryptParams,
    #[serde(with = "b64")]
    salt: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct ScryptParams {
    #[serde(rename = "N")]
    n: u64,
    r: u32,
    p: u32,
}

#[derive(Serialize, Deserialize)]
struct Cipher {
    name: String,
    #[serde(with = "b64")]
    nonce: Vec<u8>,
}

mod b64 {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(b))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        STANDARD.decode(s).map_err(serde::de::Error::custom)
    }
}

/// The most memory (128·N·r bytes) a key file's scrypt parameters may ask for.
const MAX_SCRYPT_MEMORY: u128 = 256 << 20;
const MAX_SCRYPT_R: u32 = 32;
const MAX_SCRYPT_P: u32 = 16;

fn scrypt_key(passphrase: &[u8], salt: &[u8], log_n: u8, r: u32, p: u32) -> Result<[u8; 32]> {
    let params = scrypt::Params::new(log_n, r, p)
        .map_err(|e| Error::invalid(format!("scrypt parameters: {e}")))?;
    let mut key = [0u8; 32];
    scrypt::scrypt(passphrase, salt, &params, &mut key)
        .map_err(|e| Error::invalid(format!("scrypt: {e}")))?;
    Ok(key)
}

/// A signing key, decrypted.
pub struct KeyPair {
    signing: SigningKey,
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyPair(<private>)")
    }
}

impl KeyPair {
    pub fn generate() -> Self {
        Self {
            signing: SigningKey::random(&mut OsRng),
        }
    }

    /// The private key as cosign writes it, encrypted with `passphrase`.
    pub fn encrypted_pem(&self, passphrase: &[u8]) -> Result<String> {
        let der = self
            .signing
            .to_pkcs8_der()
            .map_err(|e| Error::internal(format!("encoding the private key: {e}")))?;
        let mut salt = vec![0u8; 32];
        let mut nonce = vec![0u8; 24];
        OsRng.fill_bytes(&mut salt);
        OsRng.fill_bytes(&mut nonce);
        let key = scrypt_key(passphrase, &salt, SCRYPT_LOG_N, 8, 1)?;
        let ciphertext = XSalsa20Poly1305::new(Key::from_slice(&key))
            .encrypt(Nonce::from_slice(&nonce), der.as_bytes())
            .map_err(|e| Error::internal(format!("sealing the private key: {e}")))?;
        let envelope = Envelope {
            kdf: Kdf {
                name: "scrypt".into(),
                params: ScryptParams {
                    n: 1 << SCRYPT_LOG_N,
                    r: 8,
                    p: 1,
                },
                salt,
            },
            cipher: Cipher {
                name: "nacl/secretbox".into(),
                nonce,
            },
            ciphertext,
        };
        let json = serde_json::to_vec(&envelope).map_err(|e| Error::internal(e.to_string()))?;
        p256::pkcs8::der::pem::encode_string(PRIVATE_KEY_LABEL, LineEnding::LF, &json)
            .map_err(|e| Error::internal(format!("PEM: {e}")))
    }

    /// Reads an encrypted cosign private key; `what` names it in errors.
    pub fn from_encrypted_pem(pem: &str, passphrase: &[u8], what: &str) -> Result<Self> {
        let bad = |why: String| Error::invalid(format!("{what}: {why}"));
        let (label, body) = p256::pkcs8::der::pem::decode_vec(pem.trim().as_bytes())
            .map_err(|e| bad(format!("not a PEM file: {e}")))?;
        if label != PRIVATE_KEY_LABEL && label != SIGSTORE_PRIVATE_KEY_LABEL {
            return Err(bad(format!(
                "a {label:?} PEM block, not an encrypted cosign private key"
            )));
        }
        let env: Envelope = serde_json::from_slice(&body)
            .map_err(|e| bad(format!("not a cosign key envelope: {e}")))?;
        if env.kdf.name != "scrypt" || env.cipher.name != "nacl/secretbox" {
            return Err(bad(format!(
                "unsupported key encryption {}/{}",
                env.kdf.name, env.cipher.name
            )));
        }
        let ScryptParams { n, r, p } = env.kdf.params;
        if !n.is_power_of_two() || n < 2 {
            return Err(bad(format!("scrypt N={n} is not a power of two")));
        }
        // scrypt takes 128·N·r bytes and p times the work: a key file may not make reading
        // it cost gigabytes or hours (cosign writes N=32768, r=8, p=1: 32 MiB).
        let memory = 128u128 * u128::from(n) * u128::from(r);
        if r == 0 || p == 0 || r > MAX_SCRYPT_R || p > MAX_SCRYPT_P || memory > MAX_SCRYPT_MEMORY {
            return Err(bad(format!(
                "scrypt parameters N={n}, r={r}, p={p} are past this tool's bounds \
                 (1 ≤ r ≤ {MAX_SCRYPT_R}, 1 ≤ p ≤ {MAX_SCRYPT_P}, 128·N·r ≤ {} MiB; \
                 cosign writes N=32768, r=8, p=1)",
                MAX_SCRYPT_MEMORY >> 20
            )));
        }
        let key = scrypt_key(passphrase, &env.kdf.salt, n.trailing_zeros() as u8, r, p)?;
        if env.cipher.nonce.len() != 24 {
            return Err(bad("the nonce is not 24 bytes".into()));
        }
        let der = XSalsa20Poly1305::new(Key::from_slice(&key))
            .decrypt(
                Nonce::from_slice(&env.cipher.nonce),
                env.ciphertext.as_slice(),
            )
            .map_err(|_| bad("wrong passphrase (or a damaged key)".into()))?;
        let signing = SigningKey::from_pkcs8_der(&der)
            .map_err(|e| bad(format!("not an ECDSA P-256 key: {e}")))?;
        Ok(Self { signing })
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(*self.signing.verifying_key())
    }

    /// ECDSA P-256 over SHA-256 of `payload`, ASN.1 DER, base64: cosign's signature form.
    pub fn sign(&self, payload: &[u8]) -> String {
        let sig: DerSignature = self.signing.sign(payload);
        STANDARD.encode(sig.as_bytes())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    pub fn from_pem(pem: &str, what: &str) -> Result<Self> {
        VerifyingKey::from_public_key_pem(pem.trim())
            .map(Self)
            .map_err(|e| Error::invalid(format!("{what}: not an ECDSA P-256 public key: {e}")))
    }

    pub fn to_pem(&self) -> Result<String> {
        self.0
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| Error::internal(format!("PEM: {e}")))
    }

    /// Checks a base64 signature (DER, or raw r‖s) over `payload`.
    pub fn verify(&self, payload: &[u8], signature_b64: &str) -> Result<()> {
        let raw = STANDARD
            .decode(signature_b64.trim())
            .map_err(|e| Error::invalid(format!("signature is not base64: {e}")))?;
        let sig = Signature::from_der(&raw)
            .or_else(|_| Signature::from_slice(&raw))
            .map_err(|e| Error::invalid(format!("not an ECDSA signature: {e}")))?;
        self.0
            .verify(payload, &sig)
            .map_err(|_| Error::invalid("invalid signature: it does not verify with this key"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encrypted_key_round_trips_and_wrong_passphrase_fails() {
        let pair = KeyPair::generate();
        let pem = pair.encrypted_pem(b"correct horse").unwrap();
        assert!(pem.starts_with("-----BEGIN ENCRYPTED COSIGN PRIVATE KEY-----\n"));
        let back = KeyPair::from_encrypted_pem(&pem, b"correct horse", "k").unwrap();
        assert_eq!(back.public(), pair.public());
        let e = KeyPair::from_encrypted_pem(&pem, b"wrong", "k.key").unwrap_err();
        assert!(
            e.message.contains("k.key: wrong passphrase"),
            "{}",
            e.message
        );
    }

    /// The same key with its envelope's scrypt parameters replaced.
    fn with_params(pem: &str, n: u64, r: u32, p: u32) -> String {
        let (_, body) = p256::pkcs8::der::pem::decode_vec(pem.trim().as_bytes()).unwrap();
        let mut env: Envelope = serde_json::from_slice(&body).unwrap();
        env.kdf.params = ScryptParams { n, r, p };
        let json = serde_json::to_vec(&env).unwrap();
        p256::pkcs8::der::pem::encode_string(PRIVATE_KEY_LABEL, LineEnding::LF, &json).unwrap()
    }

    /// A key file asking scrypt for a petabyte, overflowing r·p, or for endless work is
    /// refused before scrypt runs, naming the file; cosign's own parameters still read.
    #[test]
    fn a_key_files_scrypt_parameters_are_bounded() {
        let pair = KeyPair::generate();
        let pem = pair.encrypted_pem(b"pw").unwrap();
        let same = with_params(&pem, 1 << SCRYPT_LOG_N, 8, 1);
        let back = KeyPair::from_encrypted_pem(&same, b"pw", "k.key").unwrap();
        assert_eq!(back.public(), pair.public());
        let started = std::time::Instant::now();
        for (n, r, p) in [
            (1 << 40, 8, 1),
            (1 << 15, 65536, 65536),
            (1 << 15, 8, 100_000_000),
            (1 << 22, 8, 1),
            (1 << 15, 0, 1),
            (1 << 15, 8, 0),
        ] {
            let hostile = with_params(&pem, n, r, p);
            let e = KeyPair::from_encrypted_pem(&hostile, b"pw", "k.key").unwrap_err();
            assert!(
                e.message.starts_with("k.key: scrypt parameters") && e.message.contains("bounds"),
                "N={n} r={r} p={p}: {}",
                e.message
            );
        }
        // Refused without running scrypt: six refusals take far less than one derivation
        // at the largest parameters allowed.
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
    }

    #[test]
    fn signatures_verify_only_with_the_right_key_and_payload() {
        let pair = KeyPair::generate();
        let sig = pair.sign(b"payload");
        let public = PublicKey::from_pem(&pair.public().to_pem().unwrap(), "p").unwrap();
        public.verify(b"payload", &sig).unwrap();
        assert!(public.verify(b"payloaD", &sig).is_err());
        assert!(
            KeyPair::generate()
                .public()
                .verify(b"payload", &sig)
                .is_err()
        );
    }
}
