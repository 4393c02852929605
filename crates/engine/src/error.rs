//! The engine's one error type.
//!
//! Loading errors name the file or tensor, what was expected and what was found. Request errors
//! name the field, the value and the limit, so that a server can pass the message on unchanged;
//! [`Error::is_client_error`] tells the two kinds apart.

use std::path::PathBuf;

/// Result with the engine's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while loading a model or serving a request.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A file the model folder must hold is not there.
    #[error(
        "{path} is missing: a model folder needs config.json, tokenizer.json and model.safetensors"
    )]
    MissingFile {
        /// The file that was looked for.
        path: PathBuf,
    },
    /// `config.json` is not valid JSON, lacks a field, or asks for something unsupported.
    #[error("invalid {path}: {message}")]
    Config {
        /// The config file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// `tokenizer.json` could not be loaded.
    #[error("invalid tokenizer {path}: {message}")]
    Tokenizer {
        /// The tokenizer file.
        path: PathBuf,
        /// What the `tokenizers` crate reported.
        message: String,
    },
    /// `tokenizer_config.json` is not valid JSON or has a field of the wrong type.
    #[error("invalid tokenizer configuration {path}: {message}")]
    TokenizerConfig {
        /// The configuration file.
        path: PathBuf,
        /// What is wrong, with the field.
        message: String,
    },
    /// `model.safetensors` is corrupt or truncated.
    #[error("corrupt or truncated {path}: {message}")]
    Safetensors {
        /// The weights file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A tensor the model needs is not in the weights file.
    #[error("tensor {name} is missing from model.safetensors (expected shape {expected:?})")]
    MissingTensor {
        /// The official tensor name.
        name: String,
        /// Its shape as the config implies.
        expected: Vec<usize>,
    },
    /// The weights file holds a tensor this model does not have.
    #[error("unexpected tensor {name} with shape {shape:?} in model.safetensors: not part of a jina-embeddings-v3 checkpoint with this config")]
    UnexpectedTensor {
        /// The name found.
        name: String,
        /// Its shape.
        shape: Vec<usize>,
    },
    /// A tensor's shape disagrees with `config.json`.
    #[error("tensor {name} has shape {found:?}, but config.json implies {expected:?}")]
    TensorShape {
        /// The tensor.
        name: String,
        /// The shape the config implies.
        expected: Vec<usize>,
        /// The shape in the file.
        found: Vec<usize>,
    },
    /// A tensor is stored in a dtype the engine cannot read.
    #[error("tensor {name} has dtype {dtype}; supported dtypes are BF16, F16 and F32")]
    UnsupportedDtype {
        /// The tensor.
        name: String,
        /// The dtype in the header.
        dtype: String,
    },
    /// The request names a task the model has no adapter for.
    #[error("task {task:?} is not supported; accepted values are {accepted}")]
    UnknownTask {
        /// The task asked for.
        task: String,
        /// The accepted names, comma-separated.
        accepted: String,
    },
    /// An input is longer than the model's limit and `truncate` is off.
    #[error("input[{index}] has {tokens} tokens, more than the limit of {limit} (special tokens and the task prefix included); shorten it or set truncate to true")]
    InputTooLong {
        /// Index of the input in the request.
        index: usize,
        /// Its token count.
        tokens: usize,
        /// The limit.
        limit: usize,
    },
    /// The inputs of a late-chunking request do not fit in one sequence.
    #[error("late chunking joins all inputs into one sequence of {tokens} tokens, more than the limit of {limit}; send fewer or shorter inputs, or enable long late chunking")]
    LateChunkingTooLong {
        /// Tokens of the joined sequence.
        tokens: usize,
        /// The limit.
        limit: usize,
    },
    /// `dimensions` is out of range.
    #[error("dimensions {value} is out of range: it must be between 1 and {max}")]
    Dimensions {
        /// The value asked for.
        value: i64,
        /// The model's hidden size.
        max: usize,
    },
    /// The request holds no input.
    #[error("input must hold at least one text")]
    EmptyInput,
    /// A custom adapter's name is malformed.
    #[error("adapter name {name:?} cannot be used: {reason}")]
    AdapterName {
        /// The name asked for.
        name: String,
        /// Why not.
        reason: String,
    },
    /// A custom adapter's name is taken: a built-in task, `none`, or a loaded adapter.
    #[error("adapter name {name:?} is taken: {reason}")]
    AdapterConflict {
        /// The name asked for.
        name: String,
        /// By what.
        reason: String,
    },
    /// An adapter folder is missing a file, is malformed, or does not fit this model.
    #[error("adapter {path}: {message}")]
    Adapter {
        /// The folder (or the file in it).
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A row of a training or evaluation file is unusable.
    #[error("{path}:{line}: {message}")]
    TrainingData {
        /// The file.
        path: PathBuf,
        /// 1-based line (JSONL) or record (CSV, TSV) number; 0 for the whole file.
        line: usize,
        /// What is wrong, naming the field.
        message: String,
    },
    /// Training options that cannot work together or with the data.
    #[error("{0}")]
    Training(String),
    /// Any other invalid request value.
    #[error("{0}")]
    InvalidRequest(String),
    /// The device asked for is not there, or failed (lost, out of memory, a shader error).
    #[error("device: {0}")]
    Device(String),
}

impl Error {
    /// True for errors caused by the request rather than by the model or the machine.
    pub fn is_client_error(&self) -> bool {
        matches!(
            self,
            Error::UnknownTask { .. }
                | Error::InputTooLong { .. }
                | Error::LateChunkingTooLong { .. }
                | Error::Dimensions { .. }
                | Error::EmptyInput
                | Error::AdapterName { .. }
                | Error::AdapterConflict { .. }
                | Error::Adapter { .. }
                | Error::TrainingData { .. }
                | Error::Training(_)
                | Error::InvalidRequest(_)
        )
    }
}

/// The message of a caught panic's payload (`panic!` with a literal or a formatted string), for
/// the front ends that turn one pass's panic into that pass's error.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> Option<String> {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
}
