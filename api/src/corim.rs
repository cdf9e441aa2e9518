//! The CoRIM that AttestationPolicy returns (spec §4.4), encoded by hand with `ciborium` in
//! the layout veraison/corim produces: a tag-501 unsigned CoRIM holding one tag-506 CoMID with
//! one reference-value triple, every digest labelled hash-alg 1 as upstream does. SNP host data
//! (when the manager sets it) follows the digests as one more measurement whose value is a
//! `raw-value` (tagged-bytes): upstream hands it to its generator, which drops it. With a key
//! the CoRIM is wrapped in a COSE_Sign1 (tag 18, ES256) whose protected header carries the
//! algorithm, the `application/rim+cbor` content type and a corim-meta signer.

use ciborium::value::{Integer, Value};
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use uuid::Uuid;

/// CBOR tag of an unsigned CoRIM.
pub const TAG_UNSIGNED_CORIM: u64 = 501;
/// CBOR tag of a CoMID inside a CoRIM's `tags` array.
pub const TAG_COMID: u64 = 506;
/// CBOR tag of a binary UUID.
pub const TAG_UUID: u64 = 37;
/// CBOR tag of `tagged-bytes`, the form of a measurement's `raw-value`.
pub const TAG_TAGGED_BYTES: u64 = 560;
/// CBOR tag of a COSE_Sign1 message.
pub const TAG_COSE_SIGN1: u64 = 18;
/// The hash-alg label upstream puts on every digest (sha-256, even for 48-byte values).
pub const DIGEST_ALG: i64 = 1;
/// COSE algorithm id of ES256.
pub const COSE_ES256: i64 = -7;
/// Content type of a signed CoRIM's payload.
pub const RIM_CONTENT_TYPE: &str = "application/rim+cbor";
/// Signer name in the corim-meta header.
pub const SIGNER_NAME: &str = "cvmm manager";

/// TDX reference values used when nothing better is known (upstream `corimgen` defaults).
pub const TDX_DEFAULT_MRTD: &str = "91eb2b44d141d4ece09f0c75c2c53d247a3c68edd7fafe8a3520c942a604a407de03ae6dc5f87f27428b2538873118b7";
/// Default MRSEAM.
pub const TDX_DEFAULT_MRSEAM: &str = "5b38e33a6487958b72c3c12a938eaa5e3fd4510c51aeeab58c7d5ecee41d7c436489d6c8e4f92f160b7cad34207b00c1";
/// Default RTMR0..3.
pub const TDX_DEFAULT_RTMRS: [&str; 4] = [
    "ce0891f46a18db93e7691f1cf73ed76593f7dec1b58f0927ccb56a99242bf63bc9551561f9ee7833d40395fae59547ab",
    "062ac322e26b10874a84977a09735408a856aec77ff62b4975b1e90e33c18f05220ea522cdbffc3b2cf4451cc209e418",
    "5fd86e8c3d5e45386f1ed0852de7e83ae1b774ee4366bd5213c9890e8e3ac8fad3f7e690891d37f7c81ac20a445cc0ff",
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
];

/// The platform named in the CoRIM and tag ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Platform {
    /// AMD SEV-SNP.
    Snp,
    /// Intel TDX (also what hosts without a TEE get, as upstream).
    Tdx,
}

impl Platform {
    /// `"snp"` or `"tdx"`.
    pub fn name(self) -> &'static str {
        match self {
            Platform::Snp => "snp",
            Platform::Tdx => "tdx",
        }
    }
}

/// What goes into one CoRIM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReferenceValues {
    /// The platform.
    pub platform: Platform,
    /// Digests in order (SNP: the launch measurement; TDX: MRTD, MRSEAM, RTMR0..3).
    pub digests: Vec<Vec<u8>>,
    /// Product name (the CPU model on SNP); becomes the environment's instance UUIDv5.
    pub product: Option<String>,
    /// SNP host data the launch set, a `raw-value` measurement after the digests.
    pub host_data: Option<[u8; 32]>,
}

impl ReferenceValues {
    /// The upstream TDX defaults.
    pub fn tdx_defaults() -> Self {
        let digests = [TDX_DEFAULT_MRTD, TDX_DEFAULT_MRSEAM]
            .into_iter()
            .chain(TDX_DEFAULT_RTMRS)
            .map(|h| unhex(h).unwrap_or_default())
            .collect();
        Self {
            platform: Platform::Tdx,
            digests,
            product: None,
            host_data: None,
        }
    }

    /// An SNP policy with the launch digest `measurement` of a guest on `product`.
    pub fn snp(measurement: [u8; 48], product: &str) -> Self {
        Self {
            platform: Platform::Snp,
            digests: vec![measurement.to_vec()],
            product: (!product.is_empty()).then(|| product.to_string()),
            host_data: None,
        }
    }

    /// The same values with the SNP host data the launch sets (`None`: none set).
    pub fn with_host_data(self, host_data: Option<[u8; 32]>) -> Self {
        Self { host_data, ..self }
    }
}

/// Decodes lower- or upper-case hex; `None` on odd length or a non-hex digit.
pub fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

fn int(i: i64) -> Value {
    Value::Integer(Integer::from(i))
}

fn tagged_uuid(u: Uuid) -> Value {
    Value::Tag(TAG_UUID, Box::new(Value::Bytes(u.as_bytes().to_vec())))
}

/// CBOR bytes of a value. Writing into a `Vec` only fails for values ciborium cannot encode,
/// which this module never builds.
pub fn to_cbor(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    if let Err(e) = ciborium::into_writer(v, &mut out) {
        tracing::error!(error = %e, "CBOR encoding failed");
    }
    out
}

fn measurement(digest: &[u8]) -> Value {
    let digests = Value::Array(vec![Value::Array(vec![
        int(DIGEST_ALG),
        Value::Bytes(digest.to_vec()),
    ])]);
    Value::Map(vec![
        (int(0), tagged_uuid(Uuid::new_v4())),
        (int(1), Value::Map(vec![(int(2), digests)])),
    ])
}

/// A measurement whose value is a raw value (`raw-value`: tagged-bytes) rather than a digest.
fn raw_value_measurement(value: &[u8]) -> Value {
    let raw = Value::Tag(TAG_TAGGED_BYTES, Box::new(Value::Bytes(value.to_vec())));
    Value::Map(vec![
        (int(0), tagged_uuid(Uuid::new_v4())),
        (int(1), Value::Map(vec![(int(4), raw)])),
    ])
}

fn environment(product: Option<&str>) -> Value {
    let class = Value::Map(vec![(int(0), tagged_uuid(Uuid::new_v4()))]);
    let mut env = vec![(int(0), class)];
    if let Some(p) = product {
        env.push((
            int(1),
            tagged_uuid(Uuid::new_v5(&Uuid::NAMESPACE_OID, p.as_bytes())),
        ));
    }
    Value::Map(env)
}

/// The CoMID (concise-mid-tag): tag identity and one reference-value triple.
fn comid(rv: &ReferenceValues) -> Value {
    let tag_id = format!("{}-tag-{}", rv.platform.name(), Uuid::new_v4());
    let triple = Value::Array(vec![
        environment(rv.product.as_deref()),
        Value::Array(
            rv.digests
                .iter()
                .map(|d| measurement(d))
                .chain(rv.host_data.iter().map(|h| raw_value_measurement(h)))
                .collect(),
        ),
    ]);
    Value::Map(vec![
        (int(1), Value::Map(vec![(int(0), Value::Text(tag_id))])),
        (
            int(4),
            Value::Map(vec![(int(0), Value::Array(vec![triple]))]),
        ),
    ])
}

/// The tag-501 unsigned CoRIM, CBOR-encoded. Ids and keys are fresh uuids on every call.
pub fn unsigned_corim(rv: &ReferenceValues) -> Vec<u8> {
    let id = format!("{}-corim-{}", rv.platform.name(), Uuid::new_v4());
    let tags = Value::Array(vec![Value::Tag(
        TAG_COMID,
        Box::new(Value::Bytes(to_cbor(&comid(rv)))),
    )]);
    let map = Value::Map(vec![(int(0), Value::Text(id)), (int(1), tags)]);
    to_cbor(&Value::Tag(TAG_UNSIGNED_CORIM, Box::new(map)))
}

/// The encoded protected header of a signed CoRIM.
fn protected_header() -> Vec<u8> {
    let signer = Value::Map(vec![(int(0), Value::Text(SIGNER_NAME.into()))]);
    let meta = Value::Map(vec![(int(0), signer)]);
    to_cbor(&Value::Map(vec![
        (int(1), int(COSE_ES256)),
        (int(3), Value::Text(RIM_CONTENT_TYPE.into())),
        (int(8), Value::Bytes(to_cbor(&meta))),
    ]))
}

/// The COSE `Sig_structure` for a Sign1 message with no external AAD.
pub fn sig_structure(protected: &[u8], payload: &[u8]) -> Vec<u8> {
    to_cbor(&Value::Array(vec![
        Value::Text("Signature1".into()),
        Value::Bytes(protected.to_vec()),
        Value::Bytes(Vec::new()),
        Value::Bytes(payload.to_vec()),
    ]))
}

/// `payload` (an encoded CoRIM) wrapped in a tag-18 COSE_Sign1 signed with ES256.
pub fn sign(payload: &[u8], key: &SigningKey) -> Vec<u8> {
    let protected = protected_header();
    let sig: Signature = key.sign(&sig_structure(&protected, payload));
    let msg = Value::Array(vec![
        Value::Bytes(protected),
        Value::Map(Vec::new()),
        Value::Bytes(payload.to_vec()),
        Value::Bytes(sig.to_bytes().to_vec()),
    ]);
    to_cbor(&Value::Tag(TAG_COSE_SIGN1, Box::new(msg)))
}

#[cfg(test)]
#[path = "corim_tests.rs"]
mod tests;
