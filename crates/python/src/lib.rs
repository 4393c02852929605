//! `jina_embeddings._native`: the engine crate's public API as a Python extension module.
//!
//! A thin layer: the Python package around it (`python/jina_embeddings`) turns numpy and
//! pyarrow inputs into lists, finds hub ids, draws the progress bar and pickles; this module
//! loads a folder and encodes. Two rules hold for every method:
//! - the GIL is released while the engine works, and each model computes on its own rayon pool,
//!   so Python threads encode at once and a model's thread budget is its own;
//! - no engine error or panic crosses into Python as anything but an ordinary exception that
//!   carries the engine's message.

use std::panic::AssertUnwindSafe;

use jina_engine::hub::{self, ResolveError};
use jina_engine::{
    batch, output, pooling, EmbedRequest, EmbeddingType, Error, Finish, LateChunking, LoadOptions,
    Precision, Sequence, SpanSum,
};
use numpy::ndarray::Array2;
use numpy::IntoPyArray;
use pyo3::exceptions::{
    PyFileNotFoundError, PyOSError, PyPermissionError, PyRuntimeError, PyTypeError, PyValueError,
};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString};

pyo3::create_exception!(
    _native,
    ModelNotCachedError,
    PyFileNotFoundError,
    "A hub id that is not in the Hugging Face cache (the message says how to fetch it)."
);

/// The Python exception for an engine error: `ValueError` for a bad request or an invalid model
/// file, `FileNotFoundError` for a missing one, `OSError` (by kind) for an unreadable one.
fn engine_error(error: Error) -> PyErr {
    let message = error.to_string();
    match error {
        Error::MissingFile { .. } => PyFileNotFoundError::new_err(message),
        Error::Io { source, .. } => os_error(&source, message),
        // A device that is not there, or failed: not the caller's value.
        Error::Device(_) => PyRuntimeError::new_err(message),
        // Bad requests, and model files that are there but invalid.
        _ => PyValueError::new_err(message),
    }
}

fn os_error(source: &std::io::Error, message: String) -> PyErr {
    match source.kind() {
        std::io::ErrorKind::NotFound => PyFileNotFoundError::new_err(message),
        std::io::ErrorKind::PermissionDenied => PyPermissionError::new_err(message),
        _ => PyOSError::new_err(message),
    }
}

/// Runs `f`, turning a panic into a `RuntimeError` so that none unwinds into Python.
fn guarded<T>(f: impl FnOnce() -> T) -> PyResult<T> {
    std::panic::catch_unwind(AssertUnwindSafe(f)).map_err(|payload| {
        let what = jina_engine::error::panic_message(payload.as_ref())
            .unwrap_or_else(|| "a panic without a message".into());
        PyRuntimeError::new_err(format!(
            "internal error in jina-engine (please report it): {what}"
        ))
    })
}

/// Finds the model folder for `spec`: an existing folder, or a hub id (`owner/name[@revision]`)
/// in the Hugging Face cache. Returns `(folder, commit)`, `commit` being `None` for a folder.
/// Raises `ModelNotCachedError` (a `FileNotFoundError`) for a hub id that is not cached.
#[pyfunction]
fn resolve(spec: &str) -> PyResult<(String, Option<String>)> {
    match hub::resolve(spec) {
        Ok(resolved) => {
            let commit = match resolved.source {
                hub::Source::Folder => None,
                hub::Source::Cache { commit, .. } => Some(commit),
            };
            Ok((resolved.dir.to_string_lossy().into_owned(), commit))
        }
        Err(error @ ResolveError::NotCached { .. }) => {
            Err(ModelNotCachedError::new_err(error.to_string()))
        }
        Err(error @ ResolveError::NotAModel { .. }) => {
            Err(PyFileNotFoundError::new_err(error.to_string()))
        }
        Err(ResolveError::Io { path, source }) => Err(os_error(
            &source,
            format!("cannot read {}: {source}", path.display()),
        )),
    }
}

/// Writes the `small` formula checkpoint with `seed` into `folder` (config.json,
/// model.safetensors, tokenizer.json), as `jina-embed fixture` does; the golden outputs of the
/// official code were computed on it with seed 1.
#[pyfunction]
#[pyo3(signature = (folder, seed = 1))]
fn write_fixture(py: Python<'_>, folder: &str, seed: u64) -> PyResult<()> {
    let dir = std::path::PathBuf::from(folder);
    py.detach(|| {
        guarded(|| {
            jina_engine::fixture::write_fixture(
                &dir,
                jina_engine::fixture::FixtureShape::SMALL,
                seed,
            )
        })
    })?
    .map_err(engine_error)
}

/// A loaded model folder with its own compute threads.
#[pyclass(frozen, module = "jina_embeddings._native")]
struct Model {
    model: jina_engine::Model,
    pool: rayon::ThreadPool,
    max_batch_tokens: usize,
}

/// The texts of `texts` (any iterable of str), or a `TypeError` naming the first item that is not.
fn texts_of(texts: &Bound<'_, PyAny>) -> PyResult<Vec<String>> {
    if texts.is_instance_of::<PyString>() {
        return Err(PyTypeError::new_err(
            "texts must be a list of str, not a single str: wrap it as [text]",
        ));
    }
    let mut out = Vec::new();
    for (index, item) in texts.try_iter()?.enumerate() {
        let item = item?;
        match item.cast::<PyString>() {
            Ok(s) => out.push(s.to_cow()?.into_owned()),
            Err(_) => {
                let kind = if item.is_none() {
                    "None".to_string()
                } else {
                    item.get_type().name()?.to_string()
                };
                return Err(PyTypeError::new_err(format!(
                    "texts[{index}] is {kind}, not str"
                )));
            }
        }
    }
    Ok(out)
}

#[pymethods]
impl Model {
    /// Loads `folder` (config.json, tokenizer.json, model.safetensors).
    #[new]
    #[pyo3(signature = (folder, precision = "f32", threads = None, max_batch_tokens = jina_engine::DEFAULT_MAX_BATCH_TOKENS, device = None))]
    fn new(
        py: Python<'_>,
        folder: &str,
        precision: &str,
        threads: Option<usize>,
        max_batch_tokens: usize,
        device: Option<&str>,
    ) -> PyResult<Self> {
        let precision: Precision = precision.parse().map_err(engine_error)?;
        let device = match device {
            Some(d) => d.parse(),
            None => jina_engine::DeviceChoice::from_env_or(jina_engine::DeviceChoice::Auto),
        }
        .map_err(engine_error)?;
        if threads == Some(0) {
            return Err(PyValueError::new_err(
                "threads 0 is out of range: it must be at least 1 (None: one per core)",
            ));
        }
        if max_batch_tokens == 0 {
            return Err(PyValueError::new_err(
                "max_batch_tokens 0 is out of range: it must be at least 1",
            ));
        }
        let mut builder =
            rayon::ThreadPoolBuilder::new().thread_name(|i| format!("jina-embeddings-{i}"));
        if let Some(n) = threads {
            builder = builder.num_threads(n);
        }
        let pool = builder.build().map_err(|e| {
            PyRuntimeError::new_err(format!("cannot start {threads:?} threads: {e}"))
        })?;
        let dir = std::path::PathBuf::from(folder);
        // `..Default::default()`: LoadOptions gains fields over time; their defaults apply here.
        #[allow(clippy::needless_update)]
        let options = LoadOptions {
            precision,
            device,
            ..Default::default()
        };
        // Loading converts weights in parallel: on this model's own threads.
        let model = py
            .detach(|| guarded(|| pool.install(|| jina_engine::Model::load_with(&dir, options))))?;
        Ok(Model {
            model: model.map_err(engine_error)?,
            pool,
            max_batch_tokens,
        })
    }

    /// Embeds `texts` and returns a numpy array, one row per text: float32 `(n, dimensions)`,
    /// or packed sign bits, uint8 (`ubinary`) or int8 (`binary`), `(n, ceil(dimensions / 8))`.
    /// `progress(done, total)` is called after each forward pass, in sequences.
    #[pyo3(signature = (texts, task = None, dimensions = None, normalize = true, late_chunking = false,
                        late_chunking_overlap = None, truncate = false, embedding_type = "float", progress = None))]
    #[allow(clippy::too_many_arguments)]
    fn encode<'py>(
        &self,
        py: Python<'py>,
        texts: &Bound<'py, PyAny>,
        task: Option<String>,
        dimensions: Option<usize>,
        normalize: bool,
        late_chunking: bool,
        late_chunking_overlap: Option<usize>,
        truncate: bool,
        embedding_type: &str,
        progress: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let inputs = texts_of(texts)?;
        let ty: EmbeddingType = embedding_type.parse().map_err(engine_error)?;
        if ty == EmbeddingType::Base64 {
            return Err(PyValueError::new_err(
                "embedding_type \"base64\" is not offered here: the arrays are already binary; accepted values are float, binary, ubinary",
            ));
        }
        let late_chunking = match (late_chunking, late_chunking_overlap) {
            (false, None) => LateChunking::Off,
            (false, Some(_)) => {
                return Err(PyValueError::new_err(
                    "late_chunking_overlap needs late_chunking=True",
                ));
            }
            (true, None) => LateChunking::On,
            (true, Some(overlap)) => LateChunking::Long { overlap },
        };
        let request = EmbedRequest {
            inputs,
            task,
            dimensions,
            normalized: normalize,
            late_chunking,
            truncate,
        };
        let model = &self.model;
        let width = dimensions.unwrap_or(model.config().hidden_size);
        if request.inputs.is_empty() {
            // An empty list gives an empty array (as sentence-transformers does), once the
            // options are checked.
            model.check_dimensions(dimensions).map_err(engine_error)?;
            if let Some(task) = &request.task {
                model.adapter_of(task).map_err(engine_error)?;
            }
            return Ok(Rows::new(ty, 0, width).into_array(py));
        }

        // Tokenise everything first, so that a bad input fails before any compute and its index
        // is the caller's; then run forward passes one by one, giving the GIL back in between
        // for Ctrl-C and the progress bar.
        let plan = py
            .detach(|| guarded(|| self.pool.install(|| model.plan(&request))))?
            .map_err(engine_error)?;
        let lengths: Vec<usize> = plan.sequences.iter().map(|s| s.ids.len()).collect();
        let total = plan.sequences.len();
        let finish = Finish {
            dimensions,
            normalized: normalize,
        };
        let hidden = model.config().hidden_size;
        // Without late chunking every sequence is one whole output: its vector is finished and
        // written into the output buffer as soon as its pass is done, so memory stays at the
        // output's size. Late-chunked spans may be split over windows and are finished at the end.
        let direct = late_chunking == LateChunking::Off;
        let mut rows = Rows::new(ty, plan.outputs, width);
        let mut pending: Vec<SpanSum> = Vec::new();
        let mut done = 0;
        for pass in batch::pack_by_tokens(&lengths, self.max_batch_tokens) {
            let chosen: Vec<&Sequence> = pass.iter().map(|&i| &plan.sequences[i]).collect();
            py.detach(|| {
                guarded(|| {
                    let sums = self
                        .pool
                        .install(|| model.run(&chosen))?
                        .into_iter()
                        .flatten();
                    if direct {
                        for sum in sums {
                            rows.write(sum.output, &pooling::finish_vector(mean(&sum), finish));
                        }
                    } else {
                        pending.extend(sums);
                    }
                    Ok::<(), Error>(())
                })
            })?
            .map_err(engine_error)?;
            done += pass.len();
            py.check_signals()?;
            if let Some(callback) = &progress {
                callback.call1((done, total))?;
            }
        }
        if !direct {
            py.detach(|| {
                guarded(|| {
                    for (output, vector) in pooling::finish(&plan, pending, hidden, finish)
                        .iter()
                        .enumerate()
                    {
                        rows.write(output, vector);
                    }
                })
            })?;
        }
        Ok(rows.into_array(py))
    }

    /// The tokens of each text as the model sees them for `task` (default: the model's default
    /// task): `<s>`, the task's instruction prefix, the text, `</s>`. A list of dicts with `ids`
    /// and `tokens`.
    #[pyo3(signature = (texts, task = None))]
    fn tokenize<'py>(
        &self,
        py: Python<'py>,
        texts: &Bound<'py, PyAny>,
        task: Option<String>,
    ) -> PyResult<Bound<'py, PyList>> {
        let inputs = texts_of(texts)?;
        let model = &self.model;
        let task = task.unwrap_or_else(|| model.default_task().to_string());
        let adapter = model.adapter_of(&task).map_err(engine_error)?;
        let prefix = model.prefix_of(adapter.as_ref());
        let tokenized = py
            .detach(|| {
                guarded(|| {
                    self.pool.install(|| {
                        inputs
                            .iter()
                            .map(|text| {
                                let ids = model
                                    .tokenizer()
                                    .encode_with_specials(&format!("{prefix}{text}"))?;
                                let pieces = model.tokenizer().pieces(&ids);
                                Ok((ids, pieces))
                            })
                            .collect::<jina_engine::Result<Vec<_>>>()
                    })
                })
            })?
            .map_err(engine_error)?;
        let out = PyList::empty(py);
        for (ids, tokens) in tokenized {
            let item = PyDict::new(py);
            item.set_item("ids", ids)?;
            item.set_item("tokens", tokens)?;
            out.append(item)?;
        }
        Ok(out)
    }

    /// Serves the adapter folder `folder` (from `jina-embed train`, or a PEFT folder) as a task
    /// beside the built-in ones, under `name` or the name its metadata gives; returns the name.
    #[pyo3(signature = (folder, name = None))]
    fn load_adapter(&self, py: Python<'_>, folder: &str, name: Option<String>) -> PyResult<String> {
        let dir = std::path::PathBuf::from(folder);
        let loaded = py.detach(|| guarded(|| self.model.load_adapter(&dir, name.as_deref())))?;
        Ok(loaded.map_err(engine_error)?.name().to_string())
    }

    /// Stops serving the custom task `name` (encodes already running finish with it).
    fn unload_adapter(&self, name: &str) -> PyResult<()> {
        self.model.remove_adapter(name).map_err(engine_error)?;
        Ok(())
    }

    /// The custom tasks: `[{"name", "prefix", "metadata"}]`.
    fn adapters<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let list = PyList::empty(py);
        for adapter in self.model.custom_adapters() {
            let item = PyDict::new(py);
            item.set_item("name", adapter.name())?;
            item.set_item("prefix", adapter.prefix())?;
            item.set_item("metadata", adapter.metadata().to_string())?;
            list.append(item)?;
        }
        Ok(list)
    }

    /// What was loaded: the resolved precision (after any fallback on this CPU), sizes, tasks
    /// and limits.
    fn info<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let model = &self.model;
        let config = model.config();
        let info = PyDict::new(py);
        info.set_item("path", model.dir().to_string_lossy())?;
        let plan = model.kernel_plan();
        info.set_item("precision", model.precision().name())?;
        info.set_item("requested_precision", plan.requested.name())?;
        info.set_item("isa", plan.isa().name())?;
        let device = model.device_plan();
        let kernels = match (device.operation("linear"), device.operation("attention")) {
            (Some(linear), Some(attention)) => format!("linear {linear}; attention {attention}"),
            _ => format!("linear {}; attention {}", plan.linear, plan.attention),
        };
        info.set_item("kernels", kernels)?;
        info.set_item("precision_fallbacks", model.precision_fallbacks().to_vec())?;
        info.set_item("weights_dtype", model.weights_dtype())?;
        info.set_item("parameters", model.parameter_count())?;
        info.set_item("dimensions", config.hidden_size)?;
        info.set_item(
            "matryoshka_dimensions",
            config.matryoshka_dimensions.clone(),
        )?;
        info.set_item("tasks", model.task_names())?;
        info.set_item("default_task", model.default_task())?;
        info.set_item("max_tokens", model.max_tokens())?;
        info.set_item("threads", self.pool.current_num_threads())?;
        info.set_item("max_batch_tokens", self.max_batch_tokens)?;
        let device = model.device_plan();
        info.set_item("device", device.name())?;
        info.set_item("requested_device", device.requested.name())?;
        info.set_item("device_summary", device.summary())?;
        info.set_item("gpu_adapter", device.gpu.as_ref().map(|g| g.name.clone()))?;
        info.set_item("device_fallbacks", device.fallbacks.clone())?;
        Ok(info)
    }
}

/// The mean of a span sum, as `pooling::finish` takes it (all zeros for an empty span).
fn mean(sum: &SpanSum) -> Vec<f32> {
    sum.sum
        .iter()
        .map(|s| {
            if sum.count == 0 {
                0.0
            } else {
                (s / sum.count as f64) as f32
            }
        })
        .collect()
}

/// The output rows in one row-major buffer of the output type (f32 values, or packed sign bits
/// as bytes), filled row by row and handed to numpy as it is.
enum Buffer {
    F32(Vec<f32>),
    U8(Vec<u8>),
    I8(Vec<i8>),
}

struct Rows {
    buffer: Buffer,
    /// Elements per row: the dimensions, or the bytes that hold their bits.
    cols: usize,
}

impl Rows {
    fn new(ty: EmbeddingType, rows: usize, width: usize) -> Rows {
        let bytes = width.div_ceil(8);
        match ty {
            EmbeddingType::Float => Rows {
                buffer: Buffer::F32(vec![0.0; rows * width]),
                cols: width,
            },
            EmbeddingType::Binary => Rows {
                buffer: Buffer::I8(vec![0; rows * bytes]),
                cols: bytes,
            },
            EmbeddingType::Ubinary | EmbeddingType::Base64 => Rows {
                buffer: Buffer::U8(vec![0; rows * bytes]),
                cols: bytes,
            },
        }
    }

    /// Writes the finished vector of output `row` (its length is the width `new` was given).
    fn write(&mut self, row: usize, vector: &[f32]) {
        let range = row * self.cols..(row + 1) * self.cols;
        match &mut self.buffer {
            Buffer::F32(buf) => buf[range].copy_from_slice(vector),
            Buffer::U8(buf) => buf[range].copy_from_slice(&output::pack_bits(vector)),
            Buffer::I8(buf) => {
                for (b, bits) in buf[range].iter_mut().zip(output::pack_bits(vector)) {
                    *b = (bits as i16 - 128) as i8;
                }
            }
        }
    }

    /// A `(rows, cols)` numpy array that owns the buffer (no copy).
    fn into_array(self, py: Python<'_>) -> Bound<'_, PyAny> {
        fn shaped<T: numpy::Element>(py: Python<'_>, v: Vec<T>, cols: usize) -> Bound<'_, PyAny> {
            let rows = v.len().checked_div(cols).unwrap_or(0);
            Array2::from_shape_vec((rows, cols), v)
                .expect("rows × cols is the buffer's length")
                .into_pyarray(py)
                .into_any()
        }
        match self.buffer {
            Buffer::F32(v) => shaped(py, v, self.cols),
            Buffer::U8(v) => shaped(py, v, self.cols),
            Buffer::I8(v) => shaped(py, v, self.cols),
        }
    }
}

/// Training pairs: a file path (JSONL, CSV, TSV), or a list of `(query, positive, negatives)`.
fn pairs_of(data: &Bound<'_, PyAny>) -> PyResult<Vec<jina_engine::train::Pair>> {
    if let Ok(path) = data.extract::<String>() {
        return jina_engine::train::read_pairs(std::path::Path::new(&path)).map_err(engine_error);
    }
    let mut pairs = Vec::new();
    for (index, item) in data.try_iter()?.enumerate() {
        let (query, positive, negatives): (String, String, Vec<String>) =
            item?.extract().map_err(|_| {
                PyTypeError::new_err(format!(
                    "data[{index}] must be (query: str, positive: str, negatives: list[str])"
                ))
            })?;
        pairs.push(jina_engine::train::Pair {
            query,
            positive,
            negatives,
        });
    }
    if pairs.is_empty() {
        return Err(PyValueError::new_err("data holds no pairs"));
    }
    Ok(pairs)
}

/// Trains a new task adapter into `out` (the options of `jina-embed train`) and returns the
/// report as JSON. `progress(step, total, loss)` is called after every step; Ctrl-C stops
/// after the current step, keeping the checkpoint (`resume=True` goes on).
#[pyfunction]
#[pyo3(signature = (folder, data, name, out, from_task, eval = None, epochs = 1, lr = 5e-4, batch = 32,
                    max_tokens = 256, seed = 0, threads = None, resume = false, prefix = None,
                    joint = None, passage_task = None, symmetric = false, matryoshka = None,
                    scale = 20.0, warmup = 0.1, weight_decay = 0.01, max_grad_norm = 1.0,
                    chunk_tokens = 0, progress = None))]
#[allow(clippy::too_many_arguments)]
fn train(
    py: Python<'_>,
    folder: &str,
    data: &Bound<'_, PyAny>,
    name: &str,
    out: &str,
    from_task: Option<String>,
    eval: Option<&Bound<'_, PyAny>>,
    epochs: usize,
    lr: f32,
    batch: usize,
    max_tokens: usize,
    seed: u64,
    threads: Option<usize>,
    resume: bool,
    prefix: Option<String>,
    joint: Option<bool>,
    passage_task: Option<String>,
    symmetric: bool,
    matryoshka: Option<Vec<usize>>,
    scale: f32,
    warmup: f32,
    weight_decay: f32,
    max_grad_norm: f32,
    chunk_tokens: usize,
    progress: Option<Bound<'_, PyAny>>,
) -> PyResult<String> {
    use jina_engine::train::trainer::{check_out_dir, Side};
    use jina_engine::train::{InfoNce, Progress, TrainModel, TrainOptions, Trainer};
    let pairs = pairs_of(data)?;
    let eval = eval.map(pairs_of).transpose()?;
    let out = std::path::PathBuf::from(out);
    check_out_dir(&out, resume).map_err(engine_error)?;
    let from = from_task.filter(|t| t != jina_engine::NO_TASK);
    let mut o = TrainOptions::new(name, from.as_deref());
    match (joint, passage_task) {
        (Some(true), Some(_)) => {
            return Err(PyValueError::new_err(
                "joint=True and passage_task cannot be used together",
            ))
        }
        (Some(true), None) => o.side = Side::Joint,
        (_, Some(task)) => o.side = Side::Query { passage_task: task },
        (Some(false), None) => {
            o.side = Side::Query {
                passage_task: "retrieval.passage".into(),
            }
        }
        (None, None) => {}
    }
    o.prefix = prefix;
    o.epochs = epochs;
    o.batch = batch;
    o.max_tokens = max_tokens;
    o.seed = seed;
    o.optimizer.lr = lr;
    o.optimizer.weight_decay = weight_decay;
    o.warmup_ratio = warmup;
    o.max_grad_norm = (max_grad_norm > 0.0).then_some(max_grad_norm);
    o.loss = InfoNce {
        scale,
        symmetric,
        dims: matryoshka.unwrap_or_default(),
    };
    o.chunk_tokens = chunk_tokens;
    let mut builder = rayon::ThreadPoolBuilder::new().thread_name(|i| format!("jina-train-{i}"));
    if let Some(n) = threads {
        builder = builder.num_threads(n);
    }
    let pool = builder
        .build()
        .map_err(|e| PyRuntimeError::new_err(format!("cannot start {threads:?} threads: {e}")))?;
    let dir = std::path::PathBuf::from(folder);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let mut callback_error: Option<PyErr> = None;
    let progress: Option<Py<PyAny>> = progress.map(Bound::unbind);
    let result = py.detach(|| {
        guarded(|| {
            pool.install(|| -> jina_engine::Result<_> {
                let model = TrainModel::load(&dir)?;
                let tokenizer = jina_engine::tokenize::TextTokenizer::from_dir(&dir)?;
                let mut trainer = Trainer::new(&model, &tokenizer, o, &pairs, eval.as_deref())?;
                let mut on_progress = |p: &Progress| {
                    let Progress::Step {
                        step,
                        total_steps,
                        loss,
                        ..
                    } = p
                    else {
                        return;
                    };
                    Python::attach(|py| {
                        // Ctrl-C (and any pending signal handler's exception) stops the run.
                        let outcome = py.check_signals().and_then(|()| match &progress {
                            Some(f) => f.bind(py).call1((*step, *total_steps, *loss)).map(drop),
                            None => Ok(()),
                        });
                        if let Err(e) = outcome {
                            callback_error.get_or_insert(e);
                            stop.store(true, std::sync::atomic::Ordering::Relaxed);
                        }
                    });
                };
                trainer.run_in(&out, resume, &stop, &mut on_progress)
            })
        })
    })?;
    let report = result.map_err(engine_error)?;
    if let Some(e) = callback_error {
        return Err(e);
    }
    serde_json::to_string(&report).map_err(|e| PyRuntimeError::new_err(e.to_string()))
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Model>()?;
    m.add_function(wrap_pyfunction!(resolve, m)?)?;
    m.add_function(wrap_pyfunction!(write_fixture, m)?)?;
    m.add_function(wrap_pyfunction!(train, m)?)?;
    m.add(
        "ModelNotCachedError",
        m.py().get_type::<ModelNotCachedError>(),
    )?;
    m.add("DEFAULT_MODEL", hub::DEFAULT_MODEL)?;
    m.add("DEFAULT_TASK", jina_engine::DEFAULT_TASK)?;
    m.add("NO_TASK", jina_engine::NO_TASK)?;
    m.add("MODEL_FILES", hub::MODEL_FILES.to_vec())?;
    Ok(())
}
