//! `jina-loadgen`: a load generator for a `jina-embed serve` on this machine.
//!
//! N concurrent clients send `POST /v1/embeddings` requests with mixed tasks, texts of 10 to
//! 8000 tokens (log-uniform), some of them late-chunked (`true` and `"long"`), until a request
//! count or a duration is reached. It reports throughput, p50/p95/p99 latency, the responses by
//! status and, given the server's pid, the server's resident memory over time (VmRSS from
//! `/proc/<pid>/status`). It only ever connects to a loopback address: any other host is
//! refused, so it cannot be pointed at someone else's server. With `--disconnect`, a share of the
//! clients go away mid-request (the server must cancel their work).
//!
//! Example:
//! `jina-loadgen --url http://127.0.0.1:8080 --clients 8 --duration 60 --pid "$(pgrep -n jina-embed)" --json report.json`

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Parser;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Load generator for a jina-embed server on loopback (127.0.0.1, ::1, localhost only).
#[derive(Parser, Debug)]
#[command(name = "jina-loadgen", version)]
struct Args {
    /// Base URL of the server; its host must be a loopback address.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Concurrent clients (each sends one request at a time).
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Stop after this many requests in all.
    #[arg(long, default_value_t = 100_000)]
    requests: u64,
    /// Stop sending after this many seconds (requests in flight then still finish).
    #[arg(long, default_value_t = 60.0)]
    duration: f64,
    /// Shortest input, in tokens (about one token per word).
    #[arg(long, default_value_t = 10)]
    min_tokens: usize,
    /// Longest input, in tokens.
    #[arg(long, default_value_t = 8000)]
    max_tokens: usize,
    /// Share of requests that are late-chunked (half of them `"long"`).
    #[arg(long, default_value_t = 0.2)]
    late_chunking: f64,
    /// Pid of the server, to sample its resident memory.
    #[arg(long)]
    pid: Option<u32>,
    /// Milliseconds between two memory samples.
    #[arg(long, default_value_t = 250)]
    rss_interval_ms: u64,
    /// Seconds one request may take before it counts as `timeout`.
    #[arg(long, default_value_t = 300.0)]
    timeout: f64,
    /// API key sent as a bearer token.
    #[arg(long, env = "JINA_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Seed of the request mix.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Share of requests whose client goes away: it sends the whole request, waits up to
    /// `--disconnect-after-ms` (uniform), and closes the connection without reading the answer
    /// (counted as `disconnected`). The server must cancel their work and stay healthy.
    #[arg(long, default_value_t = 0.0)]
    disconnect: f64,
    /// Longest wait before a disconnecting client closes, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    disconnect_after_ms: u64,
}

const TASKS: [&str; 6] = [
    "retrieval.query",
    "retrieval.passage",
    "text-matching",
    "classification",
    "separation",
    "none",
];
const WORDS: [&str; 12] = [
    "word", "river", "seven", "cloud", "stone", "paper", "light", "north", "quiet", "table",
    "green", "music",
];

/// The server's address, if `url` is `http://HOST[:PORT][/]` with a loopback HOST.
fn loopback_address(url: &str) -> anyhow::Result<(SocketAddr, String)> {
    let rest = url
        .strip_prefix("http://")
        .context("the URL must start with http:// (no TLS on loopback)")?;
    let authority = rest.trim_end_matches('/');
    if authority.contains('/') || authority.contains('@') || authority.is_empty() {
        bail!("the URL must be http://HOST[:PORT], got {url}");
    }
    let with_port = if authority.ends_with(']')
        || !authority.contains(':')
        || authority.matches(':').count() > 1 && !authority.starts_with('[')
    {
        format!("{authority}:80")
    } else {
        authority.to_string()
    };
    let host = with_port
        .rsplit_once(':')
        .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
        .unwrap_or("");
    let named_loopback = host.eq_ignore_ascii_case("localhost");
    let literal_loopback = host
        .parse::<IpAddr>()
        .map(|ip| ip.is_loopback())
        .unwrap_or(false);
    if !named_loopback && !literal_loopback {
        bail!("refusing to load {host}: jina-loadgen only targets loopback (127.0.0.1, ::1, localhost)");
    }
    let addrs: Vec<SocketAddr> = with_port
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {with_port}"))?
        .collect();
    // `localhost` must resolve to loopback too (a hosts file could say otherwise).
    let addr = addrs
        .into_iter()
        .find(|a| a.ip().is_loopback())
        .context("the host does not resolve to a loopback address")?;
    Ok((addr, authority.to_string()))
}

/// SplitMix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        jina_engine::fixture::mix64(self.0)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn text(rng: &mut Rng, tokens: usize) -> String {
    let mut out = String::with_capacity(tokens * 6);
    for i in 0..tokens.max(1) {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(WORDS[rng.below(WORDS.len())]);
    }
    out
}

/// One request of the mix: its JSON body.
fn request_body(rng: &mut Rng, args: &Args) -> Value {
    let (lo, hi) = (
        args.min_tokens.max(1) as f64,
        args.max_tokens.max(args.min_tokens).max(1) as f64,
    );
    let tokens = (lo * (hi / lo).powf(rng.unit())).round() as usize;
    let task = TASKS[rng.below(TASKS.len())];
    if rng.unit() < args.late_chunking {
        let chunks = 2 + rng.below(4);
        let input: Vec<String> = (0..chunks)
            .map(|_| text(rng, (tokens / chunks).max(1)))
            .collect();
        // `true` only where the joined text surely fits the 8192-token limit.
        let mode = if tokens < 4000 && rng.below(2) == 0 {
            json!(true)
        } else {
            json!("long")
        };
        json!({"input": input, "task": task, "late_chunking": mode})
    } else {
        let inputs = 1 + rng.below(3);
        let input: Vec<String> = (0..inputs)
            .map(|_| text(rng, (tokens / inputs).max(1)))
            .collect();
        if rng.below(2) == 0 {
            json!({"input": input, "task": task, "encoding_format": "base64", "truncate": true})
        } else {
            json!({"input": input, "task": task, "dimensions": 64, "embedding_type": ["float", "ubinary"], "truncate": true})
        }
    }
}

/// Sends one request on a fresh connection, waits `after`, then closes it unread.
async fn send_and_leave(
    addr: SocketAddr,
    host: &str,
    key: Option<&str>,
    body: &[u8],
    after: Duration,
) -> std::io::Result<()> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let auth = key
        .map(|k| format!("Authorization: Bearer {k}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "POST /v1/embeddings HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n{auth}\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    tokio::time::sleep(after).await;
    drop(stream);
    Ok(())
}

/// Sends one request on a fresh connection (`Connection: close`); returns the status and body.
async fn send(
    addr: SocketAddr,
    host: &str,
    key: Option<&str>,
    body: &[u8],
) -> std::io::Result<(u16, Vec<u8>)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let auth = key
        .map(|k| format!("Authorization: Bearer {k}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "POST /v1/embeddings HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n{auth}\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "malformed HTTP response");
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(bad)?;
    let head = String::from_utf8_lossy(&raw[..end]).to_string();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    let mut body = raw[end + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = Vec::new();
        let mut rest = &body[..];
        while let Some(line) = rest.windows(2).position(|w| w == b"\r\n") {
            let size = usize::from_str_radix(String::from_utf8_lossy(&rest[..line]).trim(), 16)
                .map_err(|_| bad())?;
            if size == 0 {
                break;
            }
            let start = line + 2;
            out.extend_from_slice(rest.get(start..start + size).ok_or_else(bad)?);
            rest = rest.get(start + size + 2..).unwrap_or(&[]);
        }
        body = out;
    }
    Ok((status, body))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[derive(Default)]
struct Tally {
    by_status: BTreeMap<String, u64>,
    latencies_ok_ms: Vec<f64>,
    latencies_all_ms: Vec<f64>,
    tokens: u64,
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(args) {
        eprintln!("error: {e:#}");
        std::process::exit(2);
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let (addr, host) = loopback_address(&args.url)?;
    if args.clients == 0 {
        bail!("--clients must be at least 1");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(load(Arc::new(args), addr, host))
}

async fn load(args: Arc<Args>, addr: SocketAddr, host: String) -> anyhow::Result<()> {
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(args.duration);
    let issued = Arc::new(AtomicU64::new(0));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let rss: Arc<Mutex<Vec<(f64, u64)>>> = Arc::new(Mutex::new(Vec::new()));
    let done = Arc::new(tokio::sync::Notify::new());

    let sampler = args.pid.map(|pid| {
        let (rss, done, interval) = (
            rss.clone(),
            done.clone(),
            Duration::from_millis(args.rss_interval_ms.max(10)),
        );
        tokio::spawn(async move {
            loop {
                if let Some(kib) = rss_kib(pid) {
                    rss.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((started.elapsed().as_secs_f64(), kib));
                }
                tokio::select! {
                    () = tokio::time::sleep(interval) => {}
                    () = done.notified() => break,
                }
            }
        })
    });

    let mut clients = Vec::new();
    for client in 0..args.clients {
        let (args, issued, tally, host) =
            (args.clone(), issued.clone(), tally.clone(), host.clone());
        clients.push(tokio::spawn(async move {
            let mut rng = Rng(args
                .seed
                .wrapping_mul(1_000_003)
                .wrapping_add(client as u64));
            while Instant::now() < deadline
                && issued.fetch_add(1, Ordering::Relaxed) < args.requests
            {
                let body = request_body(&mut rng, &args).to_string().into_bytes();
                if args.disconnect > 0.0 && rng.unit() < args.disconnect {
                    let after = Duration::from_millis(
                        (rng.unit() * args.disconnect_after_ms as f64) as u64,
                    );
                    let label =
                        match send_and_leave(addr, &host, args.api_key.as_deref(), &body, after)
                            .await
                        {
                            Ok(()) => "disconnected".to_string(),
                            Err(e) => format!("io:{:?}", e.kind()),
                        };
                    let mut t = tally.lock().unwrap_or_else(|p| p.into_inner());
                    *t.by_status.entry(label).or_default() += 1;
                    continue;
                }
                let sent = Instant::now();
                let timeout = Duration::from_secs_f64(args.timeout);
                let result = tokio::time::timeout(
                    timeout,
                    send(addr, &host, args.api_key.as_deref(), &body),
                )
                .await;
                let ms = sent.elapsed().as_secs_f64() * 1e3;
                let (label, tokens, retry) = match result {
                    Ok(Ok((status, body))) => {
                        let tokens = if status == 200 {
                            serde_json::from_slice::<Value>(&body)
                                .ok()
                                .and_then(|v| v["usage"]["total_tokens"].as_u64())
                                .unwrap_or(0)
                        } else {
                            0
                        };
                        (status.to_string(), tokens, status == 429 || status == 503)
                    }
                    Ok(Err(e)) => (format!("io:{:?}", e.kind()), 0, true),
                    Err(_) => ("timeout".to_string(), 0, false),
                };
                {
                    let mut t = tally.lock().unwrap_or_else(|p| p.into_inner());
                    if label == "200" {
                        t.latencies_ok_ms.push(ms);
                    }
                    t.latencies_all_ms.push(ms);
                    t.tokens += tokens;
                    *t.by_status.entry(label).or_default() += 1;
                }
                if retry {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }));
    }
    for client in clients {
        client.await?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    done.notify_waiters();
    if let Some(sampler) = sampler {
        done.notify_one();
        let _ = sampler.await;
    }

    let mut t = std::mem::take(&mut *tally.lock().unwrap_or_else(|p| p.into_inner()));
    t.latencies_ok_ms.sort_by(f64::total_cmp);
    t.latencies_all_ms.sort_by(f64::total_cmp);
    let ok = t.latencies_ok_ms.len() as f64;
    let samples = std::mem::take(&mut *rss.lock().unwrap_or_else(|p| p.into_inner()));
    // Memory after warm-up: the first third of the run is warm-up; compare the highest sample of
    // the middle third with the highest of the last third.
    let third = |k: f64| {
        samples
            .iter()
            .filter(|(s, _)| *s >= elapsed * k / 3.0 && *s < elapsed * (k + 1.0) / 3.0)
            .map(|(_, r)| *r)
            .max()
    };
    let rss_report = json!({
        "samples": samples.len(),
        "first_kib": samples.first().map(|s| s.1),
        "last_kib": samples.last().map(|s| s.1),
        "max_kib": samples.iter().map(|s| s.1).max(),
        "max_warmup_kib": third(0.0),
        "max_middle_kib": third(1.0),
        "max_last_kib": third(2.0),
        "series": samples.iter().step_by((samples.len() / 40).max(1)).map(|(s, r)| json!([(s * 10.0).round() / 10.0, r])).collect::<Vec<_>>(),
    });
    let report = json!({
        "url": args.url,
        "clients": args.clients,
        "seconds": elapsed,
        "requests": t.latencies_all_ms.len(),
        "by_status": t.by_status,
        "throughput_rps": ok / elapsed,
        "tokens_per_second": t.tokens as f64 / elapsed,
        "latency_ms_ok": {
            "p50": percentile(&t.latencies_ok_ms, 50.0),
            "p95": percentile(&t.latencies_ok_ms, 95.0),
            "p99": percentile(&t.latencies_ok_ms, 99.0),
            "max": t.latencies_ok_ms.last().copied().unwrap_or(0.0),
        },
        "latency_ms_all": {
            "p50": percentile(&t.latencies_all_ms, 50.0),
            "p95": percentile(&t.latencies_all_ms, 95.0),
            "p99": percentile(&t.latencies_all_ms, 99.0),
        },
        "rss": rss_report,
    });
    println!(
        "{} requests in {:.1} s from {} clients: {:.2} ok/s, {:.0} tokens/s; statuses {}",
        t.latencies_all_ms.len(),
        elapsed,
        args.clients,
        ok / elapsed,
        t.tokens as f64 / elapsed,
        report["by_status"]
    );
    println!(
        "latency of 200s (ms): p50 {:.1}  p95 {:.1}  p99 {:.1}",
        report["latency_ms_ok"]["p50"].as_f64().unwrap_or(0.0),
        report["latency_ms_ok"]["p95"].as_f64().unwrap_or(0.0),
        report["latency_ms_ok"]["p99"].as_f64().unwrap_or(0.0)
    );
    if args.pid.is_some() {
        println!("server RSS (KiB): {}", report["rss"]);
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_is_accepted() {
        for url in [
            "http://127.0.0.1:8080",
            "http://localhost:9",
            "http://[::1]:8080/",
            "http://127.0.0.2:1",
        ] {
            if url.contains("::1") && std::net::TcpListener::bind("[::1]:0").is_err() {
                continue; // no IPv6 loopback here
            }
            assert!(
                loopback_address(url).is_ok(),
                "{url}: {:?}",
                loopback_address(url).err()
            );
        }
        for url in [
            "http://10.0.0.1:8080",
            "http://example.com",
            "http://0.0.0.0:8080",
            "https://127.0.0.1",
            "http://user@127.0.0.1",
            "http://127.0.0.1/v1",
            "http://[2001:db8::1]:80",
        ] {
            assert!(loopback_address(url).is_err(), "{url} accepted");
        }
        assert_eq!(
            loopback_address("http://127.0.0.1:8080")
                .map(|(a, _)| a.port())
                .ok(),
            Some(8080)
        );
    }

    #[test]
    fn percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }
}
