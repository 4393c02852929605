//! Task adapters: the LoRA weights of one task, in the checkpoint's own layouts.
//!
//! The checkpoint stacks its five tasks in every LoRA tensor (`lora_A` is `[tasks, r, in]`,
//! `lora_B` is `[tasks, out, r]`; the embeddings' `lora_A` is `[tasks, rows, r]` and `lora_B`
//! `[tasks, r, hidden]`). [`AdapterWeights`] is one task's slice of all of them: what training
//! starts from and updates, what an adapter folder stores ([`folder`]), and what a custom task
//! serves ([`CustomAdapter`], shared by the sequences that use it through [`TaskAdapter`]).

use crate::config::Config;
use crate::error::{Error, Result};
use crate::weights::Weights;

pub mod folder;

pub use folder::{AdapterFolder, AdapterMetadata};

/// The linear layers of one encoder block that carry LoRA, in the order of
/// [`AdapterWeights::linears`] (`layer * 4 + site`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinearSite {
    /// `mixer.Wqkv`: the packed Q, K, V projection, `hidden → 3·hidden`.
    Qkv = 0,
    /// `mixer.out_proj`, `hidden → hidden`.
    OutProj = 1,
    /// `mlp.fc1`, `hidden → intermediate`.
    Fc1 = 2,
    /// `mlp.fc2`, `intermediate → hidden`.
    Fc2 = 3,
}

impl LinearSite {
    /// Every site, in storage order.
    pub const ALL: [LinearSite; 4] = [
        LinearSite::Qkv,
        LinearSite::OutProj,
        LinearSite::Fc1,
        LinearSite::Fc2,
    ];

    /// The module path inside `roberta.encoder.layers.{layer}`.
    pub fn module(self) -> &'static str {
        match self {
            LinearSite::Qkv => "mixer.Wqkv",
            LinearSite::OutProj => "mixer.out_proj",
            LinearSite::Fc1 => "mlp.fc1",
            LinearSite::Fc2 => "mlp.fc2",
        }
    }

    /// `(n_in, n_out)` of the layer under `config`.
    pub fn shape(self, config: &Config) -> (usize, usize) {
        let h = config.hidden_size;
        let i = config.intermediate_size;
        match self {
            LinearSite::Qkv => (h, 3 * h),
            LinearSite::OutProj => (h, h),
            LinearSite::Fc1 => (h, i),
            LinearSite::Fc2 => (i, h),
        }
    }
}

/// One linear layer's LoRA pair: the delta to `W` (`[out, in]`) is `scaling · B · A`.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraLinear {
    /// `[rank × n_in]`, row-major (the checkpoint's `lora_A` of one task).
    pub a: Vec<f32>,
    /// `[n_out × rank]`, row-major (the checkpoint's `lora_B` of one task).
    pub b: Vec<f32>,
}

/// The LoRA weights of one task over the whole encoder.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterWeights {
    /// LoRA rank `r`.
    pub rank: usize,
    /// `alpha / r`: the factor on every `B·A`.
    pub scaling: f32,
    /// One pair per linear layer, `layer * 4 + site` ([`LinearSite`]).
    pub linears: Vec<LoraLinear>,
    /// Word embeddings' `A`, `[vocab × rank]`.
    pub word_a: Vec<f32>,
    /// Word embeddings' `B`, `[rank × hidden]`.
    pub word_b: Vec<f32>,
    /// Token-type embeddings' `A`, `[type_vocab × rank]`.
    pub token_type_a: Vec<f32>,
    /// Token-type embeddings' `B`, `[rank × hidden]`.
    pub token_type_b: Vec<f32>,
}

impl AdapterWeights {
    /// Task `task`'s slice of every LoRA tensor of the checkpoint.
    pub fn from_checkpoint(weights: &Weights, config: &Config, task: usize) -> Result<Self> {
        let tasks = config.num_adapters();
        if task >= tasks {
            return Err(Error::InvalidRequest(format!(
                "adapter index {task} is out of range: the checkpoint has {tasks} tasks"
            )));
        }
        let slice = |name: &str| -> Result<Vec<f32>> {
            let all = weights.f32(name)?;
            let per_task = all.len() / tasks;
            Ok(all[task * per_task..(task + 1) * per_task].to_vec())
        };
        let mut linears = Vec::with_capacity(config.num_hidden_layers * LinearSite::ALL.len());
        for layer in 0..config.num_hidden_layers {
            for site in LinearSite::ALL {
                let base = format!(
                    "roberta.encoder.layers.{layer}.{}.parametrizations.weight.0",
                    site.module()
                );
                linears.push(LoraLinear {
                    a: slice(&format!("{base}.lora_A"))?,
                    b: slice(&format!("{base}.lora_B"))?,
                });
            }
        }
        let emb = |table: &str, part: &str| {
            slice(&format!(
                "roberta.embeddings.{table}.parametrizations.weight.0.{part}"
            ))
        };
        Ok(AdapterWeights {
            rank: config.lora_rank,
            scaling: config.lora_scaling(),
            linears,
            word_a: emb("word_embeddings", "lora_A")?,
            word_b: emb("word_embeddings", "lora_B")?,
            token_type_a: emb("token_type_embeddings", "lora_A")?,
            token_type_b: emb("token_type_embeddings", "lora_B")?,
        })
    }

    /// All-zero weights of the shapes `config` implies, at the checkpoint's rank and scaling.
    pub fn zeros(config: &Config) -> Self {
        let r = config.lora_rank;
        let h = config.hidden_size;
        let mut linears = Vec::with_capacity(config.num_hidden_layers * LinearSite::ALL.len());
        for _ in 0..config.num_hidden_layers {
            for site in LinearSite::ALL {
                let (n_in, n_out) = site.shape(config);
                linears.push(LoraLinear {
                    a: vec![0.0; r * n_in],
                    b: vec![0.0; n_out * r],
                });
            }
        }
        AdapterWeights {
            rank: r,
            scaling: config.lora_scaling(),
            linears,
            word_a: vec![0.0; config.vocab_size * r],
            word_b: vec![0.0; r * h],
            token_type_a: vec![0.0; config.type_vocab_size * r],
            token_type_b: vec![0.0; r * h],
        }
    }

    /// A fresh adapter as PEFT initialises LoRA, so that training can start from nothing: each
    /// linear's A uniform in `±1/√n_in` (PEFT's Kaiming-uniform with `a = √5`) and B zero; the
    /// embeddings' A zero and B standard normal. Its product is zero: it starts as the base
    /// model. Seeded (splitmix64), so a run is reproducible.
    pub fn lora_init(config: &Config, seed: u64) -> Self {
        let mut w = AdapterWeights::zeros(config);
        let mut state = seed ^ 0x5851_F42D_4C95_7F2D;
        let mut uniform = move || {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            (crate::fixture::mix64(state) >> 11) as f64 / (1u64 << 53) as f64
        };
        for (i, l) in w.linears.iter_mut().enumerate() {
            let n_in = LinearSite::ALL[i % LinearSite::ALL.len()].shape(config).0;
            let bound = 1.0 / (n_in as f64).sqrt();
            l.a.iter_mut()
                .for_each(|v| *v = ((uniform() * 2.0 - 1.0) * bound) as f32);
        }
        for b in w.word_b.iter_mut().chain(w.token_type_b.iter_mut()) {
            // Box-Muller.
            let (u1, u2) = (uniform().max(1e-300), uniform());
            *b = ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32;
        }
        w
    }

    /// The pair of one linear layer.
    pub fn linear(&self, layer: usize, site: LinearSite) -> &LoraLinear {
        &self.linears[layer * LinearSite::ALL.len() + site as usize]
    }

    /// Number of values (trainable parameters).
    pub fn parameter_count(&self) -> usize {
        self.linears
            .iter()
            .map(|l| l.a.len() + l.b.len())
            .sum::<usize>()
            + self.word_a.len()
            + self.word_b.len()
            + self.token_type_a.len()
            + self.token_type_b.len()
    }

    /// Every tensor in one fixed order (each linear's A then B, by index; the word table's A
    /// and B; the token type's A and B): what an optimizer walks.
    pub fn tensors(&self) -> Vec<&[f32]> {
        let mut out: Vec<&[f32]> = Vec::with_capacity(self.linears.len() * 2 + 4);
        for l in &self.linears {
            out.push(&l.a);
            out.push(&l.b);
        }
        out.extend([
            &self.word_a[..],
            &self.word_b[..],
            &self.token_type_a[..],
            &self.token_type_b[..],
        ]);
        out
    }

    /// [`AdapterWeights::tensors`], writable.
    pub fn tensors_mut(&mut self) -> Vec<&mut [f32]> {
        let mut out: Vec<&mut [f32]> = Vec::with_capacity(self.linears.len() * 2 + 4);
        for l in &mut self.linears {
            out.push(&mut l.a);
            out.push(&mut l.b);
        }
        out.extend([
            &mut self.word_a[..],
            &mut self.word_b[..],
            &mut self.token_type_a[..],
            &mut self.token_type_b[..],
        ]);
        out
    }

    /// Sets every value to zero (a gradient accumulator between steps).
    pub fn fill_zero(&mut self) {
        for t in self.tensors_mut() {
            t.fill(0.0);
        }
    }

    /// Checks every shape against `config`: an adapter for another model is refused here,
    /// with the first tensor that disagrees.
    pub fn check_shapes(&self, config: &Config) -> Result<()> {
        let expected = AdapterWeights::zeros(config);
        let mismatch = |what: String, want: usize, got: usize| {
            Err(Error::InvalidRequest(format!(
                "adapter tensor {what} holds {got} values, but this model needs {want}"
            )))
        };
        if self.rank != expected.rank {
            return Err(Error::InvalidRequest(format!(
                "adapter rank {} differs from the model's LoRA rank {}",
                self.rank, expected.rank
            )));
        }
        if self.linears.len() != expected.linears.len() {
            return mismatch(
                "linear layers".into(),
                expected.linears.len(),
                self.linears.len(),
            );
        }
        for (i, (got, want)) in self.linears.iter().zip(&expected.linears).enumerate() {
            let name = format!("layers.{}.{}", i / 4, LinearSite::ALL[i % 4].module());
            if got.a.len() != want.a.len() {
                return mismatch(format!("{name}.lora_A"), want.a.len(), got.a.len());
            }
            if got.b.len() != want.b.len() {
                return mismatch(format!("{name}.lora_B"), want.b.len(), got.b.len());
            }
        }
        for (name, got, want) in [
            ("word_embeddings.lora_A", &self.word_a, &expected.word_a),
            ("word_embeddings.lora_B", &self.word_b, &expected.word_b),
            (
                "token_type_embeddings.lora_A",
                &self.token_type_a,
                &expected.token_type_a,
            ),
            (
                "token_type_embeddings.lora_B",
                &self.token_type_b,
                &expected.token_type_b,
            ),
        ] {
            if got.len() != want.len() {
                return mismatch(name.into(), want.len(), got.len());
            }
        }
        Ok(())
    }
}

/// A task the model serves beside its built-in ones: a name, an instruction prefix and LoRA
/// weights over the same frozen base, loaded from an adapter folder or trained in-process.
pub struct CustomAdapter {
    name: String,
    prefix: String,
    weights: AdapterWeights,
    /// Each linear's `B` transposed to `[rank × n_out]`, as the products' epilogue reads it.
    b_t: Vec<Vec<f32>>,
    /// Token-type row 0 with this adapter's delta folded in, as for the built-in tasks.
    token_type_row: Vec<f32>,
    /// What the adapter folder says about itself (`jina_adapter.json`), kept for listings.
    metadata: serde_json::Value,
}

impl CustomAdapter {
    /// An adapter named `name` whose sequences get `prefix`; `token_type_base` is row 0 of the
    /// base token-type table (the adapter's delta is folded into it once, here).
    pub fn new(
        name: &str,
        prefix: &str,
        weights: AdapterWeights,
        token_type_base: &[f32],
        metadata: serde_json::Value,
    ) -> Self {
        let b_t = weights
            .linears
            .iter()
            .map(|l| transpose(&l.b, l.b.len() / weights.rank.max(1), weights.rank))
            .collect();
        let mut token_type_row = token_type_base.to_vec();
        add_scaled_row(
            &mut token_type_row,
            &weights.token_type_a[..weights.rank],
            &weights.token_type_b,
            weights.scaling,
        );
        CustomAdapter {
            name: name.to_string(),
            prefix: prefix.to_string(),
            weights,
            b_t,
            token_type_row,
            metadata,
        }
    }

    /// The task name requests use.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The instruction prefix put before every input of this task ("" for none).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The LoRA weights.
    pub fn weights(&self) -> &AdapterWeights {
        &self.weights
    }

    /// The folder's metadata (`null` when it had none).
    pub fn metadata(&self) -> &serde_json::Value {
        &self.metadata
    }

    /// `A` (`[rank × n_in]`), `B` (`[n_out × rank]`) and `Bᵀ` (`[rank × n_out]`) of linear
    /// `index` (`layer * 4 + site`).
    pub(crate) fn linear_parts(&self, index: usize) -> (&[f32], &[f32], &[f32]) {
        let l = &self.weights.linears[index];
        (&l.a, &l.b, &self.b_t[index])
    }

    /// Token-type row 0 with the delta folded in.
    pub(crate) fn token_type_row(&self) -> &[f32] {
        &self.token_type_row
    }
}

/// The adapter of a sequence: one of the checkpoint's tasks, by index, or a custom one, shared:
/// a request in flight keeps its custom adapter alive even if it is unloaded meanwhile.
#[derive(Clone)]
pub enum TaskAdapter {
    /// Index into `lora_adaptations` (the checkpoint's stacked LoRA tensors).
    Builtin(usize),
    /// A loaded or trained adapter.
    Custom(std::sync::Arc<CustomAdapter>),
}

impl std::fmt::Debug for CustomAdapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CustomAdapter")
            .field("name", &self.name)
            .field("prefix", &self.prefix)
            .field("parameters", &self.weights.parameter_count())
            .finish()
    }
}

impl PartialEq for TaskAdapter {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (TaskAdapter::Builtin(a), TaskAdapter::Builtin(b)) => a == b,
            (TaskAdapter::Custom(a), TaskAdapter::Custom(b)) => std::sync::Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl Eq for TaskAdapter {}

impl std::fmt::Debug for TaskAdapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TaskAdapter::Builtin(i) => write!(f, "Builtin({i})"),
            TaskAdapter::Custom(c) => write!(f, "Custom({:?})", c.name),
        }
    }
}

/// `[n × r]` transposed to `[r × n]`.
fn transpose(m: &[f32], n: usize, r: usize) -> Vec<f32> {
    let mut t = vec![0f32; m.len()];
    for c in 0..n {
        for j in 0..r {
            t[j * n + c] = m[c * r + j];
        }
    }
    t
}

/// `row += s·(a·B)`, the sum over the rank first (as the model folds the built-in rows).
pub(crate) fn add_scaled_row(row: &mut [f32], a: &[f32], b: &[f32], scaling: f32) {
    let width = row.len();
    for (j, v) in row.iter_mut().enumerate() {
        let mut dot = 0f32;
        for (k, &ak) in a.iter().enumerate() {
            dot += ak * b[k * width + j];
        }
        *v += dot * scaling;
    }
}

/// Longest custom task name.
pub const MAX_TASK_NAME: usize = 64;

/// A custom task name: 1 to [`MAX_TASK_NAME`] ASCII letters, digits, `.`, `-` or `_`, so that it
/// reads the same in a URL path, a JSON field and a file name.
pub fn check_task_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        Some("it is empty".to_string())
    } else if name.len() > MAX_TASK_NAME {
        Some(format!(
            "it has {} characters, more than the limit of {MAX_TASK_NAME}",
            name.len()
        ))
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        Some("only ASCII letters, digits, '.', '-' and '_' are allowed".to_string())
    } else {
        None
    };
    match reason {
        Some(reason) => Err(Error::AdapterName {
            name: name.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

/// `NAME=DIR` or `DIR` (the name from the folder's metadata): how the command line and the
/// Python package name an adapter folder to serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdapterSpec {
    /// The task name, or `None` for the one in the folder's `jina_adapter.json`.
    pub name: Option<String>,
    /// The adapter folder.
    pub dir: std::path::PathBuf,
}

impl std::str::FromStr for AdapterSpec {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.split_once('=') {
            Some((name, dir)) if !dir.is_empty() => {
                check_task_name(name).map_err(|e| e.to_string())?;
                Ok(AdapterSpec {
                    name: Some(name.to_string()),
                    dir: dir.into(),
                })
            }
            Some(_) => Err(format!("{s:?}: expected NAME=DIR with a folder after '='")),
            None if s.is_empty() => Err("expected NAME=DIR or DIR, got nothing".into()),
            None => Ok(AdapterSpec {
                name: None,
                dir: s.into(),
            }),
        }
    }
}
