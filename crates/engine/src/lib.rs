/*!
The jina-embeddings-v3 model in plain Rust: it loads the official Hugging Face checkpoint folder
unchanged and computes the official Python code's embeddings. No HTTP, no async runtime.

# How a request flows

```text
EmbedRequest ──Model::plan──▶ Plan { Sequence { ids, adapter, spans } … }     (tokenize)
             ──Model::run───▶ SpanSum per span (forward pass + sums)          (model, pooling)
             ──pooling::finish▶ mean → truncate to `dimensions` → L2-normalise
             ──output::encode▶ float / base64 / binary / ubinary
```

[`Model::embed`] does all of it for one request. A server that batches many requests together
calls the three steps itself: [`Model::plan`] per request, [`Model::run`] on sequences drawn from
several plans (tasks may differ, every sequence carries its own adapter), and
[`pooling::finish`] per plan. Sequences are packed without padding, so a result never depends on
what it was batched with.

# Example

```no_run
use jina_engine::{EmbedRequest, Model};

let model = Model::load("jina-embeddings-v3".as_ref())?;
let request = EmbedRequest::new(vec!["What is the capital of France?".into()])
    .with_task("retrieval.query")
    .with_dimensions(256);
let result = model.embed(&request)?;
assert_eq!(result.embeddings[0].len(), 256);
# Ok::<(), jina_engine::Error>(())
```

# Choices
- float32 throughout, with the bf16 weights up-cast exactly, as the official code runs on a CPU.
- LoRA adapters are applied as a rank-r side product rather than merged into the weights, so
  one batch may mix tasks and no per-task copy of the weights is kept.
- The 250002-row word-embedding table stays memory-mapped; only the rows a batch uses are read.
- Attention is tiled with an online softmax: memory stays linear in the sequence length.
*/
#![deny(missing_docs)]

pub mod adapters;
pub mod batch;
pub mod config;
pub mod device;
pub mod error;
pub mod fixture;
#[cfg(feature = "gpu")]
pub mod gpu;
pub mod hub;
pub mod kernels;
pub mod model;
pub mod output;
pub mod pooling;
pub mod precision;
pub mod tokenize;
pub mod tokenizer_config;
pub mod train;
pub mod weights;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rayon::prelude::*;

pub use adapters::{AdapterSpec, AdapterWeights, CustomAdapter, TaskAdapter};
pub use config::Config;
pub use device::{DeviceChoice, DeviceMemory, DevicePlan, GpuAdapterInfo, GpuKind};
pub use error::{Error, Result};
pub use kernels::{Cpu, Isa, KernelPlan};
pub use output::{EmbeddingType, Encoded};
pub use pooling::{Finish, SpanSum};
pub use precision::Precision;
pub use tokenize::{LateChunking, Plan, Sequence, Span, DEFAULT_LONG_OVERLAP};

use model::{Encoder, EncoderInput};
use tokenize::{PlanParams, TextTokenizer};
use weights::Weights;

/// The task used when a request names none (decisions.md: the launch announcement's default).
pub const DEFAULT_TASK: &str = "text-matching";

/// The task name that selects the base weights, without adapter or prefix.
pub const NO_TASK: &str = "none";

/// Default token budget of one forward pass in [`Model::embed`].
pub const DEFAULT_MAX_BATCH_TOKENS: usize = 16384;

/// One embedding request, as both the server and the CLI build it.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbedRequest {
    /// The texts; an empty string is valid.
    pub inputs: Vec<String>,
    /// A task name, [`NO_TASK`] for the base weights, or `None` for the model's default task.
    pub task: Option<String>,
    /// Matryoshka size, 1 to the hidden size; `None` keeps all.
    pub dimensions: Option<usize>,
    /// L2-normalise (default true).
    pub normalized: bool,
    /// Late chunking mode.
    pub late_chunking: LateChunking,
    /// Cut inputs over the token limit instead of refusing them.
    pub truncate: bool,
}

impl EmbedRequest {
    /// A request with the defaults: default task, all dimensions, normalised, no late chunking,
    /// no truncation.
    pub fn new(inputs: Vec<String>) -> Self {
        EmbedRequest {
            inputs,
            task: None,
            dimensions: None,
            normalized: true,
            late_chunking: LateChunking::Off,
            truncate: false,
        }
    }

    /// Sets the task.
    pub fn with_task(mut self, task: &str) -> Self {
        self.task = Some(task.to_string());
        self
    }

    /// Sets `dimensions`.
    pub fn with_dimensions(mut self, dimensions: usize) -> Self {
        self.dimensions = Some(dimensions);
        self
    }
}

/// Embeddings of one request, in input order.
#[derive(Debug, Clone, PartialEq)]
pub struct Embeddings {
    /// One vector per input.
    pub embeddings: Vec<Vec<f32>>,
    /// Tokens fed to the model (`<s>`, `</s>` and prefixes included): the request's usage.
    pub total_tokens: usize,
}

/// How to load a model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Precision of the linear layers (what runs is [`Model::kernel_plan`]).
    pub precision: Precision,
    /// The highest instruction-set level the kernels may use, on top of `JINA_MAX_ISA`: `None`
    /// lets them use all the CPU has. A lower level runs that level's kernels on a bigger CPU.
    pub max_isa: Option<Isa>,
    /// Where the encoder's blocks run (what runs is [`Model::device_plan`]).
    pub device: DeviceChoice,
}

/// A loaded model folder: config, tokenizer and encoder.
pub struct Model {
    dir: PathBuf,
    config: Config,
    tokenizer: TextTokenizer,
    encoder: Encoder,
    device: DevicePlan,
    weights_dtype: weights::StoredDtype,
    parameter_count: usize,
    default_task: Option<TaskAdapter>,
    max_batch_tokens: usize,
    /// Tasks served beside the checkpoint's own, by name; requests hold an `Arc` of theirs, so
    /// adding or removing one never disturbs a request in flight.
    custom: RwLock<BTreeMap<String, Arc<CustomAdapter>>>,
    weights_sha256: std::sync::OnceLock<String>,
}

impl Model {
    /// Loads `config.json`, `tokenizer.json` and `model.safetensors` from `dir` in f32.
    pub fn load(dir: &Path) -> Result<Self> {
        Self::load_with(dir, LoadOptions::default())
    }

    /// Loads a model folder with the given options.
    pub fn load_with(dir: &Path, options: LoadOptions) -> Result<Self> {
        let config_path = dir.join("config.json");
        if !config_path.exists() {
            return Err(Error::MissingFile { path: config_path });
        }
        let config = Config::from_file(&config_path)?;
        let tokenizer = TextTokenizer::from_dir(dir)?;
        if tokenizer.vocab_size() > config.vocab_size {
            return Err(Error::Tokenizer {
                path: dir.join("tokenizer.json"),
                message: format!(
                    "the tokenizer has {} ids but config.json vocab_size is {}",
                    tokenizer.vocab_size(),
                    config.vocab_size
                ),
            });
        }
        let weights = Weights::open(&dir.join("model.safetensors"), &config)?;
        let cpu = Cpu::host_checked()?;
        let cpu = options.max_isa.map_or(cpu, |isa| cpu.capped(isa));
        let (device, gpu) = device::resolve(options.device, options.precision)?;
        tracing::info!(device = %device.summary(), requested = %options.device, "device resolved");
        for reason in &device.fallbacks {
            // `auto` on the CPU is what it promises, not a problem worth a warning.
            if options.device == DeviceChoice::Auto && !device.is_gpu() {
                tracing::debug!("device {}: {reason}", options.device);
            } else {
                tracing::warn!("device {}: {reason}", options.device);
            }
        }
        let plan = KernelPlan::resolve(options.precision, cpu, weights.linear_weights_are_bf16());
        if let Some(precision) = device.precision {
            tracing::info!(precision = precision.name(), "the blocks run on the GPU");
        } else {
            tracing::info!(plan = %plan.summary(), cpu = ?cpu.feature_names(), "kernels resolved");
        }
        // On a GPU the CPU kernels only embed and pool: the device's reasons are the ones that
        // matter.
        let precision_fallbacks = if device.is_gpu() {
            &device.precision_fallbacks
        } else {
            &plan.fallbacks
        };
        for reason in precision_fallbacks {
            tracing::warn!("precision {}: {reason}", options.precision.name());
        }
        let gpu = gpu.map(|context| (context, device.precision.unwrap_or_default()));
        let encoder = Encoder::load(&weights, &config, plan, gpu)?;
        let default_task = config
            .lora_adaptations
            .iter()
            .position(|t| t == DEFAULT_TASK)
            .map(TaskAdapter::Builtin);
        Ok(Model {
            dir: dir.to_path_buf(),
            weights_dtype: weights.dtype(),
            parameter_count: weights.parameter_count(),
            config,
            tokenizer,
            encoder,
            device,
            default_task,
            max_batch_tokens: DEFAULT_MAX_BATCH_TOKENS,
            custom: RwLock::new(BTreeMap::new()),
            weights_sha256: std::sync::OnceLock::new(),
        })
    }

    /// The folder the model was loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The checkpoint's config.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.tokenizer
    }

    /// Precision of the linear layers as they run (which may differ from the one asked for:
    /// [`Model::precision_fallbacks`] says why): the GPU's on a GPU, else the CPU kernels'.
    pub fn precision(&self) -> Precision {
        self.device
            .precision
            .unwrap_or_else(|| self.encoder.precision())
    }

    /// Why the precision that runs differs from the one asked for, on the device that runs the
    /// blocks (the kernel plan's reasons on the CPU, the GPU plan's on a GPU).
    pub fn precision_fallbacks(&self) -> &[String] {
        if self.device.is_gpu() {
            &self.device.precision_fallbacks
        } else {
            &self.encoder.plan().fallbacks
        }
    }

    /// What runs: precision asked for and resolved, instruction set, kernels, fallbacks.
    pub fn kernel_plan(&self) -> &KernelPlan {
        self.encoder.plan()
    }

    /// Bytes the linear layers' weights hold in host memory (one copy, in the storage that
    /// runs; none when a GPU runs them).
    pub fn linear_weight_bytes(&self) -> usize {
        self.encoder.linear_weight_bytes()
    }

    /// Where the encoder runs: the CPU, or a GPU with its adapter, and why if not as asked.
    pub fn device_plan(&self) -> &DevicePlan {
        &self.device
    }

    /// Tokens one forward pass on the device holds at most (its storage-buffer limit); `None`
    /// on the CPU. A scheduler keeps its batches within it; a larger batch still runs, as
    /// several passes.
    pub fn device_max_batch_tokens(&self) -> Option<usize> {
        self.encoder.device_max_tokens()
    }

    /// Destroys the GPU device as a driver reset or an unplugged GPU would: every later forward
    /// pass fails with [`Error::Device`] (nothing happens on the CPU). For tests of that path.
    #[doc(hidden)]
    pub fn destroy_device(&self) {
        self.encoder.destroy_device();
    }

    /// Device memory the GPU blocks use (`None` on the CPU).
    pub fn device_memory(&self) -> Option<DeviceMemory> {
        self.encoder.device_memory()
    }

    /// Storage dtype of the checkpoint.
    pub fn weights_dtype(&self) -> &'static str {
        self.weights_dtype.name()
    }

    /// Number of stored parameters (the pooler included).
    pub fn parameter_count(&self) -> usize {
        self.parameter_count
    }

    /// Longest sequence, `<s>` and `</s>` included: `max_position_embeddings`, or the
    /// tokenizer's `model_max_length` if smaller (the official `encode()` truncates there).
    pub fn max_tokens(&self) -> usize {
        self.config
            .max_position_embeddings
            .min(self.tokenizer.model_max_length().unwrap_or(usize::MAX))
    }

    /// The checkpoint's own task names, in adapter order.
    pub fn tasks(&self) -> &[String] {
        &self.config.lora_adaptations
    }

    /// Every task the model serves now: the checkpoint's, then the custom ones by name.
    pub fn task_names(&self) -> Vec<String> {
        let mut names = self.config.lora_adaptations.clone();
        names.extend(self.custom_read().keys().cloned());
        names
    }

    /// The custom adapters served now, by name.
    pub fn custom_adapters(&self) -> Vec<Arc<CustomAdapter>> {
        self.custom_read().values().cloned().collect()
    }

    fn custom_read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<CustomAdapter>>> {
        // A panic while the lock was held cannot leave the map half-written (inserts and
        // removals are single calls), so a poisoned lock is still a valid map.
        self.custom.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Serves `weights` as task `name` with instruction `prefix`: checked against this model's
    /// shapes, refused if the name is taken (a built-in task, [`NO_TASK`] or a loaded one).
    pub fn add_adapter(
        &self,
        name: &str,
        prefix: &str,
        weights: AdapterWeights,
        metadata: serde_json::Value,
    ) -> Result<Arc<CustomAdapter>> {
        adapters::check_task_name(name)?;
        weights.check_shapes(&self.config)?;
        let adapter = Arc::new(CustomAdapter::new(
            name,
            prefix,
            weights,
            self.encoder.token_type_base(),
            metadata,
        ));
        let mut custom = self.custom.write().unwrap_or_else(|e| e.into_inner());
        if name == NO_TASK || self.config.lora_adaptations.iter().any(|t| t == name) {
            return Err(Error::AdapterConflict {
                name: name.to_string(),
                reason: "it is a built-in task".into(),
            });
        }
        if custom.contains_key(name) {
            return Err(Error::AdapterConflict {
                name: name.to_string(),
                reason: "an adapter of that name is already loaded (unload it first)".into(),
            });
        }
        custom.insert(name.to_string(), Arc::clone(&adapter));
        Ok(adapter)
    }

    /// Loads the adapter folder `dir` (see [`adapters::folder`]) and serves it as task `name`,
    /// or under the name its metadata gives. Refused with the reason when the folder is
    /// incomplete, was trained on another base model or does not fit this model's shapes.
    pub fn load_adapter(&self, dir: &Path, name: Option<&str>) -> Result<Arc<CustomAdapter>> {
        let folder = adapters::folder::load(dir, &self.config)?;
        let meta = folder.metadata.as_ref();
        if let Some(expected) = meta.and_then(|m| m.base_model.sha256.as_deref()) {
            let ours = self.weights_sha256()?;
            if expected != ours {
                return Err(Error::Adapter {
                    path: dir.join(adapters::folder::METADATA),
                    message: format!(
                        "trained on another base model: model.safetensors sha256 {expected}                          there, {ours} here"
                    ),
                });
            }
        }
        let name = match (name, meta) {
            (Some(name), _) => name.to_string(),
            (None, Some(m)) => m.name.clone(),
            (None, None) => {
                return Err(Error::Adapter {
                    path: dir.to_path_buf(),
                    message: format!(
                        "no {} names the task: give it a name (NAME=DIR)",
                        adapters::folder::METADATA
                    ),
                })
            }
        };
        let prefix = meta.map_or("", |m| m.prefix.as_str()).to_string();
        let metadata = serde_json::to_value(meta).unwrap_or(serde_json::Value::Null);
        self.add_adapter(&name, &prefix, folder.weights, metadata)
    }

    /// sha256 of `model.safetensors` (lowercase hex): from the Hugging Face cache's blob name
    /// when the file is a cached blob, else hashed once (about a second for the real weights).
    pub fn weights_sha256(&self) -> Result<String> {
        if let Some(hash) = self.weights_sha256.get() {
            return Ok(hash.clone());
        }
        let path = self.dir.join("model.safetensors");
        let hash = match hub::expected_sha256(&path) {
            Some(hash) => hash,
            None => hub::sha256_file(&path).map_err(|source| Error::Io {
                path: path.clone(),
                source,
            })?,
        };
        Ok(self.weights_sha256.get_or_init(|| hash).clone())
    }

    /// Stops serving the custom task `name`; requests already planned with it finish with it.
    pub fn remove_adapter(&self, name: &str) -> Result<Arc<CustomAdapter>> {
        if name == NO_TASK || self.config.lora_adaptations.iter().any(|t| t == name) {
            return Err(Error::AdapterConflict {
                name: name.to_string(),
                reason: "built-in tasks cannot be unloaded".into(),
            });
        }
        let mut custom = self.custom.write().unwrap_or_else(|e| e.into_inner());
        custom.remove(name).ok_or_else(|| Error::UnknownTask {
            task: name.to_string(),
            accepted: custom.keys().cloned().collect::<Vec<_>>().join(", "),
        })
    }

    /// Sets the task used when a request names none; [`NO_TASK`] selects the base weights.
    pub fn set_default_task(&mut self, task: &str) -> Result<()> {
        self.default_task = self.adapter_of(task)?;
        Ok(())
    }

    /// Name of the default task ([`NO_TASK`] for the base weights).
    pub fn default_task(&self) -> String {
        self.task_name(self.default_task.as_ref())
    }

    /// The name of an adapter ([`NO_TASK`] for none).
    pub fn task_name(&self, adapter: Option<&TaskAdapter>) -> String {
        match adapter {
            None => NO_TASK.to_string(),
            Some(TaskAdapter::Builtin(i)) => self.config.lora_adaptations[*i].clone(),
            Some(TaskAdapter::Custom(c)) => c.name().to_string(),
        }
    }

    /// Sets the token budget of one forward pass in [`Model::embed`].
    pub fn set_max_batch_tokens(&mut self, tokens: usize) {
        self.max_batch_tokens = tokens.max(1);
    }

    /// The adapter of a task name (`None` for [`NO_TASK`]): a built-in task or a custom one.
    pub fn adapter_of(&self, task: &str) -> Result<Option<TaskAdapter>> {
        if task == NO_TASK {
            return Ok(None);
        }
        if let Some(i) = self.config.lora_adaptations.iter().position(|t| t == task) {
            return Ok(Some(TaskAdapter::Builtin(i)));
        }
        if let Some(c) = self.custom_read().get(task) {
            return Ok(Some(TaskAdapter::Custom(Arc::clone(c))));
        }
        Err(Error::UnknownTask {
            task: task.to_string(),
            accepted: self.task_names().join(", ") + ", " + NO_TASK,
        })
    }

    /// The instruction prefix of an adapter ("" for none).
    pub fn prefix_of<'a>(&'a self, adapter: Option<&'a TaskAdapter>) -> &'a str {
        match adapter {
            None => "",
            Some(TaskAdapter::Builtin(i)) => self
                .config
                .task_instructions
                .get(&self.config.lora_adaptations[*i])
                .map_or("", |s| s.as_str()),
            Some(TaskAdapter::Custom(c)) => c.prefix(),
        }
    }

    /// Checks `dimensions` against the hidden size.
    pub fn check_dimensions(&self, dimensions: Option<usize>) -> Result<()> {
        match dimensions {
            Some(d) if d == 0 || d > self.config.hidden_size => Err(Error::Dimensions {
                value: d as i64,
                max: self.config.hidden_size,
            }),
            _ => Ok(()),
        }
    }

    /// Validates a request and tokenises it into sequences.
    pub fn plan(&self, request: &EmbedRequest) -> Result<Plan> {
        self.check_dimensions(request.dimensions)?;
        let adapter = match &request.task {
            Some(task) => self.adapter_of(task)?,
            None => self.default_task.clone(),
        };
        let prefix = self.prefix_of(adapter.as_ref()).to_string();
        let params = PlanParams {
            adapter,
            prefix: &prefix,
            max_tokens: self.max_tokens().min(self.encoder.max_positions()),
            truncate: request.truncate,
            late_chunking: request.late_chunking,
            bos: self.config.bos_token_id,
            eos: self.config.eos_token_id,
        };
        tokenize::plan(&self.tokenizer, &request.inputs, &params)
    }

    /// Runs one batch of sequences (from any plans, tasks mixed) and returns the span sums of
    /// each, in the order given. Fails only when the device fails (a GPU lost or out of
    /// memory: [`Error::Device`]).
    pub fn run(&self, batch: &[&Sequence]) -> Result<Vec<Vec<SpanSum>>> {
        let inputs: Vec<EncoderInput> = batch
            .iter()
            .map(|s| EncoderInput {
                ids: &s.ids,
                adapter: s.adapter.as_ref(),
            })
            .collect();
        let states = self.encoder.forward(&inputs)?;
        let h = self.encoder.hidden_size();
        let mut offsets = Vec::with_capacity(batch.len());
        let mut start = 0;
        for seq in batch {
            offsets.push(start);
            start += seq.ids.len();
        }
        Ok(batch
            .par_iter()
            .zip(offsets.par_iter())
            .map(|(seq, &offset)| {
                let rows = &states[offset * h..(offset + seq.ids.len()) * h];
                pooling::sum_spans(seq, rows, h)
            })
            .collect())
    }

    /// Embeds one request: plan, batches of at most the token budget, finish.
    pub fn embed(&self, request: &EmbedRequest) -> Result<Embeddings> {
        let plan = self.plan(request)?;
        let lengths: Vec<usize> = plan.sequences.iter().map(|s| s.ids.len()).collect();
        let mut sums = Vec::new();
        for batch in batch::pack_by_tokens(&lengths, self.max_batch_tokens) {
            let seqs: Vec<&Sequence> = batch.iter().map(|&i| &plan.sequences[i]).collect();
            sums.extend(self.run(&seqs)?.into_iter().flatten());
        }
        let finish = Finish {
            dimensions: request.dimensions,
            normalized: request.normalized,
        };
        Ok(Embeddings {
            embeddings: pooling::finish(&plan, sums, self.config.hidden_size, finish),
            total_tokens: plan.total_tokens,
        })
    }
}
