//! The load generator of `benches/overload.sh`: N keep-alive HTTP/1.1
//! connections, each sending `GET <path>` back to back for a fixed time, and
//! the latency of every response kept with its status, so admitted (200) and
//! shed (503) requests are measured apart; wrk can count statuses but cannot
//! split its latencies by them.
//!
//!   overload ADDR PATH TOKEN CONNECTIONS SECONDS [polite]
//!
//! `polite`: after a 503 a connection waits for its `Retry-After`, as a
//! well-behaved client does; without it, it asks again at once (a flood).
//!
//! Prints one `RESULT key=value …` line. Runs on one thread so it takes at
//! most one core from the daemon it measures.

// Figures for people: float conversions of counts far below 2^52 are exact enough.
#![allow(
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::format_push_string
)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;

#[path = "support/http1.rs"]
mod http1;
use http1::read_response;

#[derive(Default)]
struct Tally {
    /// (status, microseconds) of every response.
    responses: Vec<(u16, u32)>,
    connect_errors: u64,
    io_errors: u64,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let polite = args.get(6).is_some_and(|mode| mode == "polite");
    let [_, addr, path, token, connections, seconds] = &args[..args.len().min(6)] else {
        eprintln!("usage: overload ADDR PATH TOKEN CONNECTIONS SECONDS [polite]");
        std::process::exit(2);
    };
    let connections: usize = connections.parse().expect("CONNECTIONS is a number");
    let seconds: u64 = seconds.parse().expect("SECONDS is a number");
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\r\n");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let tallies = runtime.block_on(async {
        let tasks: Vec<_> = (0..connections)
            .map(|_| tokio::spawn(client(addr.clone(), request.clone(), deadline, polite)))
            .collect();
        let mut out = Vec::new();
        for task in tasks {
            out.push(task.await.expect("client task"));
        }
        out
    });
    let elapsed = started.elapsed().as_secs_f64();
    let mut by_status: BTreeMap<u16, Vec<u32>> = BTreeMap::new();
    let (mut connect_errors, mut io_errors) = (0, 0);
    for tally in tallies {
        connect_errors += tally.connect_errors;
        io_errors += tally.io_errors;
        for (status, micros) in tally.responses {
            by_status.entry(status).or_default().push(micros);
        }
    }
    let total: usize = by_status.values().map(Vec::len).sum();
    let mut line = format!(
        "RESULT connections={connections} seconds={elapsed:.1} responses={total} rps={:.0} connect_errors={connect_errors} io_errors={io_errors}",
        total as f64 / elapsed
    );
    for (status, latencies) in &mut by_status {
        latencies.sort_unstable();
        let pct = |p: f64| {
            let i = ((latencies.len() as f64 * p).ceil() as usize).saturating_sub(1);
            f64::from(latencies[i.min(latencies.len() - 1)]) / 1000.0
        };
        line.push_str(&format!(
            " s{status}_count={} s{status}_p50_ms={:.2} s{status}_p99_ms={:.2} s{status}_max_ms={:.2}",
            latencies.len(),
            pct(0.50),
            pct(0.99),
            pct(1.0)
        ));
    }
    println!("{line}");
}

async fn client(addr: String, request: String, deadline: Instant, polite: bool) -> Tally {
    let mut tally = Tally::default();
    let mut buf = Vec::with_capacity(64 * 1024);
    while Instant::now() < deadline {
        let Ok(mut stream) = TcpStream::connect(&addr).await else {
            tally.connect_errors += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        // Requests on this connection until the server closes it.
        while Instant::now() < deadline {
            let sent = Instant::now();
            if stream.write_all(request.as_bytes()).await.is_err() {
                tally.io_errors += 1;
                break;
            }
            let Some((status, close, retry_after)) = read_response(&mut stream, &mut buf).await
            else {
                tally.io_errors += 1;
                break;
            };
            let micros = u32::try_from(sent.elapsed().as_micros()).unwrap_or(u32::MAX);
            tally.responses.push((status, micros));
            if close {
                break;
            }
            if polite && let Some(secs) = retry_after {
                tokio::time::sleep(Duration::from_secs(secs)).await;
            }
        }
    }
    tally
}
