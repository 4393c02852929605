//! `jina-embed embed`, `info` and model resolution, run as the real binary on the small formula
//! checkpoint: every input format gives the engine's vectors, every output format reads back
//! (with numpy/pyarrow from .venv where present, else by our own parsers), resume after a cut
//! (including a late-chunked document cut in the middle), SIGINT leaving a valid file, hub ids
//! from a fake Hugging Face cache, and the offline error.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, OnceLock};

use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, UInt64Type, UInt8Type};
use arrow_array::{ArrayRef, RecordBatch, StringArray};
use jina_engine::hub::{self, HubId};
use jina_engine::{EmbedRequest, LateChunking, Model};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::Value;

mod common;

fn fixture() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| common::small_fixture("cli-embed-small-fixture"))
}

fn model() -> &'static Model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    MODEL.get_or_init(|| Model::load(fixture()).expect("load"))
}

fn bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_jina-embed"));
    // Offline: a hub id missing from the cache must never reach the real hub from a test.
    cmd.env_remove("JINA_MODEL")
        .env_remove("JINA_OFFLINE")
        .env("HF_HUB_CACHE", "/nonexistent-hf-cache")
        .env("HF_HUB_OFFLINE", "1");
    cmd
}

fn run(args: &[&str]) -> Output {
    let out = bin().args(args).output().expect("run jina-embed");
    assert!(
        out.status.success(),
        "jina-embed {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn run_fails(args: &[&str]) -> String {
    let out = bin().args(args).output().expect("run jina-embed");
    assert!(!out.status.success(), "jina-embed {args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn texts(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            format!(
                "Row {i}: the quick brown fox {} jumps over {} lazy dogs.",
                i * 7 % 13,
                i % 5
            )
        })
        .collect()
}

fn engine(texts: &[String], task: &str) -> Vec<Vec<f32>> {
    model()
        .embed(&EmbedRequest::new(texts.to_vec()).with_task(task))
        .expect("embed")
        .embeddings
}

fn close(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-6)
}

fn read_jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .expect("read")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect()
}

fn vector(v: &Value) -> Vec<f32> {
    v["embedding"]
        .as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number") as f32)
        .collect()
}

/// (descr, rows, cols, data) of a .npy file, checking that the header's count matches the size.
fn read_npy(path: &Path) -> (String, usize, usize, Vec<u8>) {
    let bytes = std::fs::read(path).expect("read npy");
    assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
    let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(&bytes[10..10 + hlen]).expect("header text");
    let descr = header
        .split("'descr': '")
        .nth(1)
        .and_then(|s| s.split('\'').next())
        .expect("descr")
        .to_string();
    let shape = header
        .split("'shape': (")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .expect("shape");
    let (rows, cols) = shape.split_once(',').expect("2-D");
    let (rows, cols): (usize, usize) = (
        rows.trim().parse().expect("rows"),
        cols.trim().parse().expect("cols"),
    );
    let item = if descr == "<f4" { 4 } else { 1 };
    assert_eq!(
        bytes.len(),
        10 + hlen + rows * cols * item,
        "{} is not exactly header + rows",
        path.display()
    );
    (descr, rows, cols, bytes[10 + hlen..].to_vec())
}

fn npy_floats(data: &[u8]) -> Vec<f32> {
    data.chunks(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn read_parquet(path: &Path) -> Vec<RecordBatch> {
    let file = std::fs::File::open(path).expect("open parquet");
    ParquetRecordBatchReaderBuilder::try_new(file)
        .expect("parquet")
        .build()
        .expect("reader")
        .map(|b| b.expect("batch"))
        .collect()
}

fn python() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python");
    p.exists().then_some(p)
}

fn write_parquet_input(path: &Path, ids: &[String], texts: &[String]) {
    let schema = Arc::new(arrow_schema::Schema::new(vec![
        arrow_schema::Field::new("doc_id", arrow_schema::DataType::Utf8, false),
        arrow_schema::Field::new("body", arrow_schema::DataType::Utf8, false),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(ids.to_vec())),
        Arc::new(StringArray::from(texts.to_vec())),
    ];
    let batch = RecordBatch::try_new(schema.clone(), columns).expect("batch");
    let mut writer = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(path).expect("create"),
        schema,
        None,
    )
    .expect("writer");
    writer.write(&batch).expect("write");
    writer.close().expect("close");
}

#[test]
fn every_input_format_gives_the_engine_vectors_with_ids() {
    let tmp = tempfile::tempdir().expect("tmp");
    let d = tmp.path();
    let texts = texts(7);
    let ids: Vec<String> = (0..texts.len()).map(|i| format!("doc-{i}")).collect();
    let expected = engine(&texts, "retrieval.passage");
    // Texts with a comma and quotes survive CSV quoting.
    std::fs::write(d.join("in.txt"), texts.join("\n") + "\n").expect("write");
    let jsonl: String = ids
        .iter()
        .zip(&texts)
        .map(|(id, t)| serde_json::json!({"doc_id": id, "body": t, "other": 1}).to_string() + "\n")
        .collect();
    std::fs::write(d.join("in.jsonl"), jsonl).expect("write");
    let mut csv = csv::Writer::from_path(d.join("in.csv")).expect("csv");
    csv.write_record(["doc_id", "body"]).expect("csv");
    let mut tsv = csv::WriterBuilder::new()
        .delimiter(b'\t')
        .from_path(d.join("in.tsv"))
        .expect("tsv");
    tsv.write_record(["doc_id", "body"]).expect("tsv");
    for (id, t) in ids.iter().zip(&texts) {
        csv.write_record([id, t]).expect("csv");
        tsv.write_record([id, t]).expect("tsv");
    }
    drop((csv, tsv));
    write_parquet_input(&d.join("in.parquet"), &ids, &texts);

    let model = fixture().to_string_lossy().into_owned();
    for input in ["in.txt", "in.jsonl", "in.csv", "in.tsv", "in.parquet"] {
        let out = d.join(format!("{input}.out.jsonl"));
        let mut args = vec![
            "embed",
            "--model",
            &model,
            "--task",
            "retrieval.passage",
            "--quiet",
        ];
        let (i, o) = (d.join(input), out.clone());
        let (i, o) = (
            i.to_string_lossy().into_owned(),
            o.to_string_lossy().into_owned(),
        );
        args.extend(["--input", &i, "--output", &o]);
        if input != "in.txt" {
            args.extend(["--text-field", "body", "--id-field", "doc_id"]);
        }
        run(&args);
        let lines = read_jsonl(&out);
        assert_eq!(lines.len(), texts.len(), "{input}");
        for (n, line) in lines.iter().enumerate() {
            assert_eq!(line["index"], n, "{input}");
            assert!(close(&vector(line), &expected[n]), "{input} row {n}");
            if input != "in.txt" {
                assert_eq!(line["id"], ids[n].as_str(), "{input}");
            }
        }
    }
    // Errors name the file and the field.
    let err = run_fails(&[
        "embed",
        "--model",
        &model,
        "--input",
        &d.join("in.csv").to_string_lossy(),
        "--output",
        "-",
        "--text-field",
        "nope",
    ]);
    assert!(
        err.contains("in.csv") && err.contains("\"nope\"") && err.contains("body"),
        "{err}"
    );
    let err = run_fails(&[
        "embed",
        "--model",
        &model,
        "--input",
        &d.join("in.jsonl").to_string_lossy(),
        "--output",
        "-",
        "--text-field",
        "body",
        "--id-field",
        "missing",
    ]);
    assert!(
        err.contains("line 1") && err.contains("\"missing\""),
        "{err}"
    );
}

#[test]
fn npy_and_parquet_outputs_read_back() {
    let tmp = tempfile::tempdir().expect("tmp");
    let d = tmp.path();
    let texts = texts(300);
    std::fs::write(d.join("in.txt"), texts.join("\n")).expect("write");
    let full = engine(&texts, "text-matching");
    let dims32: Vec<Vec<f32>> = model()
        .embed(&EmbedRequest::new(texts.clone()).with_dimensions(32))
        .expect("embed")
        .embeddings;
    let model_s = fixture().to_string_lossy().into_owned();
    let input = d.join("in.txt").to_string_lossy().into_owned();
    let out = |name: &str| d.join(name).to_string_lossy().into_owned();

    run(&[
        "embed",
        "--model",
        &model_s,
        "--input",
        &input,
        "--output",
        &out("v.npy"),
        "--quiet",
    ]);
    let (descr, rows, cols, data) = read_npy(&d.join("v.npy"));
    assert_eq!((descr.as_str(), rows, cols), ("<f4", 300, 128));
    let floats = npy_floats(&data);
    for (i, v) in full.iter().enumerate() {
        assert!(close(&floats[i * 128..(i + 1) * 128], v), "npy row {i}");
    }
    run(&[
        "embed",
        "--model",
        &model_s,
        "--input",
        &input,
        "--output",
        &out("u.npy"),
        "--embedding-type",
        "ubinary",
        "--dimensions",
        "32",
        "--quiet",
    ]);
    let (descr, rows, cols, data) = read_npy(&d.join("u.npy"));
    assert_eq!((descr.as_str(), rows, cols), ("|u1", 300, 4));
    for (i, v) in dims32.iter().enumerate() {
        assert_eq!(
            &data[i * 4..(i + 1) * 4],
            &jina_engine::output::pack_bits(v)[..],
            "ubinary row {i}"
        );
    }
    run(&[
        "embed",
        "--model",
        &model_s,
        "--input",
        &input,
        "--output",
        &out("b.npy"),
        "--embedding-type",
        "binary",
        "--dimensions",
        "32",
        "--quiet",
    ]);
    let (descr, _, _, data) = read_npy(&d.join("b.npy"));
    assert_eq!(descr, "|i1");
    assert_eq!(
        data[0] as i8,
        (jina_engine::output::pack_bits(&dims32[0])[0] as i16 - 128) as i8
    );

    run(&[
        "embed",
        "--model",
        &model_s,
        "--input",
        &input,
        "--output",
        &out("v.parquet"),
        "--quiet",
    ]);
    assert!(
        !d.join("v.parquet.parts").exists(),
        "the parts folder is removed after the merge"
    );
    let batches = read_parquet(&d.join("v.parquet"));
    let mut n = 0;
    for batch in &batches {
        let index = batch
            .column_by_name("index")
            .expect("index")
            .as_primitive::<UInt64Type>();
        let emb = batch
            .column_by_name("embedding")
            .expect("embedding")
            .as_fixed_size_list();
        for r in 0..batch.num_rows() {
            assert_eq!(index.value(r), n as u64);
            let values = emb.value(r);
            assert!(
                close(values.as_primitive::<Float32Type>().values(), &full[n]),
                "parquet row {n}"
            );
            n += 1;
        }
    }
    assert_eq!(n, 300);
    run(&[
        "embed",
        "--model",
        &model_s,
        "--input",
        &input,
        "--output",
        &out("u.parquet"),
        "--embedding-type",
        "ubinary",
        "--dimensions",
        "32",
        "--quiet",
    ]);
    let batches = read_parquet(&d.join("u.parquet"));
    let emb = batches[0]
        .column_by_name("embedding")
        .expect("embedding")
        .as_fixed_size_list();
    assert_eq!(
        emb.value(0).as_primitive::<UInt8Type>().values().to_vec(),
        jina_engine::output::pack_bits(&dims32[0])
    );

    // The real readers, where the test venv has them.
    if let Some(py) = python() {
        let script = "import sys, numpy as np, pyarrow.parquet as pq\n\
                      a = np.load(sys.argv[1]); u = np.load(sys.argv[2]); t = pq.read_table(sys.argv[3])\n\
                      print(a.dtype, a.shape, u.dtype, u.shape, t.num_rows, t.schema.field('embedding').type)";
        let o = Command::new(py)
            .args([
                "-c",
                script,
                &out("v.npy"),
                &out("u.npy"),
                &out("v.parquet"),
            ])
            .output()
            .expect("python");
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(
            text.trim(),
            "float32 (300, 128) uint8 (300, 4) 300 fixed_size_list<item: float>[128]"
        );
    }

    // An existing output is never clobbered silently; base64 has no place in .npy.
    let err = run_fails(&[
        "embed",
        "--model",
        &model_s,
        "--input",
        &input,
        "--output",
        &out("v.npy"),
    ]);
    assert!(
        err.contains("already exists") && err.contains("--resume") && err.contains("--overwrite"),
        "{err}"
    );
    let err = run_fails(&[
        "embed",
        "--model",
        &model_s,
        "--input",
        &input,
        "--output",
        &out("x.npy"),
        "--embedding-type",
        "base64",
    ]);
    assert!(err.contains("base64"), "{err}");
}

#[test]
fn resume_skips_written_rows_and_repairs_a_cut() {
    let tmp = tempfile::tempdir().expect("tmp");
    let d = tmp.path();
    let texts = texts(300);
    std::fs::write(d.join("in.txt"), texts.join("\n")).expect("write");
    std::fs::write(d.join("half.txt"), texts[..150].join("\n")).expect("write");
    let model_s = fixture().to_string_lossy().into_owned();
    let p = |name: &str| d.join(name).to_string_lossy().into_owned();
    let embed = |input: &str, output: &str, extra: &[&str]| {
        let mut args = vec![
            "embed", "--model", &model_s, "--input", input, "--output", output, "--quiet",
        ];
        args.extend_from_slice(extra);
        run(&args)
    };
    for ext in ["jsonl", "npy", "parquet"] {
        let whole = p(&format!("whole.{ext}"));
        embed(&p("in.txt"), &whole, &[]);
        let resumed = p(&format!("resumed.{ext}"));
        embed(&p("half.txt"), &resumed, &[]);
        // A hard kill in the middle of a write: a partial line, or bytes past the header's count.
        if ext != "parquet" {
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&resumed)
                .expect("open");
            std::io::Write::write_all(&mut f, b"{\"index\": 150, \"embed").expect("append");
        }
        embed(&p("in.txt"), &resumed, &["--resume"]);
        assert_eq!(
            std::fs::read(&resumed).ok().map(|b| b.len()),
            std::fs::read(&whole).ok().map(|b| b.len()),
            "{ext}"
        );
        if ext != "parquet" {
            assert_eq!(
                std::fs::read(&resumed).expect("read"),
                std::fs::read(&whole).expect("read"),
                "{ext}: resumed == one run"
            );
        } else {
            let (a, b) = (
                read_parquet(Path::new(&resumed)),
                read_parquet(Path::new(&whole)),
            );
            let rows = |v: &[RecordBatch]| v.iter().map(|b| b.num_rows()).sum::<usize>();
            assert_eq!((rows(&a), rows(&b)), (300, 300));
            let concat = |v: &[RecordBatch]| arrow_select_concat(v);
            assert_eq!(concat(&a), concat(&b), "parquet: resumed == one run");
        }
        // Resuming a complete output does nothing.
        let before = std::fs::read(&resumed).expect("read");
        embed(&p("in.txt"), &resumed, &["--resume"]);
        assert_eq!(
            std::fs::read(&resumed).expect("read"),
            before,
            "{ext}: second resume"
        );
    }
    // More rows in the output than in the input: refused.
    let err = run_fails(&[
        "embed",
        "--model",
        &model_s,
        "--input",
        &p("half.txt"),
        "--output",
        &p("whole.jsonl"),
        "--resume",
    ]);
    assert!(
        err.contains("300 rows") && err.contains("half.txt"),
        "{err}"
    );
}

/// All float values of the embedding column, in order.
fn arrow_select_concat(batches: &[RecordBatch]) -> Vec<f32> {
    batches
        .iter()
        .flat_map(|b| {
            let list = b
                .column_by_name("embedding")
                .expect("embedding")
                .as_fixed_size_list();
            list.values()
                .as_primitive::<Float32Type>()
                .values()
                .to_vec()
        })
        .collect()
}

#[test]
fn late_chunking_groups_rows_by_document_and_resumes_whole_documents() {
    let tmp = tempfile::tempdir().expect("tmp");
    let d = tmp.path();
    let docs = [("a", 2), ("b", 3), ("c", 1), ("d", 4)];
    let mut lines = String::new();
    let mut expected = Vec::new();
    for (doc, n) in docs {
        let chunks: Vec<String> = (0..n)
            .map(|i| format!("Chunk {i} of document {doc} talks about rivers."))
            .collect();
        for c in &chunks {
            lines += &(serde_json::json!({"doc": doc, "text": c}).to_string() + "\n");
        }
        let mut request = EmbedRequest::new(chunks).with_task("retrieval.passage");
        request.late_chunking = LateChunking::On;
        expected.extend(model().embed(&request).expect("late").embeddings);
    }
    std::fs::write(d.join("in.jsonl"), lines).expect("write");
    let model_s = fixture().to_string_lossy().into_owned();
    let (input, output) = (
        d.join("in.jsonl").to_string_lossy().into_owned(),
        d.join("out.jsonl").to_string_lossy().into_owned(),
    );
    let args = [
        "embed",
        "--model",
        &model_s,
        "--input",
        &input,
        "--output",
        &output,
        "--quiet",
        "--task",
        "retrieval.passage",
        "--late-chunking",
        "--document-field",
        "doc",
    ];
    run(&args);
    let whole = std::fs::read(&output).expect("read");
    let got = read_jsonl(Path::new(&output));
    assert_eq!(got.len(), expected.len());
    for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
        assert!(close(&vector(g), e), "late chunk {i}");
    }
    // Not the same as embedding each row alone (the grouping matters).
    assert!(!close(
        &vector(&got[0]),
        &engine(
            &["Chunk 0 of document a talks about rivers.".to_string()],
            "retrieval.passage"
        )[0]
    ));
    // Cut in the middle of document b (rows a, a, b kept): the resume redoes all of b.
    let text = String::from_utf8(whole.clone()).expect("utf8");
    let kept: String = text.lines().take(3).map(|l| l.to_string() + "\n").collect();
    std::fs::write(&output, kept).expect("cut");
    let mut resume = args.to_vec();
    resume.push("--resume");
    run(&resume);
    assert_eq!(std::fs::read(&output).expect("read"), whole);
}

#[cfg(unix)]
#[test]
fn sigint_leaves_a_valid_npy_that_resumes() {
    let tmp = tempfile::tempdir().expect("tmp");
    let d = tmp.path();
    let texts = texts(4000);
    std::fs::write(d.join("in.txt"), texts.join("\n")).expect("write");
    let out = d.join("v.npy");
    let model_s = fixture().to_string_lossy().into_owned();
    let args = [
        "embed",
        "--model",
        &model_s,
        "--input",
        &d.join("in.txt").to_string_lossy(),
        "--output",
        &out.to_string_lossy(),
        "--quiet",
        "--threads",
        "1",
    ]
    .map(|s| s.to_string());
    let child = bin()
        .args(&args)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    // Wait for the first committed batch, then interrupt.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0) <= 128 {
        assert!(
            std::time::Instant::now() < deadline,
            "no batch written in 60 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(kill.success());
    let output = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("interrupted") && stderr.contains("--resume"),
        "{stderr}"
    );
    let (_, rows, _, _) = read_npy(&out);
    assert!(
        rows > 0 && rows < 4000 && rows % 256 == 0,
        "stopped at a batch boundary: {rows}"
    );
    let mut resume = args.to_vec();
    resume.push("--resume".to_string());
    run(&resume.iter().map(String::as_str).collect::<Vec<_>>());
    let (_, rows, _, data) = read_npy(&out);
    assert_eq!(rows, 4000);
    let expected = engine(&texts[3990..], "text-matching");
    assert!(close(
        &npy_floats(&data)[3990 * 128..3991 * 128],
        &expected[0]
    ));
}

#[test]
fn hub_ids_resolve_from_the_cache_and_info_reports_hashes() {
    let cache = tempfile::tempdir().expect("tmp");
    let id = HubId::parse("jinaai/jina-embeddings-v3").expect("id");
    let commit = "0123456789abcdef0123456789abcdef01234567";
    hub::install_into_cache(cache.path(), &id, commit, "main", fixture()).expect("install");
    let texts = texts(3);
    let input = cache.path().join("in.txt");
    std::fs::write(&input, texts.join("\n")).expect("write");

    // The default --model is the hub id.
    let out = bin()
        .env("HF_HUB_CACHE", cache.path())
        .args(["embed", "--input", &input.to_string_lossy(), "--quiet"])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert!(close(
        &vector(&lines[2]),
        &engine(&texts, "text-matching")[2]
    ));

    // HF_HOME/hub is the next place looked at.
    let home = tempfile::tempdir().expect("tmp");
    std::fs::rename(
        cache.path().join(id.cache_folder_name()),
        home.path().join("hub").join(id.cache_folder_name()),
    )
    .or_else(|_| {
        std::fs::create_dir_all(home.path().join("hub"))?;
        std::fs::rename(
            cache.path().join(id.cache_folder_name()),
            home.path().join("hub").join(id.cache_folder_name()),
        )
    })
    .expect("move");
    let out = bin()
        .env_remove("HF_HUB_CACHE")
        .env("HF_HOME", home.path())
        .args([
            "info",
            "--json",
            "--model",
            &format!("jinaai/jina-embeddings-v3@{commit}"),
        ])
        .output()
        .expect("info");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info: Value = serde_json::from_slice(&out.stdout).expect("info json");
    assert_eq!(info["source"]["commit"], commit);
    assert_eq!(info["hidden_size"], 128);
    assert_eq!(info["dtype"], model().weights_dtype());
    assert_eq!(info["parameters"], model().parameter_count());
    let tasks = info["tasks"].as_array().expect("tasks");
    assert_eq!(tasks.len(), 5);
    assert!(tasks
        .iter()
        .any(|t| t["task"] == "retrieval.query"
            && t["prefix"].as_str().is_some_and(|p| !p.is_empty())));
    for file in info["files"].as_array().expect("files") {
        let name = file["name"].as_str().expect("name");
        let path = fixture().join(name);
        assert_eq!(file["bytes"], std::fs::metadata(&path).expect("stat").len());
        assert_eq!(file["sha256"], hub::sha256_file(&path).expect("hash"));
        assert_eq!(file["verified_against_cache"], true, "{name}");
    }
    // The text form names the same things.
    let text = String::from_utf8(run(&["info", "--model", &fixture().to_string_lossy()]).stdout)
        .expect("utf8");
    assert!(
        text.contains("parameters") && text.contains("retrieval.query") && text.contains("sha256"),
        "{text}"
    );

    // A corrupted blob is caught by info.
    let blob = hub::expected_sha256(
        &home
            .path()
            .join("hub")
            .join(id.cache_folder_name())
            .join("snapshots")
            .join(commit)
            .join("config.json"),
    )
    .expect("blob");
    let blob = home
        .path()
        .join("hub")
        .join(id.cache_folder_name())
        .join("blobs")
        .join(blob);
    std::fs::write(&blob, b"{}").expect("corrupt");
    let out = bin()
        .env_remove("HF_HUB_CACHE")
        .env("HF_HOME", home.path())
        .args(["info", "--model", "jinaai/jina-embeddings-v3"])
        .output()
        .expect("info");
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("corrupt"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Offline and not cached: the error says how to get the weights, for embed and serve alike.
    for cmd in [
        &["embed", "--input", "-"][..],
        &["serve", "--port", "0"][..],
        &["info"][..],
    ] {
        let err = run_fails(cmd);
        assert!(err.contains("huggingface-cli download jinaai/jina-embeddings-v3 config.json tokenizer.json model.safetensors"), "{cmd:?}: {err}");
        assert!(err.contains("/nonexistent-hf-cache"), "{cmd:?}: {err}");
    }
}

#[test]
fn help_has_an_example_for_every_command_and_completions_generate() {
    let help = String::from_utf8(run(&["--help"]).stdout).expect("utf8");
    let commands = [
        "fixture",
        "embed",
        "download",
        "info",
        "bench",
        "serve",
        "completions",
    ];
    for command in commands {
        assert!(help.contains(command), "{help}");
        let sub = String::from_utf8(run(&[command, "--help"]).stdout).expect("utf8");
        assert!(
            sub.contains("Example: jina-embed "),
            "{command} --help lacks an example:\n{sub}"
        );
    }
    for shell in ["bash", "zsh", "fish"] {
        let script = String::from_utf8(run(&["completions", shell]).stdout).expect("utf8");
        assert!(
            script.contains("jina-embed")
                && script.contains("--late-chunking")
                && script.contains("completions"),
            "{shell}"
        );
    }
    if Command::new("bash").arg("--version").output().is_ok() {
        let script = String::from_utf8(run(&["completions", "bash"]).stdout).expect("utf8");
        let check = Command::new("bash")
            .args(["-n", "-c", &script])
            .status()
            .expect("bash -n");
        assert!(check.success(), "the bash completion script does not parse");
    }
}

/// On a terminal (a pseudo-terminal from util-linux `script`), the bar shows rows done of the
/// total, tokens/s and the ETA; with stderr not a terminal nothing of it is printed.
#[cfg(unix)]
#[test]
fn the_progress_bar_shows_rows_tokens_per_second_and_eta_on_a_terminal() {
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("skipped: util-linux `script` is not installed");
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let input = dir.path().join("in.txt");
    std::fs::write(&input, texts(1000).join("\n") + "\n").expect("write input");
    let embed = |output: &Path| {
        format!(
            "'{}' embed --model '{}' --input '{}' --output '{}' --max-batch-tokens 256",
            env!("CARGO_BIN_EXE_jina-embed"),
            fixture().display(),
            input.display(),
            output.display()
        )
    };
    let on_terminal = dir.path().join("tty.jsonl");
    let out = Command::new("script")
        .args(["-q", "-e", "-c", &embed(&on_terminal), "/dev/null"])
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .expect("run script");
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{shown}");
    for part in ["/1000 rows", "tokens/s", " < "] {
        assert!(
            shown.contains(part),
            "{part:?} missing from the terminal output: {shown:?}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(&on_terminal)
            .expect("output")
            .lines()
            .count(),
        1000
    );

    let piped = dir.path().join("piped.jsonl");
    let args = [
        "embed",
        "--model",
        fixture().to_str().expect("utf-8 path"),
        "--input",
        input.to_str().expect("utf-8"),
        "--output",
        piped.to_str().expect("utf-8"),
        "--max-batch-tokens",
        "256",
    ];
    let out = run(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Only the closing summary line, no bar frames or terminal control sequences.
    assert!(
        !stderr.contains("/1000 rows") && !stderr.contains('\u{1b}') && !stderr.contains('\r'),
        "a bar on a pipe: {stderr:?}"
    );
    assert!(stderr.contains("embedded 1000 rows"), "{stderr}");
}
