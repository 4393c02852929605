//! Every way a model folder can be wrong gives an error that names the file or tensor, what was
//! expected and what was found, and never a panic.

mod common;

use std::path::Path;

use tempfile::TempDir;

use common::small_fixture_dir;
use jina_engine::Model;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

/// A fresh copy of the small fixture folder whose weights are the fixture's tensors passed
/// through `edit` (name, dtype, shape, bytes).
fn folder_with(edit: impl Fn(&mut Vec<(String, Dtype, Vec<usize>, Vec<u8>)>)) -> TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let src = small_fixture_dir();
    for file in ["config.json", "tokenizer.json"] {
        std::fs::copy(src.join(file), dir.join(file)).unwrap();
    }
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    edit(&mut tensors);
    let views = tensors
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()));
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
    tmp
}

fn load_error(dir: &Path) -> String {
    match Model::load(dir) {
        Ok(_) => panic!("{} loaded, but should not", dir.display()),
        Err(e) => {
            assert!(!e.is_client_error());
            e.to_string()
        }
    }
}

fn assert_mentions(message: &str, parts: &[&str]) {
    for part in parts {
        assert!(
            message.contains(part),
            "{message:?} should mention {part:?}"
        );
    }
}

#[test]
fn missing_files_are_named() {
    for file in ["config.json", "tokenizer.json", "model.safetensors"] {
        let tmp = folder_with(|_| {});
        let dir = tmp.path();
        std::fs::remove_file(dir.join(file)).unwrap();
        assert_mentions(&load_error(tmp.path()), &[file, "missing"]);
    }
}

#[test]
fn missing_tensor_is_named_with_its_shape() {
    let name = "roberta.encoder.layers.1.mlp.fc2.bias";
    let tmp = folder_with(|t| t.retain(|(n, ..)| n != name));
    assert_mentions(&load_error(tmp.path()), &[name, "missing", "[128]"]);
}

#[test]
fn unexpected_tensor_is_named() {
    let tmp = folder_with(|t| {
        t.push((
            "roberta.lm_head.weight".into(),
            Dtype::BF16,
            vec![2, 2],
            vec![0; 8],
        ));
    });
    assert_mentions(
        &load_error(tmp.path()),
        &["roberta.lm_head.weight", "unexpected"],
    );
}

#[test]
fn wrong_shape_names_expected_and_found() {
    let name = "roberta.emb_ln.weight";
    let tmp = folder_with(|t| {
        let entry = t.iter_mut().find(|(n, ..)| n == name).unwrap();
        entry.2 = vec![64];
        entry.3.truncate(128);
    });
    assert_mentions(&load_error(tmp.path()), &[name, "[64]", "[128]"]);
}

#[test]
fn unsupported_dtype_is_named() {
    let name = "roberta.emb_ln.bias";
    let tmp = folder_with(|t| {
        let entry = t.iter_mut().find(|(n, ..)| n == name).unwrap();
        entry.1 = Dtype::I16;
    });
    assert_mentions(&load_error(tmp.path()), &[name, "I16", "BF16, F16 and F32"]);
}

#[test]
fn f32_and_f16_checkpoints_load_and_agree() {
    use half::{bf16, f16};
    let convert = |to: Dtype| {
        move |t: &mut Vec<(String, Dtype, Vec<usize>, Vec<u8>)>| {
            for (_, dtype, _, bytes) in t.iter_mut() {
                let values: Vec<f32> = bytes
                    .chunks_exact(2)
                    .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
                    .collect();
                *bytes = match to {
                    Dtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
                    _ => values
                        .iter()
                        .flat_map(|v| f16::from_f32(*v).to_le_bytes())
                        .collect(),
                };
                *dtype = to;
            }
        }
    };
    let request = jina_engine::EmbedRequest::new(vec!["Ein kurzer Satz.".into()])
        .with_task("retrieval.query");
    let reference = common::small_model().embed(&request).unwrap();
    let f32_model = Model::load(folder_with(convert(Dtype::F32)).path()).unwrap();
    assert_eq!(f32_model.weights_dtype(), "F32");
    // bf16 → f32 is exact, so the f32 checkpoint gives the same numbers: the same bits where
    // its f32 weights take a kernel that sums in the order of the bf16 checkpoint's (AVX-512,
    // the reference), within f32 rounding where they take the `gemm` crate's blocked order
    // (an AVX2-only or aarch64 CPU, which has no packed f32 kernel of ours).
    let got = f32_model.embed(&request).unwrap();
    if f32_model.kernel_plan().linear == jina_engine::kernels::LinearKernel::Gemm {
        assert_eq!(got.total_tokens, reference.total_tokens);
        let diff = common::max_abs_diff(&got.embeddings[0], &reference.embeddings[0]);
        assert!(diff < 1e-6, "f32 checkpoint on the gemm crate: {diff}");
    } else {
        assert_eq!(got, reference);
    }
    let f16_model = Model::load(folder_with(convert(Dtype::F16)).path()).unwrap();
    let got = f16_model.embed(&request).unwrap();
    assert!(common::max_abs_diff(&got.embeddings[0], &reference.embeddings[0]) < 1e-2);
}

#[test]
fn corrupt_and_truncated_files_are_reported() {
    let tmp = folder_with(|_| {});
    let path = tmp.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    assert_mentions(
        &load_error(tmp.path()),
        &["model.safetensors", "corrupt or truncated"],
    );

    std::fs::write(&path, b"\xff\xff\xff\xff\xff\xff\xff\x7fnot a header").unwrap();
    assert_mentions(
        &load_error(tmp.path()),
        &["model.safetensors", "corrupt or truncated"],
    );

    std::fs::write(&path, b"").unwrap();
    assert_mentions(
        &load_error(tmp.path()),
        &["model.safetensors", "corrupt or truncated"],
    );

    let header =
        br#"{"roberta.emb_ln.weight":{"dtype":"BF16","shape":[128],"data_offsets":[0,999999]}}"#;
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(header);
    std::fs::write(&path, file).unwrap();
    assert_mentions(
        &load_error(tmp.path()),
        &["model.safetensors", "corrupt or truncated"],
    );
}

#[test]
fn config_that_contradicts_the_tensors_is_reported() {
    let tmp = folder_with(|_| {});
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("config.json")).unwrap())
            .unwrap();
    config["intermediate_size"] = 512.into();
    std::fs::write(tmp.path().join("config.json"), config.to_string()).unwrap();
    assert_mentions(
        &load_error(tmp.path()),
        &[
            "roberta.encoder.layers.0.mlp.fc1",
            "[256",
            "[512",
            "config.json implies",
        ],
    );

    std::fs::write(tmp.path().join("config.json"), "{\"hidden_size\": \"big\"}").unwrap();
    assert_mentions(&load_error(tmp.path()), &["config.json", "hidden_size"]);
}

#[test]
fn invalid_tokenizer_is_reported() {
    let tmp = folder_with(|_| {});
    std::fs::write(
        tmp.path().join("tokenizer.json"),
        "{ this is not a tokenizer",
    )
    .unwrap();
    assert_mentions(
        &load_error(tmp.path()),
        &["tokenizer.json", "invalid tokenizer"],
    );
}

#[test]
fn unknown_config_fields_are_ignored() {
    let tmp = folder_with(|_| {});
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("config.json")).unwrap())
            .unwrap();
    config["auto_map"] = serde_json::json!({"AutoModel": "jinaai/xlm-roberta-flash-implementation--modeling_lora.XLMRobertaLoRA"});
    config["some_future_field"] = 42.into();
    std::fs::write(tmp.path().join("config.json"), config.to_string()).unwrap();
    Model::load(tmp.path()).unwrap();
}

/// The word table is read row by row from the file, not through the mapping: every row equals
/// the tensor's conversion, and reading them all leaves none of the file resident in this
/// process (through the mapping, a freshly written file's page-cache folios of up to 2 MB were
/// mapped whole, the whole 512 MB table of the real checkpoint for one batch).
#[test]
fn word_table_rows_come_from_the_file_and_stay_out_of_the_resident_set() {
    use jina_engine::weights::Weights;
    use jina_engine::Config;
    // A file of its own, written just now, so that no other test maps it.
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("model.safetensors");
    std::fs::copy(small_fixture_dir().join("model.safetensors"), &path).unwrap();
    let config = Config::from_file(&small_fixture_dir().join("config.json")).unwrap();
    let weights = Weights::open(&path, &config).unwrap();
    let name = "roberta.embeddings.word_embeddings.parametrizations.weight.original";
    let table = weights.table(name).unwrap();
    assert_eq!(
        (table.rows(), table.cols()),
        (config.vocab_size, config.hidden_size)
    );
    let resident_before = resident_kib_of(&path);
    let mut rows = vec![0f32; table.rows() * table.cols()];
    for (i, row) in rows.chunks_mut(table.cols()).enumerate() {
        table.read_row(i, row);
    }
    let resident_after = resident_kib_of(&path);
    assert_eq!(
        rows,
        weights.f32(name).unwrap(),
        "rows differ from the tensor"
    );
    // Only Linux has `smaps`; there the weights' mapping must be found, so that the check
    // cannot pass by measuring nothing.
    if cfg!(target_os = "linux") {
        let before = resident_before.expect("the weights file's mapping in /proc/self/smaps");
        let after = resident_after.expect("the weights file's mapping in /proc/self/smaps");
        let table_kib = table.rows() * table.cols() * 2 / 1024;
        assert!(
            after <= before + 64,
            "reading the {table_kib} KiB table made {before} -> {after} KiB of the file resident"
        );
    }
}

/// Resident KiB of this process's mappings of `path` (Linux `smaps`), `None` when the file is
/// not mapped or there is no `smaps`.
fn resident_kib_of(path: &Path) -> Option<usize> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
    let path = std::fs::canonicalize(path).ok()?;
    let path = path.to_str()?;
    let mut total = None;
    let mut inside = false;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            inside = line.ends_with(path);
        } else if inside && first == "Rss:" {
            let kib = line.split_whitespace().nth(1)?.parse::<usize>().ok()?;
            total = Some(total.unwrap_or(0) + kib);
        }
    }
    total
}
