//! The load generator of `benches/update.sh`: CONNECTIONS keep-alive
//! HTTP/1.1 clients, each alternating an API request and a static file,
//! back to back for SECONDS, reconnecting whenever the server closes. Every
//! request is kept with its start time, latency and outcome, so the figures
//! can be split by when the update ran.
//!
//!   update_load ADDR TOKEN CONNECTIONS SECONDS WINDOW_FILE
//!
//! WINDOW_FILE, read at the end, holds `START_MS END_MS` (Unix epoch
//! milliseconds) around `pagodirecto update`. Failed requests are those that
//! got no answer (connection refused, reset or closed mid-request) or a 5xx.
//! A request is never retried: the count is what a naive client would see.
//!
//! Prints one `RESULT key=value …` line. Runs on one thread.

// Figures for people: float conversions of counts far below 2^52 are exact enough.
#![allow(
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::format_push_string
)]

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;

#[path = "support/http1.rs"]
mod http1;
use http1::read_response;

#[derive(Clone, Copy)]
enum Outcome {
    Status(u16),
    Refused,
    Broken,
}

/// One request: when it started (epoch ms), how long it took (µs), how it ended.
struct Sample {
    at_ms: u64,
    micros: u32,
    outcome: Outcome,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, addr, token, connections, seconds, window] = &args[..] else {
        eprintln!("usage: update_load ADDR TOKEN CONNECTIONS SECONDS WINDOW_FILE");
        std::process::exit(2);
    };
    let connections: usize = connections.parse().expect("CONNECTIONS is a number");
    let seconds: u64 = seconds.parse().expect("SECONDS is a number");
    let requests = [
        format!(
            "GET /api/v1/customers?limit=20 HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\r\n"
        ),
        format!("GET / HTTP/1.1\r\nHost: {addr}\r\nAccept-Encoding: br, gzip\r\n\r\n"),
    ];
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let samples: Vec<Sample> = runtime.block_on(async {
        let tasks: Vec<_> = (0..connections)
            .map(|i| tokio::spawn(client(addr.clone(), requests.clone(), i, deadline)))
            .collect();
        let mut all = Vec::new();
        for task in tasks {
            all.extend(task.await.expect("client task"));
        }
        all
    });
    let text = std::fs::read_to_string(window).unwrap_or_default();
    let mut bounds = text
        .split_whitespace()
        .filter_map(|n| n.parse::<u64>().ok());
    let (start, end) = (
        bounds.next().unwrap_or(u64::MAX),
        bounds.next().unwrap_or(u64::MAX),
    );

    let failed = |s: &&Sample| !matches!(s.outcome, Outcome::Status(code) if code < 500);
    let count = |f: fn(&Outcome) -> bool| samples.iter().filter(|s| f(&s.outcome)).count();
    let mut line = format!(
        "RESULT requests={} failed={} refused={} broken={} status_5xx={} swap_ms={}",
        samples.len(),
        samples.iter().filter(failed).count(),
        count(|o| matches!(o, Outcome::Refused)),
        count(|o| matches!(o, Outcome::Broken)),
        count(|o| matches!(o, Outcome::Status(c) if *c >= 500)),
        end.saturating_sub(start),
    );
    for (name, range) in [
        ("before", 0..start),
        ("during", start..end),
        ("after", end..u64::MAX),
    ] {
        let mut micros: Vec<u32> = samples
            .iter()
            .filter(|s| range.contains(&s.at_ms) && matches!(s.outcome, Outcome::Status(_)))
            .map(|s| s.micros)
            .collect();
        micros.sort_unstable();
        let pct = |p: f64| {
            if micros.is_empty() {
                return f64::NAN;
            }
            let i = ((micros.len() as f64 * p).ceil() as usize).saturating_sub(1);
            f64::from(micros[i.min(micros.len() - 1)]) / 1000.0
        };
        line.push_str(&format!(
            " {name}_answered={} {name}_p50_ms={:.1} {name}_p99_ms={:.1} {name}_max_ms={:.1}",
            micros.len(),
            pct(0.50),
            pct(0.99),
            pct(1.0)
        ));
    }
    println!("{line}");
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

async fn client(
    addr: String,
    requests: [String; 2],
    first: usize,
    deadline: Instant,
) -> Vec<Sample> {
    let mut samples = Vec::new();
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut next = first;
    while Instant::now() < deadline {
        let at_ms = now_ms();
        let started = Instant::now();
        let Ok(mut stream) = TcpStream::connect(&addr).await else {
            samples.push(Sample {
                at_ms,
                micros: elapsed_micros(started),
                outcome: Outcome::Refused,
            });
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let mut fresh = true;
        // Requests on this connection until the server closes it.
        while Instant::now() < deadline {
            let request = &requests[next % 2];
            next += 1;
            let at_ms = if fresh { at_ms } else { now_ms() };
            let sent = if fresh { started } else { Instant::now() };
            fresh = false;
            let answer = match stream.write_all(request.as_bytes()).await {
                Ok(()) => read_response(&mut stream, &mut buf)
                    .await
                    .map(|(status, close, _)| (status, close)),
                Err(_) => None,
            };
            let outcome = answer.map_or(Outcome::Broken, |(status, _)| Outcome::Status(status));
            samples.push(Sample {
                at_ms,
                micros: elapsed_micros(sent),
                outcome,
            });
            match answer {
                Some((_, false)) => {}
                _ => break,
            }
        }
    }
    samples
}

fn elapsed_micros(since: Instant) -> u32 {
    u32::try_from(since.elapsed().as_micros()).unwrap_or(u32::MAX)
}
