//! Access-token signing cost per algorithm against the raw signature (DESIGN §5, issue 3).
//!
//! For ES256, EdDSA and RS256, on a key from `KeyMaterial::generate`:
//!
//! - `tessera`: `tessera::crypto::jwt::Signer::sign` on a realistic `AccessClaims` (what the
//!   service does per login and refresh: serialise, base64url, sign, join);
//! - `raw`: the bare signature of the same key over a message of the same length as that
//!   token's signing input, with the key parsed once: ring `EcdsaKeyPair::sign` (P-256),
//!   ring `Ed25519KeyPair::sign`, aws-lc-rs `rsa::KeyPair::sign` with `RSA_PKCS1_SHA256`;
//! - `jsonwebtoken`: the naive way, `jsonwebtoken::encode` with an `EncodingKey` built once
//!   (jsonwebtoken re-parses the private key inside every call);
//! - `aws-lc-rs` (ES256 and EdDSA only, for information): the bare aws-lc-rs signature of the
//!   same key and message, which is what jsonwebtoken signs with; for RS256 it is `raw`.
//!
//! The three run in interleaved batches of about 20 ms each, rotating their order, for
//! `BENCH_SECONDS` (default 5) seconds in all, split evenly across the algorithms. The
//! ratios are the median over rounds of the per-batch ratio to the raw batch of the same
//! round, so a burst of foreign CPU load that hits one round does not skew them; the means
//! are total time over total signatures. Target: `tessera` ≤ 1.1 × raw.
//!
//! Prints a human table, then machine-readable lines per algorithm:
//! `sign_<ALG>_tessera_us=`, `sign_<ALG>_raw_us=`, `sign_<ALG>_jsonwebtoken_us=`,
//! `sign_<ALG>_ratio=`, `sign_<ALG>_jsonwebtoken_ratio=`, `sign_<ALG>_token_bytes=`,
//! `sign_<ALG>_input_bytes=`, and for ES256 / EdDSA `sign_<ALG>_awslc_us=`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use tessera::crypto::jwt::{AccessClaims, Signer, ACCESS_TOKEN_TYP};
use tessera::crypto::keys::{KeyAlg, KeyMaterial};

const BATCH_TARGET: Duration = Duration::from_millis(20);
const MIN_ROUNDS: usize = 5;

/// Claims as `Accounts::issue` builds them for a user with one role. Built from JSON so that
/// fields the token does not carry (e.g. a `#[serde(skip)]` `kid`) take their defaults.
fn realistic_claims() -> Result<AccessClaims, String> {
    let now = tessera::domain::now();
    serde_json::from_value(serde_json::json!({
        "iss": "https://id.example.com",
        "sub": uuid::Uuid::now_v7().to_string(),
        "aud": "api",
        "exp": now + 900,
        "iat": now,
        "nbf": now,
        "jti": uuid::Uuid::new_v4().to_string(),
        "sid": uuid::Uuid::now_v7().to_string(),
        "roles": ["user"],
    }))
    .map_err(|e| format!("AccessClaims no longer deserialise from the realistic claims: {e}"))
}

enum Raw {
    Es256(EcdsaKeyPair, SystemRandom),
    EdDsa(Ed25519KeyPair),
    Rs256(aws_lc_rs::rsa::KeyPair, Vec<u8>),
}

impl Raw {
    fn new(material: &KeyMaterial) -> Result<Raw, String> {
        let der = material.private_der.as_slice();
        Ok(match material.alg {
            KeyAlg::Es256 => {
                let rng = SystemRandom::new();
                let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng)
                    .map_err(|e| format!("ring rejects the P-256 key: {e}"))?;
                Raw::Es256(key, rng)
            }
            KeyAlg::EdDsa => Raw::EdDsa(
                Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
                    .map_err(|e| format!("ring rejects the Ed25519 key: {e}"))?,
            ),
            KeyAlg::Rs256 => {
                let key = aws_lc_rs::rsa::KeyPair::from_der(der)
                    .map_err(|e| format!("aws-lc-rs rejects the RSA key: {e}"))?;
                let sig = vec![0u8; key.public_modulus_len()];
                Raw::Rs256(key, sig)
            }
        })
    }

    fn sign(&mut self, message: &[u8]) {
        match self {
            Raw::Es256(key, rng) => {
                black_box(key.sign(rng, message).expect("ECDSA signing failed"));
            }
            Raw::EdDsa(key) => {
                black_box(key.sign(message));
            }
            Raw::Rs256(key, sig) => {
                key.sign(
                    &aws_lc_rs::signature::RSA_PKCS1_SHA256,
                    &aws_lc_rs::rand::SystemRandom::new(),
                    message,
                    sig,
                )
                .expect("RSA signing failed");
                black_box(&sig);
            }
        }
    }
}

/// The same key signed with aws-lc-rs (jsonwebtoken's backend), for P-256 and Ed25519.
enum AwsRaw {
    Es256(
        aws_lc_rs::signature::EcdsaKeyPair,
        aws_lc_rs::rand::SystemRandom,
    ),
    EdDsa(aws_lc_rs::signature::Ed25519KeyPair),
}

impl AwsRaw {
    fn new(material: &KeyMaterial) -> Result<Option<AwsRaw>, String> {
        let der = material.private_der.as_slice();
        Ok(match material.alg {
            KeyAlg::Es256 => Some(AwsRaw::Es256(
                aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(
                    &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                    der,
                )
                .map_err(|e| format!("aws-lc-rs rejects the P-256 key: {e}"))?,
                aws_lc_rs::rand::SystemRandom::new(),
            )),
            KeyAlg::EdDsa => Some(AwsRaw::EdDsa(
                aws_lc_rs::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
                    .map_err(|e| format!("aws-lc-rs rejects the Ed25519 key: {e}"))?,
            )),
            KeyAlg::Rs256 => None,
        })
    }

    fn sign(&self, message: &[u8]) {
        match self {
            AwsRaw::Es256(key, rng) => {
                black_box(key.sign(rng, message).expect("ECDSA signing failed"));
            }
            AwsRaw::EdDsa(key) => {
                black_box(key.sign(message));
            }
        }
    }
}

fn naive_key(material: &KeyMaterial) -> jsonwebtoken::EncodingKey {
    let der = material.private_der.as_slice();
    match material.alg {
        KeyAlg::Es256 => jsonwebtoken::EncodingKey::from_ec_der(der),
        KeyAlg::EdDsa => jsonwebtoken::EncodingKey::from_ed_der(der),
        KeyAlg::Rs256 => jsonwebtoken::EncodingKey::from_rsa_der(der),
    }
}

#[derive(Default)]
struct Tally {
    nanos: u128,
    ops: u64,
}

impl Tally {
    fn add(&mut self, elapsed: Duration, ops: u64) {
        self.nanos += elapsed.as_nanos();
        self.ops += ops;
    }

    fn mean_us(&self) -> f64 {
        self.nanos as f64 / self.ops.max(1) as f64 / 1000.0
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// How many calls of `f` take about `BATCH_TARGET`.
fn calibrate(mut f: impl FnMut()) -> u64 {
    let mut n: u64 = 1;
    loop {
        let start = Instant::now();
        for _ in 0..n {
            f();
        }
        let took = start.elapsed();
        if took >= BATCH_TARGET / 4 || n >= 1 << 24 {
            let per = took.as_secs_f64() / n as f64;
            return ((BATCH_TARGET.as_secs_f64() / per.max(1e-9)) as u64).max(1);
        }
        n *= 4;
    }
}

fn time_batch(n: u64, mut f: impl FnMut()) -> Duration {
    let start = Instant::now();
    for _ in 0..n {
        f();
    }
    start.elapsed()
}

struct Result1 {
    alg: KeyAlg,
    token_bytes: usize,
    input_bytes: usize,
    rounds: usize,
    tessera: Tally,
    raw: Tally,
    naive: Tally,
    awslc: Option<Tally>,
    /// Median over rounds of tessera / raw.
    ratio: f64,
    /// Median over rounds of jsonwebtoken / raw.
    naive_ratio: f64,
}

fn bench_alg(alg: KeyAlg, budget: Duration) -> Result<Result1, String> {
    let material = KeyMaterial::generate(alg).map_err(|e| format!("{alg}: {e}"))?;
    let kid = uuid::Uuid::now_v7().to_string();
    let signer = Signer::new(&kid, &material).map_err(|e| format!("{alg}: {e}"))?;
    let claims = realistic_claims()?;
    let token = signer.sign(&claims).map_err(|e| format!("{alg}: {e}"))?;
    let input_len = token
        .rfind('.')
        .ok_or_else(|| format!("{alg}: the token has no signature part"))?;
    // The raw signature runs over a message exactly as long as the token's signing input.
    let message = token.as_bytes()[..input_len].to_vec();
    let mut raw = Raw::new(&material)?;
    let aws = AwsRaw::new(&material)?;

    let encoding_key = naive_key(&material);
    let mut header = jsonwebtoken::Header::new(alg.jwt_algorithm());
    header.typ = Some(ACCESS_TOKEN_TYP.into());
    header.kid = Some(kid.clone());
    let naive_token = jsonwebtoken::encode(&header, &claims, &encoding_key)
        .map_err(|e| format!("{alg}: jsonwebtoken::encode failed: {e}"))?;
    // Same header and claims: the naive token's signing input is as long as ours, give or
    // take header member order.
    let naive_input = naive_token.rfind('.').unwrap_or(0);
    if naive_input.abs_diff(input_len) > 8 {
        return Err(format!(
            "{alg}: jsonwebtoken's signing input is {naive_input} bytes, ours {input_len}"
        ));
    }

    let mut sign_tessera = || {
        black_box(
            signer
                .sign(black_box(&claims))
                .expect("Signer::sign failed"),
        );
    };
    let mut sign_raw = || raw.sign(black_box(&message));
    let mut sign_naive = || {
        black_box(
            jsonwebtoken::encode(black_box(&header), black_box(&claims), &encoding_key)
                .expect("jsonwebtoken::encode failed"),
        );
    };

    // Warm up and size the batches.
    let n_tessera = calibrate(&mut sign_tessera);
    let n_raw = calibrate(&mut sign_raw);
    let n_naive = calibrate(&mut sign_naive);
    let n_aws = match &aws {
        Some(a) => calibrate(|| a.sign(black_box(&message))),
        None => 0,
    };
    let mut awslc = aws.as_ref().map(|_| Tally::default());

    let (mut t, mut r, mut j) = (Tally::default(), Tally::default(), Tally::default());
    let mut ratios = Vec::new();
    let mut naive_ratios = Vec::new();
    let start = Instant::now();
    let mut round = 0usize;
    while round < MIN_ROUNDS || start.elapsed() < budget {
        // Rotate the order so that no variant always runs first (cache, frequency).
        let (mut bt, mut br, mut bj) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
        for slot in 0..3 {
            match (slot + round) % 3 {
                0 => bt = time_batch(n_tessera, &mut sign_tessera),
                1 => br = time_batch(n_raw, &mut sign_raw),
                _ => bj = time_batch(n_naive, &mut sign_naive),
            }
        }
        if let (Some(a), Some(tally)) = (&aws, awslc.as_mut()) {
            tally.add(time_batch(n_aws, || a.sign(black_box(&message))), n_aws);
        }
        t.add(bt, n_tessera);
        r.add(br, n_raw);
        j.add(bj, n_naive);
        let raw_per = br.as_secs_f64() / n_raw as f64;
        ratios.push(bt.as_secs_f64() / n_tessera as f64 / raw_per);
        naive_ratios.push(bj.as_secs_f64() / n_naive as f64 / raw_per);
        round += 1;
    }
    Ok(Result1 {
        alg,
        token_bytes: token.len(),
        input_bytes: input_len,
        rounds: round,
        tessera: t,
        raw: r,
        naive: j,
        awslc,
        ratio: median(ratios),
        naive_ratio: median(naive_ratios),
    })
}

fn run() -> Result<(), String> {
    let seconds: f64 = match std::env::var("BENCH_SECONDS") {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .map_err(|_| format!("BENCH_SECONDS={v:?} is not a number"))?,
        _ => 5.0,
    };
    if !(seconds.is_finite() && seconds > 0.0) {
        return Err(format!("BENCH_SECONDS must be positive, got {seconds}"));
    }
    let budget = Duration::from_secs_f64(seconds / KeyAlg::ALL.len() as f64);
    let mut results = Vec::new();
    for alg in KeyAlg::ALL {
        results.push(bench_alg(alg, budget)?);
    }
    println!(
        "signing: mean time per token; ratio = median over rounds of (per-batch mean / raw per-batch mean)"
    );
    println!(
        "{:<6} {:>6} {:>11} {:>9} {:>16} {:>7} {:>10} {:>13} {:>7}",
        "alg",
        "bytes",
        "tessera µs",
        "raw µs",
        "jsonwebtoken µs",
        "ratio",
        "jwt ratio",
        "aws-lc-rs µs",
        "rounds"
    );
    for res in &results {
        let aws = res
            .awslc
            .as_ref()
            .map_or("(= raw)".to_string(), |t| format!("{:.2}", t.mean_us()));
        println!(
            "{:<6} {:>6} {:>11.2} {:>9.2} {:>16.2} {:>7.3} {:>10.3} {:>13} {:>7}",
            res.alg.as_str(),
            res.token_bytes,
            res.tessera.mean_us(),
            res.raw.mean_us(),
            res.naive.mean_us(),
            res.ratio,
            res.naive_ratio,
            aws,
            res.rounds,
        );
    }
    for res in &results {
        let a = res.alg.as_str();
        println!("sign_{a}_token_bytes={}", res.token_bytes);
        println!("sign_{a}_input_bytes={}", res.input_bytes);
        println!("sign_{a}_tessera_us={:.3}", res.tessera.mean_us());
        println!("sign_{a}_raw_us={:.3}", res.raw.mean_us());
        println!("sign_{a}_jsonwebtoken_us={:.3}", res.naive.mean_us());
        println!("sign_{a}_ratio={:.3}", res.ratio);
        println!("sign_{a}_jsonwebtoken_ratio={:.3}", res.naive_ratio);
        if let Some(t) = &res.awslc {
            println!("sign_{a}_awslc_us={:.3}", t.mean_us());
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("signing: {e}");
            ExitCode::FAILURE
        }
    }
}
