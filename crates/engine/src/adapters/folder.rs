//! The adapter folder: a PEFT LoRA adapter for transformers' native `JinaEmbeddingsV3Model`
//! (what `PeftModel.from_pretrained(model, dir)` loads), plus this engine's metadata.
//!
//! ```text
//! adapter_config.json          PEFT's LoraConfig: r, lora_alpha, target_modules, …
//! adapter_model.safetensors    PEFT's tensor names (f32), see the table below
//! jina_adapter.json            name, instruction prefix, base model, training, eval figures
//! ```
//!
//! The port splits the checkpoint's packed `Wqkv` into `q_proj`, `k_proj` and `v_proj`. The
//! three share the packed layer's input, so they share its `A`; its `B` (`[3·hidden, r]`) is
//! cut in row blocks, Q then K then V: `Bq·A`, `Bk·A`, `Bv·A` are exactly the row blocks of
//! `B·A`, so nothing is approximated. Reading a folder back, `q`, `k` and `v` must hold the
//! same `A` (a folder trained elsewhere with three different `A`s cannot be packed and is
//! refused, naming the layer). PEFT stores an embedding's LoRA transposed
//! (`lora_embedding_A` `[r, rows]`, `lora_embedding_B` `[hidden, r]`, delta `(B·A)ᵀ`).
//!
//! | ours (`AdapterWeights`)              | PEFT key (prefix `base_model.model.`)                 |
//! |--------------------------------------|-------------------------------------------------------|
//! | `linears[4l]` (Wqkv) `A`, `B` rows    | `layers.{l}.self_attn.{q,k,v}_proj.lora_{A,B}.weight` |
//! | `linears[4l+1]` (out_proj)            | `layers.{l}.self_attn.o_proj.lora_{A,B}.weight`       |
//! | `linears[4l+2]`, `[4l+3]` (fc1, fc2)  | `layers.{l}.mlp.fc{1,2}.lora_{A,B}.weight`            |
//! | `word_a`ᵀ, `word_b`ᵀ                  | `embeddings.word_embeddings.lora_embedding_{A,B}`     |
//! | `token_type_a`ᵀ, `token_type_b`ᵀ      | `embeddings.token_type_embeddings.lora_embedding_{A,B}` |

use std::collections::BTreeMap;
use std::path::Path;

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

use super::{AdapterWeights, LinearSite, LoraLinear};
use crate::config::Config;
use crate::error::{Error, Result};

/// PEFT's configuration file.
pub const PEFT_CONFIG: &str = "adapter_config.json";
/// PEFT's weights file.
pub const PEFT_WEIGHTS: &str = "adapter_model.safetensors";
/// This engine's metadata file.
pub const METADATA: &str = "jina_adapter.json";

/// Version of [`METADATA`]'s layout.
const FORMAT_VERSION: u32 = 1;

/// Where every PEFT key starts (PEFT's wrapper `base_model`, LoraModel's `model`).
const KEY_PREFIX: &str = "base_model.model.";

/// The model an adapter was trained on: checked when the folder is loaded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaseModel {
    /// sha256 of the base `model.safetensors` (lowercase hex).
    pub sha256: Option<String>,
    /// Hidden size.
    pub hidden_size: usize,
    /// Encoder blocks.
    pub num_hidden_layers: usize,
    /// Word-table rows.
    pub vocab_size: usize,
}

/// `jina_adapter.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterMetadata {
    /// Layout version.
    pub format_version: u32,
    /// The task name it is served under unless the user gives another.
    pub name: String,
    /// Instruction prefix put before every input.
    pub prefix: String,
    /// The base model it belongs to.
    pub base_model: BaseModel,
    /// How it was made (the trainer's settings), free-form.
    #[serde(default)]
    pub training: serde_json::Value,
    /// Evaluation figures, free-form.
    #[serde(default)]
    pub eval: serde_json::Value,
}

impl AdapterMetadata {
    /// Metadata for an adapter of `config`'s model.
    pub fn new(name: &str, prefix: &str, config: &Config, base_sha256: Option<String>) -> Self {
        AdapterMetadata {
            format_version: FORMAT_VERSION,
            name: name.to_string(),
            prefix: prefix.to_string(),
            base_model: BaseModel {
                sha256: base_sha256,
                hidden_size: config.hidden_size,
                num_hidden_layers: config.num_hidden_layers,
                vocab_size: config.vocab_size,
            },
            training: serde_json::Value::Null,
            eval: serde_json::Value::Null,
        }
    }
}

/// PEFT's `adapter_config.json`, the fields this engine writes and reads.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PeftConfig {
    peft_type: String,
    r: usize,
    lora_alpha: f64,
    #[serde(default)]
    target_modules: serde_json::Value,
    #[serde(default)]
    use_rslora: bool,
    #[serde(default)]
    use_dora: bool,
    #[serde(flatten)]
    rest: BTreeMap<String, serde_json::Value>,
}

/// What a folder holds.
#[derive(Debug, Clone)]
pub struct AdapterFolder {
    /// The LoRA weights.
    pub weights: AdapterWeights,
    /// `jina_adapter.json`, or `None` for a plain PEFT folder.
    pub metadata: Option<AdapterMetadata>,
}

/// Writes `weights` and `metadata` into `dir` (created if missing). Files are written to
/// temporary names and renamed, so a crash never leaves a half-written adapter.
pub fn save(dir: &Path, weights: &AdapterWeights, metadata: &AdapterMetadata) -> Result<()> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let tensors = peft_tensors(weights);
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(name, shape, values)| {
            let view = TensorView::new(Dtype::F32, shape.clone(), bytemuck_f32(values))
                .expect("shape and data agree by construction");
            (name.clone(), view)
        })
        .collect();
    let bytes = safetensors::serialize(views, None).map_err(|e| Error::Adapter {
        path: dir.join(PEFT_WEIGHTS),
        message: e.to_string(),
    })?;
    let config = peft_config(weights, metadata);
    let files = [
        (PEFT_WEIGHTS, bytes),
        (PEFT_CONFIG, pretty(&config)),
        (METADATA, pretty(metadata)),
    ];
    for (name, contents) in files {
        let path = dir.join(name);
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, contents).map_err(io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
    }
    Ok(())
}

fn pretty<T: Serialize>(value: &T) -> Vec<u8> {
    let mut s = serde_json::to_vec_pretty(value).expect("plain data serialises");
    s.push(b'\n');
    s
}

fn peft_config(weights: &AdapterWeights, metadata: &AdapterMetadata) -> serde_json::Value {
    serde_json::json!({
        "peft_type": "LORA",
        "task_type": "FEATURE_EXTRACTION",
        "base_model_name_or_path": "jinaai/jina-embeddings-v3-hf",
        "r": weights.rank,
        "lora_alpha": weights.scaling as f64 * weights.rank as f64,
        "lora_dropout": 0.0,
        "bias": "none",
        "use_rslora": false,
        "use_dora": false,
        "fan_in_fan_out": false,
        "inference_mode": true,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "fc1", "fc2",
                           "word_embeddings", "token_type_embeddings"],
        "revision": null,
        "jina_task": metadata.name,
    })
}

/// The PEFT module path of each linear site of layer `l`; Wqkv is three modules.
fn peft_modules(layer: usize, site: LinearSite) -> Vec<String> {
    let p = format!("layers.{layer}");
    match site {
        LinearSite::Qkv => ["q_proj", "k_proj", "v_proj"]
            .iter()
            .map(|m| format!("{p}.self_attn.{m}"))
            .collect(),
        LinearSite::OutProj => vec![format!("{p}.self_attn.o_proj")],
        LinearSite::Fc1 => vec![format!("{p}.mlp.fc1")],
        LinearSite::Fc2 => vec![format!("{p}.mlp.fc2")],
    }
}

/// Every tensor of the PEFT file: name, shape, values.
fn peft_tensors(w: &AdapterWeights) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let r = w.rank;
    let layers = w.linears.len() / LinearSite::ALL.len();
    let mut out = Vec::new();
    for layer in 0..layers {
        for site in LinearSite::ALL {
            let lora = w.linear(layer, site);
            let n_in = lora.a.len() / r;
            let modules = peft_modules(layer, site);
            let rows = lora.b.len() / r / modules.len();
            for (i, module) in modules.iter().enumerate() {
                let key = format!("{KEY_PREFIX}{module}");
                out.push((
                    format!("{key}.lora_A.weight"),
                    vec![r, n_in],
                    lora.a.clone(),
                ));
                let b = lora.b[i * rows * r..(i + 1) * rows * r].to_vec();
                out.push((format!("{key}.lora_B.weight"), vec![rows, r], b));
            }
        }
    }
    for (table, a, b) in [
        ("word_embeddings", &w.word_a, &w.word_b),
        ("token_type_embeddings", &w.token_type_a, &w.token_type_b),
    ] {
        let rows = a.len() / r;
        let hidden = b.len() / r;
        let key = format!("{KEY_PREFIX}embeddings.{table}");
        out.push((
            format!("{key}.lora_embedding_A"),
            vec![r, rows],
            transposed(a, rows, r),
        ));
        out.push((
            format!("{key}.lora_embedding_B"),
            vec![hidden, r],
            transposed(b, r, hidden),
        ));
    }
    out
}

/// `[rows × cols]` row-major, transposed.
fn transposed(m: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0f32; m.len()];
    for i in 0..rows {
        for j in 0..cols {
            t[j * rows + i] = m[i * cols + j];
        }
    }
    t
}

fn bytemuck_f32(values: &[f32]) -> &[u8] {
    // SAFETY: f32 has no padding or invalid bit patterns; the byte view lives as long as
    // `values`. safetensors stores little-endian, which is every target this engine builds for.
    unsafe {
        std::slice::from_raw_parts(values.as_ptr() as *const u8, std::mem::size_of_val(values))
    }
}

/// Reads and checks an adapter folder for `config`'s model.
pub fn load(dir: &Path, config: &Config) -> Result<AdapterFolder> {
    let bad = |file: &str, message: String| Error::Adapter {
        path: dir.join(file),
        message,
    };
    if !dir.is_dir() {
        return Err(Error::Adapter {
            path: dir.to_path_buf(),
            message: format!(
                "not a folder: an adapter folder holds {PEFT_CONFIG}, {PEFT_WEIGHTS} and {METADATA}"
            ),
        });
    }
    let peft: PeftConfig = read_json(dir, PEFT_CONFIG)?;
    if peft.peft_type != "LORA" {
        return Err(bad(
            PEFT_CONFIG,
            format!(
                "peft_type is {:?}; only LORA adapters are supported",
                peft.peft_type
            ),
        ));
    }
    if peft.use_rslora || peft.use_dora {
        return Err(bad(
            PEFT_CONFIG,
            "use_rslora and use_dora are not supported".into(),
        ));
    }
    if peft.r != config.lora_rank {
        return Err(bad(
            PEFT_CONFIG,
            format!(
                "r is {}, but this model's adapters have rank {}",
                peft.r, config.lora_rank
            ),
        ));
    }
    let metadata = match dir.join(METADATA).exists() {
        true => Some(read_json::<AdapterMetadata>(dir, METADATA)?),
        false => None,
    };
    if let Some(m) = &metadata {
        check_base(dir, &m.base_model, config)?;
    }
    let path = dir.join(PEFT_WEIGHTS);
    let bytes = std::fs::read(&path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => bad(PEFT_WEIGHTS, "the file is missing".into()),
        _ => Error::Io {
            path: path.clone(),
            source,
        },
    })?;
    let file = SafeTensors::deserialize(&bytes).map_err(|e| bad(PEFT_WEIGHTS, e.to_string()))?;
    let scaling = (peft.lora_alpha / peft.r as f64) as f32;
    let weights = weights_from_peft(&file, config, scaling).map_err(|m| bad(PEFT_WEIGHTS, m))?;
    Ok(AdapterFolder { weights, metadata })
}

fn read_json<T: serde::de::DeserializeOwned>(dir: &Path, file: &str) -> Result<T> {
    let path = dir.join(file);
    let text = std::fs::read(&path).map_err(|source| Error::Adapter {
        path: path.clone(),
        message: match source.kind() {
            std::io::ErrorKind::NotFound => "the file is missing".into(),
            _ => source.to_string(),
        },
    })?;
    let mut de = serde_json::Deserializer::from_slice(&text);
    serde_path_to_error::deserialize(&mut de).map_err(|e| Error::Adapter {
        path: path.clone(),
        message: format!("field {}: {}", e.path(), e.inner()),
    })
}

fn check_base(dir: &Path, base: &BaseModel, config: &Config) -> Result<()> {
    let ours = (
        config.hidden_size,
        config.num_hidden_layers,
        config.vocab_size,
    );
    let theirs = (base.hidden_size, base.num_hidden_layers, base.vocab_size);
    if ours != theirs {
        return Err(Error::Adapter {
            path: dir.join(METADATA),
            message: format!(
                "trained on another base model: hidden_size, num_hidden_layers, vocab_size are \
                 {theirs:?} there and {ours:?} here"
            ),
        });
    }
    Ok(())
}

/// The tensors of a PEFT file, packed back into our layout.
fn weights_from_peft(
    file: &SafeTensors,
    config: &Config,
    scaling: f32,
) -> std::result::Result<AdapterWeights, String> {
    let mut w = AdapterWeights::zeros(config);
    w.scaling = scaling;
    let r = w.rank;
    let mut used = std::collections::BTreeSet::new();
    let mut read = |name: String, shape: Vec<usize>| -> std::result::Result<Vec<f32>, String> {
        let view = file
            .tensor(&name)
            .map_err(|_| format!("tensor {name} is missing (expected shape {shape:?})"))?;
        if view.shape() != shape.as_slice() {
            return Err(format!(
                "tensor {name} has shape {:?}, but this model needs {shape:?}",
                view.shape()
            ));
        }
        used.insert(name.clone());
        to_f32(view.dtype(), view.data()).ok_or(format!(
            "tensor {name} has dtype {:?}; F32, F16 and BF16 are supported",
            view.dtype()
        ))
    };
    for layer in 0..config.num_hidden_layers {
        for site in LinearSite::ALL {
            let (n_in, n_out) = site.shape(config);
            let modules = peft_modules(layer, site);
            let rows = n_out / modules.len();
            let mut a: Option<Vec<f32>> = None;
            let mut b = Vec::with_capacity(n_out * r);
            for module in &modules {
                let key = format!("{KEY_PREFIX}{module}");
                let this_a = read(format!("{key}.lora_A.weight"), vec![r, n_in])?;
                match &a {
                    Some(first) if *first != this_a => {
                        return Err(format!(
                            "{key}.lora_A.weight differs from {KEY_PREFIX}{}.lora_A.weight: the \
                             packed Wqkv of layer {layer} needs one A for q, k and v",
                            modules[0]
                        ))
                    }
                    Some(_) => {}
                    None => a = Some(this_a),
                }
                b.extend(read(format!("{key}.lora_B.weight"), vec![rows, r])?);
            }
            let index = layer * LinearSite::ALL.len() + site as usize;
            w.linears[index] = LoraLinear {
                a: a.unwrap_or_default(),
                b,
            };
        }
    }
    let h = config.hidden_size;
    for (table, rows) in [
        ("word_embeddings", config.vocab_size),
        ("token_type_embeddings", config.type_vocab_size),
    ] {
        let key = format!("{KEY_PREFIX}embeddings.{table}");
        // An adapter trained without LoRA on an embedding table leaves that table unchanged.
        if file.tensor(&format!("{key}.lora_embedding_A")).is_err()
            && file.tensor(&format!("{key}.lora_embedding_B")).is_err()
        {
            continue;
        }
        let a = transposed(
            &read(format!("{key}.lora_embedding_A"), vec![r, rows])?,
            r,
            rows,
        );
        let b = transposed(&read(format!("{key}.lora_embedding_B"), vec![h, r])?, h, r);
        if table == "word_embeddings" {
            (w.word_a, w.word_b) = (a, b);
        } else {
            (w.token_type_a, w.token_type_b) = (a, b);
        }
    }
    if let Some(extra) = file.names().into_iter().find(|n| !used.contains(*n)) {
        return Err(format!(
            "unexpected tensor {extra}: this engine applies LoRA to q/k/v/o_proj, fc1, fc2 \
             and the two embedding tables only"
        ));
    }
    Ok(w)
}

fn to_f32(dtype: Dtype, bytes: &[u8]) -> Option<Vec<f32>> {
    let pairs = || {
        bytes
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
    };
    match dtype {
        Dtype::F32 => Some(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ),
        Dtype::F16 => Some(pairs().map(|b| half::f16::from_bits(b).to_f32()).collect()),
        Dtype::BF16 => Some(pairs().map(|b| half::bf16::from_bits(b).to_f32()).collect()),
        _ => None,
    }
}
