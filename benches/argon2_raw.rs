//! Raw Argon2id throughput with the service's parameters, as a ceiling for `/v1/login`.
//!
//! One thread per core, each reusing one memory block through
//! `Argon2::hash_password_into_with_memory` (as the service's hashing pool does, see
//! `src/crypto/password.rs`), hashing for `BENCH_SECONDS` (default 5) seconds. The
//! parameters come from the same environment variables as the service, with the same
//! defaults: `TESSERA__PASSWORD__MEMORY_KIB` (19456), `TESSERA__PASSWORD__ITERATIONS` (2),
//! `TESSERA__PASSWORD__PARALLELISM` (1). Unlike the service, the threads run at normal
//! priority and there is no HTTP, database or JWT work: this is the upper bound.
//!
//! Prints a human line, then exactly one machine-readable line:
//! `argon2_raw_verifies_per_sec=<float>`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use argon2::{Algorithm, Argon2, Block, Params, Version};

const SALT: [u8; 16] = *b"tessera-bench-sa";
const OUTPUT_LEN: usize = 32;
const PASSWORD: &[u8] = b"correct horse battery staple";

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> Result<T, String> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .map_err(|_| format!("{name}={v:?} is not a valid number")),
        _ => Ok(default),
    }
}

fn run() -> Result<(), String> {
    let memory_kib: u32 = env_or("TESSERA__PASSWORD__MEMORY_KIB", 19 * 1024)?;
    let iterations: u32 = env_or("TESSERA__PASSWORD__ITERATIONS", 2)?;
    let parallelism: u32 = env_or("TESSERA__PASSWORD__PARALLELISM", 1)?;
    let seconds: f64 = env_or("BENCH_SECONDS", 5.0)?;
    if !(seconds.is_finite() && seconds > 0.0) {
        return Err(format!("BENCH_SECONDS must be positive, got {seconds}"));
    }
    let params = Params::new(memory_kib, iterations, parallelism, Some(OUTPUT_LEN))
        .map_err(|e| format!("invalid Argon2 parameters: {e}"))?;
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);

    // Fail before timing anything if the parameters are unusable.
    {
        let mut memory = vec![Block::default(); params.block_count()];
        let mut out = [0u8; OUTPUT_LEN];
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
            .hash_password_into_with_memory(PASSWORD, &SALT, &mut out, &mut memory)
            .map_err(|e| format!("argon2 failed: {e}"))?;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|i| {
            let stop = Arc::clone(&stop);
            let params = params.clone();
            std::thread::Builder::new()
                .name(format!("argon2-bench-{i}"))
                .spawn(move || -> Result<u64, String> {
                    let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
                    let mut memory = vec![Block::default(); argon2.params().block_count()];
                    let mut out = [0u8; OUTPUT_LEN];
                    let mut done = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        argon2
                            .hash_password_into_with_memory(PASSWORD, &SALT, &mut out, &mut memory)
                            .map_err(|e| format!("argon2 failed: {e}"))?;
                        std::hint::black_box(&out);
                        done += 1;
                    }
                    Ok(done)
                })
                .map_err(|e| format!("cannot spawn a thread: {e}"))
        })
        .collect::<Result<_, _>>()?;

    std::thread::sleep(Duration::from_secs_f64(seconds));
    stop.store(true, Ordering::Relaxed);
    let mut total = 0u64;
    for w in workers {
        total += w
            .join()
            .map_err(|_| "a benchmark thread panicked".to_string())??;
    }
    // Hashes still in flight when `stop` was set finish after the deadline; count the real
    // elapsed time so they are not credited for free.
    let elapsed = start.elapsed().as_secs_f64();
    let rate = total as f64 / elapsed;

    println!(
        "argon2id m={memory_kib} KiB t={iterations} p={parallelism}, {threads} thread(s) \
         reusing one block each: {total} hashes in {elapsed:.2} s = {rate:.2}/s \
         ({:.2}/s per thread, {:.1} ms per hash)",
        rate / threads as f64,
        1000.0 * elapsed * threads as f64 / total.max(1) as f64,
    );
    println!("argon2_raw_verifies_per_sec={rate:.3}");
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("argon2_raw: {e}");
            ExitCode::FAILURE
        }
    }
}
