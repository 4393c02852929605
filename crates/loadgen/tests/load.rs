//! A short run of `jina-loadgen` against a real server on the small formula checkpoint: mixed
//! tasks, 10 to 8000 tokens, late chunking. The server runs in this test process (the
//! `jina-server` library on its own runtime), so `--pid` is this process: its memory is the
//! server's plus the test's, which is small and flat. No response may be a 5xx other than 503
//! and no connection may fail; the memory after warm-up stays within 25 % (plus 32 MiB of
//! allocator slack) of what it was in the middle of the run.

use std::path::PathBuf;

use jina_engine::fixture::{write_fixture, FixtureShape};
use jina_server::{serve, ServerConfig, ServerLimits};
use serde_json::Value;

fn fixture() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let dir = root.join("loadgen-small-seed1");
    if !dir.join("complete").exists() {
        let staging = root.join(format!("loadgen-small-seed1.{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&staging);
        write_fixture(&staging, FixtureShape::SMALL, 1).expect("write the small fixture");
        std::fs::write(staging.join("complete"), b"").expect("mark complete");
        let _ = std::fs::remove_dir_all(&dir);
        if std::fs::rename(&staging, &dir).is_err() {
            let _ = std::fs::remove_dir_all(&staging);
        }
    }
    dir
}

#[cfg(target_os = "linux")]
#[test]
fn a_short_load_run_is_clean_and_memory_stays_flat() {
    let mut config = ServerConfig::new(fixture());
    config.limits = ServerLimits {
        max_concurrent_requests: 6,
        ..ServerLimits::default()
    };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let addr = listener.local_addr().expect("addr");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            serve(listener, config, async move {
                let _ = stop_rx.await;
            })
            .await
        })
    });

    let seconds = std::env::var("JINA_LOADGEN_SECONDS").unwrap_or_else(|_| "12".into());
    let report_path =
        std::env::temp_dir().join(format!("jina-loadgen-{}.json", std::process::id()));
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_jina-loadgen"))
        .args([
            "--url",
            &format!("http://{addr}"),
            "--clients",
            "8",
            "--duration",
            &seconds,
            "--max-tokens",
            "8000",
        ])
        .args([
            "--pid",
            &std::process::id().to_string(),
            "--rss-interval-ms",
            "100",
            "--timeout",
            "120",
        ])
        .arg("--json")
        .arg(&report_path)
        .output()
        .expect("run jina-loadgen");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "loadgen failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value =
        serde_json::from_slice(&std::fs::read(&report_path).expect("report")).expect("report JSON");
    let _ = std::fs::remove_file(&report_path);
    eprintln!("{stdout}");
    let by_status = report["by_status"].as_object().expect("by_status");
    for (status, count) in by_status {
        let ok = status == "200" || status == "429" || status == "503";
        assert!(ok, "{count} responses with status {status}: {report}");
    }
    assert!(
        by_status.get("200").and_then(Value::as_u64).unwrap_or(0) >= 5,
        "too few successes: {report}"
    );
    let rss = &report["rss"];
    let (middle, last) = (
        rss["max_middle_kib"].as_f64().expect("middle"),
        rss["max_last_kib"].as_f64().expect("last"),
    );
    assert!(
        last <= middle * 1.25 + 32.0 * 1024.0,
        "RSS grew after warm-up: {rss}"
    );

    // The refusal of other hosts, through the binary.
    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_jina-loadgen"))
        .args(["--url", "http://192.0.2.1:8080"])
        .output()
        .expect("run");
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("only targets loopback"));

    let _ = stop_tx.send(());
    let joined = server.join().expect("the server thread did not panic");
    joined.expect("serve returned Ok");
}
