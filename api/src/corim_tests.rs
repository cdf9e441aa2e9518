//! Tests of the CoRIM encoder: the output is decoded with ciborium and walked field by field
//! (tags 501/506/37, ids, the triple, digests with hash-alg 1, the product's UUIDv5), and a
//! signed CoRIM's COSE_Sign1 signature is checked with the public key.

use super::*;
use ciborium::value::Value;
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::VerifyingKey;

fn decode(bytes: &[u8]) -> Value {
    ciborium::from_reader(bytes).expect("valid CBOR")
}

fn untag(v: Value, tag: u64) -> Value {
    match v {
        Value::Tag(t, inner) if t == tag => *inner,
        other => panic!("expected tag {tag}, got {other:?}"),
    }
}

fn get(map: &Value, key: i64) -> Option<&Value> {
    map.as_map()
        .expect("a map")
        .iter()
        .find(|(k, _)| k.as_integer() == Some(key.into()))
        .map(|(_, v)| v)
}

fn uuid_of(v: &Value) -> Uuid {
    let bytes = untag(v.clone(), TAG_UUID);
    Uuid::from_slice(bytes.as_bytes().expect("uuid bytes")).expect("16 bytes")
}

/// The CoRIM id and the decoded CoMID of an unsigned CoRIM.
fn open(bytes: &[u8]) -> (String, Value) {
    assert_eq!(&bytes[..3], &[0xd9, 0x01, 0xf5], "starts with tag 501");
    let corim = untag(decode(bytes), TAG_UNSIGNED_CORIM);
    let id = get(&corim, 0).unwrap().as_text().unwrap().to_string();
    let tags = get(&corim, 1).unwrap().as_array().unwrap();
    assert_eq!(tags.len(), 1, "one CoMID");
    let comid = untag(tags[0].clone(), TAG_COMID);
    (
        id,
        decode(comid.as_bytes().expect("CoMID as a byte string")),
    )
}

/// (environment, digests) of the CoMID's only reference triple.
fn triple(comid: &Value) -> (Value, Vec<(Value, Vec<u8>)>) {
    let triples = get(comid, 4).unwrap();
    let refs = get(triples, 0).unwrap().as_array().unwrap();
    assert_eq!(refs.len(), 1, "one reference triple");
    let rec = refs[0].as_array().unwrap();
    assert_eq!(rec.len(), 2);
    let digests = rec[1]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let mkey = get(m, 0).unwrap().clone();
            let d = get(get(m, 1).unwrap(), 2).unwrap().as_array().unwrap();
            assert_eq!(d.len(), 1);
            let d = d[0].as_array().unwrap();
            assert_eq!(d[0].as_integer(), Some(DIGEST_ALG.into()), "hash-alg 1");
            (mkey, d[1].as_bytes().unwrap().clone())
        })
        .collect();
    (rec[0].clone(), digests)
}

#[test]
fn tdx_defaults_decode_to_the_upstream_layout() {
    let bytes = unsigned_corim(&ReferenceValues::tdx_defaults());
    let (id, comid) = open(&bytes);
    let suffix = id.strip_prefix("tdx-corim-").expect("tdx corim id");
    assert_eq!(Uuid::parse_str(suffix).unwrap().get_version_num(), 4);
    let ident = get(&comid, 1).unwrap();
    let tag_id = get(ident, 0).unwrap().as_text().unwrap();
    assert!(tag_id.starts_with("tdx-tag-"), "{tag_id}");
    assert_eq!(get(ident, 1), None, "tag version 0 is left out");

    let (env, digests) = triple(&comid);
    let class = get(&env, 0).unwrap();
    assert_eq!(uuid_of(get(class, 0).unwrap()).get_version_num(), 4);
    assert_eq!(get(&env, 1), None, "no product, no instance");
    let values: Vec<String> = digests.iter().map(|(_, d)| hex(d)).collect();
    let mut expected = vec![TDX_DEFAULT_MRTD, TDX_DEFAULT_MRSEAM];
    expected.extend(TDX_DEFAULT_RTMRS);
    assert_eq!(values, expected);
    assert!(values.iter().all(|v| v.len() == 96), "48-byte digests");
    let keys: std::collections::HashSet<Uuid> = digests.iter().map(|(k, _)| uuid_of(k)).collect();
    assert_eq!(keys.len(), 6, "each measurement has its own uuid key");
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn snp_carries_the_measurement_and_the_product_instance() {
    let m: [u8; 48] = std::array::from_fn(|i| i as u8);
    let (id, comid) = open(&unsigned_corim(&ReferenceValues::snp(m, "EPYC-Milan")));
    assert!(id.starts_with("snp-corim-"), "{id}");
    let (env, digests) = triple(&comid);
    assert_eq!(digests.len(), 1);
    assert_eq!(digests[0].1, m.to_vec());
    let instance = uuid_of(get(&env, 1).expect("instance"));
    assert_eq!(instance.get_version_num(), 5);
    assert_eq!(
        instance,
        Uuid::new_v5(&Uuid::NAMESPACE_OID, b"EPYC-Milan"),
        "UUIDv5(OID namespace, product)"
    );
    let no_product = ReferenceValues::snp(m, "");
    assert_eq!(no_product.product, None);
}

#[test]
fn snp_host_data_follows_the_digest_as_a_raw_value_measurement() {
    let m = [7u8; 48];
    let host_data: [u8; 32] = std::array::from_fn(|i| 0xa0 + i as u8);
    let rv = ReferenceValues::snp(m, "EPYC").with_host_data(Some(host_data));
    let (_, comid) = open(&unsigned_corim(&rv));
    let triples = get(&comid, 4).unwrap();
    let rec = get(triples, 0).unwrap().as_array().unwrap()[0].clone();
    let measurements = rec.as_array().unwrap()[1].as_array().unwrap().clone();
    assert_eq!(measurements.len(), 2, "the digest, then the host data");
    let first = get(&measurements[0], 1).unwrap();
    let digest = get(first, 2).unwrap().as_array().unwrap()[0].clone();
    assert_eq!(
        digest.as_array().unwrap()[1].as_bytes().unwrap(),
        &m.to_vec()
    );
    assert_eq!(get(first, 4), None, "the digest carries no raw value");
    let second = get(&measurements[1], 1).unwrap();
    assert_eq!(get(second, 2), None, "host data is not a digest");
    let raw = untag(get(second, 4).expect("raw-value").clone(), TAG_TAGGED_BYTES);
    assert_eq!(raw.as_bytes().unwrap(), &host_data.to_vec());
    let keys = [
        uuid_of(get(&measurements[0], 0).unwrap()),
        uuid_of(get(&measurements[1], 0).unwrap()),
    ];
    assert_ne!(keys[0], keys[1], "each measurement has its own key");

    // Without host data the triple holds the digest only (upstream's layout).
    let (_, comid) = open(&unsigned_corim(&rv.with_host_data(None)));
    let (_, digests) = triple(&comid);
    assert_eq!(digests.len(), 1);
}

#[test]
fn every_call_has_fresh_ids() {
    let rv = ReferenceValues::tdx_defaults();
    let (a, _) = open(&unsigned_corim(&rv));
    let (b, _) = open(&unsigned_corim(&rv));
    assert_ne!(a, b);
}

#[test]
fn unhex_rejects_bad_input() {
    assert_eq!(unhex("00ff"), Some(vec![0, 0xff]));
    assert_eq!(unhex("AbC0"), Some(vec![0xab, 0xc0]));
    assert_eq!(unhex("abc"), None);
    assert_eq!(unhex("zz"), None);
    assert_eq!(unhex("é0"), None);
}

/// A fixed test key (any non-zero scalar below the group order is a valid P-256 key).
fn test_key() -> SigningKey {
    SigningKey::from_slice(&[0x42; 32]).unwrap()
}

/// (protected header bytes, payload, signature) of a tag-18 COSE_Sign1.
fn cose_parts(bytes: &[u8]) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    assert_eq!(bytes[0], 0xd2, "starts with tag 18");
    let msg = untag(decode(bytes), TAG_COSE_SIGN1);
    let a = msg.as_array().unwrap();
    assert_eq!(a.len(), 4);
    assert_eq!(
        a[1].as_map().map(Vec::len),
        Some(0),
        "empty unprotected map"
    );
    let b = |i: usize| a[i].as_bytes().unwrap().clone();
    (b(0), b(2), b(3))
}

#[test]
fn signed_corim_verifies_with_the_public_key_and_wraps_the_corim() {
    let key = test_key();
    let payload = unsigned_corim(&ReferenceValues::tdx_defaults());
    let signed = sign(&payload, &key);
    let (protected, inner, sig) = cose_parts(&signed);
    assert_eq!(inner, payload);
    let hdr = decode(&protected);
    assert_eq!(get(&hdr, 1).unwrap().as_integer(), Some(COSE_ES256.into()));
    assert_eq!(get(&hdr, 3).unwrap().as_text(), Some(RIM_CONTENT_TYPE));
    let meta = decode(get(&hdr, 8).unwrap().as_bytes().unwrap());
    let signer = get(get(&meta, 0).unwrap(), 0).unwrap();
    assert_eq!(signer.as_text(), Some(SIGNER_NAME));

    let vk = VerifyingKey::from(&key);
    let sig = Signature::from_slice(&sig).expect("64-byte r||s");
    vk.verify(&sig_structure(&protected, &inner), &sig)
        .expect("signature verifies");
    let other = VerifyingKey::from(&SigningKey::from_slice(&[0x43; 32]).unwrap());
    assert!(other
        .verify(&sig_structure(&protected, &inner), &sig)
        .is_err());
    let mut tampered = inner.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    assert!(vk
        .verify(&sig_structure(&protected, &tampered), &sig)
        .is_err());
}
