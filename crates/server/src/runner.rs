//! The seam between the HTTP server and the model: [`BatchRunner`].
//!
//! The routes and the scheduler never hold a [`jina_engine::Model`]; they hold an
//! `Arc<dyn BatchRunner>`. The real engine model implements it (below), and tests implement it
//! with a fake that delegates planning to a real tokenizer but computes deterministic vectors
//! from the token ids, with a configurable delay and injected failures
//! (`crates/server/tests/http/fake.rs`). So the router can be called in-process, without a socket
//! or a forward pass, and the scheduler's batching, cancellation and failure paths can be driven
//! exactly.
//!
//! What the routes need from a model is small: the request plan (tokenisation and the request
//! checks that depend on the model: task, dimensions, token limits), one forward pass over a
//! batch of sequences, the token ids of a text for `/tokenize`, and the facts of `/v1/models`
//! ([`ModelInfo`]).

use std::path::Path;

use jina_engine::pooling::SpanSum;
use jina_engine::{EmbedRequest, Model, Plan, Sequence};

/// The facts about the served model that the routes report and check against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelInfo {
    /// Hidden size: the full embedding length and the largest `dimensions`.
    pub hidden_size: usize,
    /// Longest sequence, specials included.
    pub max_tokens: usize,
    /// The checkpoint's task names in adapter order (`none` and custom tasks not included:
    /// [`BatchRunner::tasks`] has the live list).
    pub tasks: Vec<String>,
    /// Task of requests that name none (`none` for the base weights).
    pub default_task: String,
    /// Matryoshka dimensions of the config.
    pub matryoshka_dimensions: Vec<usize>,
    /// Precision of the linear layers as they run.
    pub precision: String,
    /// Precision asked for.
    pub requested_precision: String,
    /// Instruction-set level the kernels use.
    pub isa: String,
    /// The linear layers' kernel and weight storage.
    pub linear_kernel: String,
    /// The attention kernel.
    pub attention_kernel: String,
    /// Why what runs differs from what was asked for.
    pub fallbacks: Vec<String>,
    /// Where the encoder runs, and why if not as asked.
    pub device: jina_engine::DevicePlan,
    /// Tokens one forward pass on the device holds (`None`: the CPU, no device limit).
    pub device_max_batch_tokens: Option<usize>,
}

impl ModelInfo {
    /// The info of a loaded engine model.
    pub fn of(model: &Model) -> ModelInfo {
        let plan = model.kernel_plan();
        let device = model.device_plan();
        ModelInfo {
            hidden_size: model.config().hidden_size,
            max_tokens: model.max_tokens(),
            tasks: model.tasks().to_vec(),
            default_task: model.default_task().to_string(),
            matryoshka_dimensions: model.config().matryoshka_dimensions.clone(),
            precision: model.precision().name().to_string(),
            requested_precision: plan.requested.name().to_string(),
            isa: plan.isa().name().to_string(),
            // On a GPU its operations, not the CPU kernels (which only embed and pool).
            linear_kernel: device
                .operation("linear")
                .map_or_else(|| plan.linear.to_string(), str::to_string),
            attention_kernel: device
                .operation("attention")
                .map_or_else(|| plan.attention.to_string(), str::to_string),
            fallbacks: model.precision_fallbacks().to_vec(),
            device: model.device_plan().clone(),
            device_max_batch_tokens: model.device_max_batch_tokens(),
        }
    }
}

/// A custom task the server serves, as `/v1/adapters` lists it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct AdapterInfo {
    /// The task name requests use.
    pub name: String,
    /// The instruction prefix put before every input ("" for none).
    pub prefix: String,
    /// Trainable values of the adapter.
    pub parameters: usize,
    /// What the adapter folder says about itself (`jina_adapter.json`), or null.
    #[schema(value_type = Object)]
    pub metadata: serde_json::Value,
}

impl AdapterInfo {
    /// The listing of one engine adapter.
    pub fn of(adapter: &jina_engine::CustomAdapter) -> AdapterInfo {
        AdapterInfo {
            name: adapter.name().to_string(),
            prefix: adapter.prefix().to_string(),
            parameters: adapter.weights().parameter_count(),
            metadata: adapter.metadata().clone(),
        }
    }
}

/// A tokenised text for `/tokenize`: the task's prefix, then ids and pieces, `<s>` and `</s>`
/// included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokenized {
    /// Token ids.
    pub ids: Vec<u32>,
    /// The token of each id.
    pub pieces: Vec<String>,
}

/// What runs a batch, and what the routes need from the model behind it.
///
/// Every method is called off the async runtime: `plan` and `tokenize` on tokio's blocking pool,
/// `run` on the scheduler thread. A panic inside `run` fails only the requests of that batch
/// (the scheduler catches it), as does an `Err`.
pub trait BatchRunner: Send + Sync + 'static {
    /// The served model's facts (computed once; called on every request).
    fn info(&self) -> &ModelInfo;

    /// Tokenises a request into the sequences to run, checking what depends on the model (task,
    /// dimensions, token limits, truncation, late chunking).
    fn plan(&self, request: &EmbedRequest) -> Result<Plan, jina_engine::Error>;

    /// One forward pass: the span sums of every sequence of `batch`, in order.
    fn run(&self, batch: &[&Sequence]) -> Result<Vec<Vec<SpanSum>>, String>;

    /// The instruction prefix of a task (empty for none), or the engine's error naming the
    /// accepted tasks.
    fn task_prefix(&self, task: &str) -> Result<String, jina_engine::Error>;

    /// Every task served now: the checkpoint's, then the custom ones (`none` not included).
    fn tasks(&self) -> Vec<String>;

    /// The custom tasks served now.
    fn adapters(&self) -> Vec<AdapterInfo>;

    /// Loads the adapter folder `dir` as task `name` (or the name its metadata gives).
    fn load_adapter(
        &self,
        dir: &Path,
        name: Option<&str>,
    ) -> Result<AdapterInfo, jina_engine::Error>;

    /// Stops serving custom task `name`; requests in flight with it finish with it.
    fn unload_adapter(&self, name: &str) -> Result<AdapterInfo, jina_engine::Error>;

    /// The accepted task names, `none` included.
    fn tasks_and_none(&self) -> Vec<String> {
        let mut tasks = self.tasks();
        tasks.push(jina_engine::NO_TASK.to_string());
        tasks
    }

    /// The ids and pieces of `text` (prefix already in it) with `<s>` and `</s>`.
    fn tokenize(&self, text: &str) -> Result<Tokenized, jina_engine::Error>;
}

/// The real engine: an [`EngineRunner`] wraps a loaded [`Model`].
pub struct EngineRunner {
    model: Model,
    info: ModelInfo,
}

impl EngineRunner {
    /// Wraps a loaded model (its default task already set).
    pub fn new(model: Model) -> EngineRunner {
        let info = ModelInfo::of(&model);
        EngineRunner { model, info }
    }

    /// The model.
    pub fn model(&self) -> &Model {
        &self.model
    }
}

impl BatchRunner for EngineRunner {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn plan(&self, request: &EmbedRequest) -> Result<Plan, jina_engine::Error> {
        self.model.plan(request)
    }

    fn run(&self, batch: &[&Sequence]) -> Result<Vec<Vec<SpanSum>>, String> {
        // A device failure (a GPU lost or out of memory) is an error; a bug is a panic, which
        // the scheduler also turns into a failed batch.
        self.model.run(batch).map_err(|e| e.to_string())
    }

    fn task_prefix(&self, task: &str) -> Result<String, jina_engine::Error> {
        let adapter = self.model.adapter_of(task)?;
        Ok(self.model.prefix_of(adapter.as_ref()).to_string())
    }

    fn tasks(&self) -> Vec<String> {
        self.model.task_names()
    }

    fn adapters(&self) -> Vec<AdapterInfo> {
        self.model
            .custom_adapters()
            .iter()
            .map(|a| AdapterInfo::of(a))
            .collect()
    }

    fn load_adapter(
        &self,
        dir: &Path,
        name: Option<&str>,
    ) -> Result<AdapterInfo, jina_engine::Error> {
        Ok(AdapterInfo::of(&*self.model.load_adapter(dir, name)?))
    }

    fn unload_adapter(&self, name: &str) -> Result<AdapterInfo, jina_engine::Error> {
        Ok(AdapterInfo::of(&*self.model.remove_adapter(name)?))
    }

    fn tokenize(&self, text: &str) -> Result<Tokenized, jina_engine::Error> {
        let ids = self.model.tokenizer().encode_with_specials(text)?;
        let pieces = self.model.tokenizer().pieces(&ids);
        Ok(Tokenized { ids, pieces })
    }
}
