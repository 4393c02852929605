//! `jina-embed train` and `jina-embed eval` as real processes on the small formula checkpoint.
//!
//! The learning test: a retrieval task the base model cannot solve, because every query is its
//! passage written in a fixed letter substitution (`lamp door fire` → `xjpg iaal yzlh`), so a
//! query shares no token with its passage. Query-side training (passages frozen under
//! `retrieval.passage`) must lift recall@1 on held-out pairs (new combinations of the words)
//! from chance (1/64) to at least 0.8; then `serve --adapter` answers the new task with the
//! trained vectors, measured again through HTTP, and `eval` shows it beside the built-in tasks.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod common;

const WORDS: [&str; 40] = [
    "apple", "river", "stone", "cloud", "tiger", "music", "bread", "glass", "horse", "paper",
    "light", "green", "storm", "chair", "ocean", "plant", "train", "sugar", "money", "water",
    "night", "dream", "smile", "heart", "earth", "fire", "snow", "wind", "gold", "iron", "milk",
    "salt", "rose", "wolf", "bird", "fish", "lamp", "door", "road", "ship",
];

/// splitmix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// 256 training and 64 held-out (query, positive) pairs of three distinct words, no passage
/// twice, queries in a fixed substitution of the alphabet.
fn cipher_pairs() -> (Vec<Value>, Vec<Value>) {
    let mut rng = Rng(7);
    let mut alphabet: Vec<char> = ('a'..='z').collect();
    for i in (1..alphabet.len()).rev() {
        let j = rng.below(i + 1);
        alphabet.swap(i, j);
    }
    let cipher = |text: &str| -> String {
        text.chars()
            .map(|c| {
                if c.is_ascii_lowercase() {
                    alphabet[(c as u8 - b'a') as usize]
                } else {
                    c
                }
            })
            .collect()
    };
    let mut seen = std::collections::HashSet::new();
    let mut rows = Vec::new();
    while rows.len() < 320 {
        let mut picked: Vec<&str> = Vec::new();
        while picked.len() < 3 {
            let w = WORDS[rng.below(WORDS.len())];
            if !picked.contains(&w) {
                picked.push(w);
            }
        }
        let passage = picked.join(" ");
        if seen.insert(passage.clone()) {
            rows.push(json!({"query": cipher(&passage), "positive": passage}));
        }
    }
    let eval = rows.split_off(256);
    (rows, eval)
}

fn fixture() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| common::small_fixture("cli-train-small-fixture"))
        .clone()
}

fn write_jsonl(path: &Path, rows: &[Value]) {
    let text: String = rows.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(path, text).expect("write a pairs file");
}

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("cli-train-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create a scratch folder");
    dir
}

fn jina(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_jina-embed"))
        .args(args)
        .output()
        .expect("run jina-embed")
}

fn text(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

/// Kills the server if the test fails half-way.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn serve(model: &Path, adapter: &str) -> (ChildGuard, String) {
    let mut child = ChildGuard(
        Command::new(env!("CARGO_BIN_EXE_jina-embed"))
            .args([
                "serve",
                "--model",
                text(model),
                "--port",
                "0",
                "--log-format",
                "json",
            ])
            .args(["--adapter", adapter])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start jina-embed serve"),
    );
    let stderr = child.0.stderr.take().expect("stderr");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut lines = std::io::BufReader::new(stderr)
        .lines()
        .map_while(Result::ok);
    let addr = loop {
        let line = lines.next().expect("the server exited before listening");
        if let Some(addr) = serde_json::from_str::<Value>(&line)
            .ok()
            .and_then(|v| v["fields"]["address"].as_str().map(String::from))
        {
            break addr;
        }
        assert!(Instant::now() < deadline, "no listening line");
    };
    // Keep reading stderr so that the server never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    let client = reqwest::Client::new();
    while client
        .get(format!("http://{addr}/health"))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .ok()
        != Some(200)
    {
        assert!(Instant::now() < deadline, "the server did not become ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (child, addr)
}

async fn embed_http(addr: &str, task: &str, input: &[String]) -> Vec<Vec<f32>> {
    let response: Value = reqwest::Client::new()
        .post(format!("http://{addr}/v1/embeddings"))
        .json(&json!({"input": input, "task": task}))
        .send()
        .await
        .expect("POST /v1/embeddings")
        .json()
        .await
        .expect("a JSON answer");
    response["data"]
        .as_array()
        .unwrap_or_else(|| panic!("no data in {response}"))
        .iter()
        .map(|d| serde_json::from_value(d["embedding"].clone()).expect("a vector"))
        .collect()
}

fn recall_at_1(queries: &[Vec<f32>], corpus: &[Vec<f32>]) -> f64 {
    let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
    let hits = queries
        .iter()
        .enumerate()
        .filter(|(i, q)| {
            let best = (0..corpus.len())
                .max_by(|&a, &b| dot(q, &corpus[a]).total_cmp(&dot(q, &corpus[b])))
                .expect("a corpus");
            best == *i
        })
        .count();
    hits as f64 / queries.len() as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn training_learns_a_task_the_base_cannot_solve_and_the_server_serves_it() {
    let model = fixture();
    let dir = scratch("learn");
    let (train, eval) = cipher_pairs();
    let (train_file, eval_file) = (dir.join("train.jsonl"), dir.join("eval.jsonl"));
    write_jsonl(&train_file, &train);
    write_jsonl(&eval_file, &eval);
    let out = dir.join("cipher.query");
    let run = jina(&[
        "train",
        "--model",
        text(&model),
        "--data",
        text(&train_file),
        "--eval",
        text(&eval_file),
        "--from",
        "retrieval.query",
        "--name",
        "cipher.query",
        "--out",
        text(&out),
        "--epochs",
        "16",
        "--batch",
        "32",
        "--lr",
        "5e-2",
        "--seed",
        "0",
        "--quiet",
    ]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "train failed: {stderr}");
    let report: Value = serde_json::from_slice(&run.stdout).expect("a JSON report on stdout");
    let evals = report["eval"].as_array().expect("eval figures");
    let before = evals[0]["recall_at_1"].as_f64().unwrap();
    let after = evals.last().unwrap()["recall_at_1"].as_f64().unwrap();
    eprintln!(
        "recall@1 on held-out pairs: {before:.3} before, {after:.3} after ({} s)",
        report["seconds"]
    );
    assert!(
        before <= 0.1,
        "the base already solves it ({before}): the test proves nothing"
    );
    assert!(
        after >= 0.8,
        "recall@1 after training {after} < 0.8; stderr: {stderr}"
    );
    assert!(
        !out.join("checkpoint").exists(),
        "the checkpoint is removed at the end"
    );
    let metadata: Value =
        serde_json::from_slice(&std::fs::read(out.join("jina_adapter.json")).unwrap()).unwrap();
    assert_eq!(metadata["name"], "cipher.query");
    assert_eq!(metadata["training"]["passage_task"], "retrieval.passage");
    assert_eq!(metadata["eval"].as_array().map(Vec::len), Some(evals.len()));

    // The server answers the new task with the trained vectors: the same recall through HTTP.
    let (_server, addr) = serve(&model, &format!("cipher.query={}", text(&out))).await;
    let queries: Vec<String> = eval
        .iter()
        .map(|r| r["query"].as_str().unwrap().to_string())
        .collect();
    let passages: Vec<String> = eval
        .iter()
        .map(|r| r["positive"].as_str().unwrap().to_string())
        .collect();
    let corpus = embed_http(&addr, "retrieval.passage", &passages).await;
    let served = recall_at_1(&embed_http(&addr, "cipher.query", &queries).await, &corpus);
    let builtin = recall_at_1(
        &embed_http(&addr, "retrieval.query", &queries).await,
        &corpus,
    );
    assert!(
        (served - after).abs() < 1e-9,
        "served recall@1 {served} vs trained {after}"
    );
    assert!(builtin <= 0.1, "retrieval.query recall@1 {builtin}");

    // `eval` puts it beside every built-in task.
    let table = jina(&[
        "eval",
        "--model",
        text(&model),
        "--data",
        text(&eval_file),
        "--adapter",
        text(&out),
        "--task",
        "cipher.query",
        "--json",
    ]);
    assert!(
        table.status.success(),
        "{}",
        String::from_utf8_lossy(&table.stderr)
    );
    let rows: Vec<Value> = String::from_utf8_lossy(&table.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON row"))
        .collect();
    assert_eq!(
        rows.len(),
        6,
        "the custom task and the five built-in ones: {rows:?}"
    );
    assert_eq!(rows[0]["task"], "cipher.query");
    assert_eq!(rows[0]["passage_task"], "retrieval.passage");
    assert!((rows[0]["recall_at_1"].as_f64().unwrap() - after).abs() < 1e-9);
    for row in &rows[1..] {
        assert_eq!(row["added"], true);
        assert!(row["recall_at_1"].as_f64().unwrap() <= 0.1, "{row}");
    }
}

/// Bad data and options are refused with a message naming what is wrong, before any work.
#[test]
fn bad_data_and_options_are_clear_errors() {
    let model = fixture();
    let dir = scratch("errors");
    let good = dir.join("good.jsonl");
    write_jsonl(
        &good,
        &[
            json!({"query": "q1", "positive": "p1"}),
            json!({"query": "q2", "positive": "p2"}),
        ],
    );
    let missing = dir.join("missing.jsonl");
    write_jsonl(
        &missing,
        &[
            json!({"query": "q1", "positive": "p1"}),
            json!({"query": "q2"}),
        ],
    );
    let empty = dir.join("empty.csv");
    std::fs::write(&empty, "query,positive\n").unwrap();
    let nocol = dir.join("nocol.tsv");
    std::fs::write(&nocol, "anchor\tanswer\nq\ta\n").unwrap();
    let finished = dir.join("finished");
    std::fs::create_dir_all(&finished).unwrap();
    std::fs::write(finished.join("jina_adapter.json"), "{}").unwrap();
    let absent = dir.join("absent.jsonl");
    let m = text(&model);
    let out = dir.join("out");
    let o = text(&out);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--batch", "2", "--data", text(&missing), "--out", o],
            "missing.jsonl:2: no field `positive`",
        ),
        (
            vec!["--batch", "2", "--data", text(&empty), "--out", o],
            "empty.csv:0: the file holds no rows",
        ),
        (
            vec!["--batch", "2", "--data", text(&nocol), "--out", o],
            "nocol.tsv:1: no column `positive`",
        ),
        (
            vec!["--data", text(&good), "--out", o, "--batch", "3"],
            "--batch 3 is larger than the data (2 pairs)",
        ),
        (
            vec![
                "--batch",
                "2",
                "--data",
                text(&good),
                "--out",
                o,
                "--max-tokens",
                "100000",
            ],
            "--max-tokens 100000 is outside",
        ),
        (
            vec![
                "--batch",
                "2",
                "--data",
                text(&good),
                "--out",
                o,
                "--from",
                "legal",
            ],
            "legal",
        ),
        (
            vec![
                "--batch",
                "2",
                "--data",
                text(&good),
                "--out",
                o,
                "--matryoshka",
                "4096",
            ],
            "--matryoshka width 4096",
        ),
        (
            vec![
                "--batch",
                "2",
                "--data",
                text(&good),
                "--out",
                text(&finished),
            ],
            "already holds a trained adapter",
        ),
        (
            vec![
                "--batch",
                "2",
                "--data",
                text(&good),
                "--out",
                o,
                "--resume",
            ],
            "holds no checkpoint to resume from",
        ),
        (
            vec!["--batch", "2", "--data", text(&absent), "--out", o],
            "absent.jsonl",
        ),
    ];
    for (extra, want) in cases {
        let mut args = vec!["train", "--model", m, "--name", "t.query", "--quiet"];
        args.extend(extra.iter().copied());
        let output = jina(&args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{extra:?}: {stderr}");
        assert!(stderr.contains(want), "{extra:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{extra:?}: {stderr}");
    }
    let bad_name = jina(&[
        "train",
        "--model",
        m,
        "--name",
        "no spaces",
        "--data",
        text(&good),
        "--out",
        o,
        "--batch",
        "2",
    ]);
    assert!(String::from_utf8_lossy(&bad_name.stderr).contains("no spaces"));
}
