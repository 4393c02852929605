//! `model.safetensors`: memory-mapped, checked against the config, read tensor by tensor.
//!
//! The file is mapped once. Every tensor name and shape is checked against what `config.json`
//! implies before anything is converted, so a wrong file fails with one precise message rather
//! than half-way through loading. Large tables (the 250002-row word embeddings and their LoRA `A`)
//! stay in the file and are read row by row; everything else is converted to f32 once.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use half::{bf16, f16};
use memmap2::Mmap;
use rayon::prelude::*;
use safetensors::{Dtype, SafeTensors};

use crate::config::Config;
use crate::error::{Error, Result};

/// Storage type of one tensor in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredDtype {
    /// bfloat16 (the official checkpoint).
    Bf16,
    /// IEEE half precision.
    F16,
    /// IEEE single precision.
    F32,
}

impl StoredDtype {
    fn size(self) -> usize {
        match self {
            StoredDtype::Bf16 | StoredDtype::F16 => 2,
            StoredDtype::F32 => 4,
        }
    }

    /// The name used in safetensors headers.
    pub fn name(self) -> &'static str {
        match self {
            StoredDtype::Bf16 => "BF16",
            StoredDtype::F16 => "F16",
            StoredDtype::F32 => "F32",
        }
    }
}

/// Where one tensor lives in the mapping.
#[derive(Debug, Clone)]
struct TensorEntry {
    dtype: StoredDtype,
    shape: Vec<usize>,
    /// Byte range inside the mapping.
    start: usize,
    end: usize,
}

/// A memory-mapped, validated weights file.
pub struct Weights {
    path: PathBuf,
    file: Arc<File>,
    mmap: Arc<Mmap>,
    tensors: BTreeMap<String, TensorEntry>,
}

/// Names and shapes of every tensor of a checkpoint, derived from its config.
///
/// The pooler's tensors are listed as optional: the embeddings never use them, so a checkpoint
/// without them still loads.
pub fn expected_tensors(config: &Config) -> Vec<(String, Vec<usize>, bool)> {
    let h = config.hidden_size;
    let i = config.intermediate_size;
    let r = config.lora_rank;
    let t = config.num_adapters();
    let mut out = Vec::new();
    let mut embedding = |name: &str, rows: usize| {
        let base = format!("roberta.embeddings.{name}.parametrizations.weight");
        out.push((format!("{base}.original"), vec![rows, h], true));
        out.push((format!("{base}.0.lora_A"), vec![t, rows, r], true));
        out.push((format!("{base}.0.lora_B"), vec![t, r, h], true));
    };
    embedding("word_embeddings", config.vocab_size);
    embedding("token_type_embeddings", config.type_vocab_size);
    out.push(("roberta.emb_ln.weight".into(), vec![h], true));
    out.push(("roberta.emb_ln.bias".into(), vec![h], true));
    let mut linear = |prefix: String, n_out: usize, n_in: usize, required: bool| {
        let base = format!("{prefix}.parametrizations.weight");
        out.push((format!("{base}.original"), vec![n_out, n_in], required));
        out.push((format!("{base}.0.lora_A"), vec![t, r, n_in], required));
        out.push((format!("{base}.0.lora_B"), vec![t, n_out, r], required));
        out.push((format!("{prefix}.bias"), vec![n_out], required));
    };
    for layer in 0..config.num_hidden_layers {
        let p = format!("roberta.encoder.layers.{layer}");
        linear(format!("{p}.mixer.Wqkv"), 3 * h, h, true);
        linear(format!("{p}.mixer.out_proj"), h, h, true);
        linear(format!("{p}.mlp.fc1"), i, h, true);
        linear(format!("{p}.mlp.fc2"), h, i, true);
    }
    linear("roberta.pooler.dense".into(), h, h, false);
    for layer in 0..config.num_hidden_layers {
        for norm in ["norm1", "norm2"] {
            for part in ["weight", "bias"] {
                out.push((
                    format!("roberta.encoder.layers.{layer}.{norm}.{part}"),
                    vec![h],
                    true,
                ));
            }
        }
    }
    out
}

impl Weights {
    /// Maps `path` and checks its tensors against `config`.
    pub fn open(path: &Path, config: &Config) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                Error::MissingFile {
                    path: path.to_path_buf(),
                }
            } else {
                Error::Io {
                    path: path.to_path_buf(),
                    source,
                }
            }
        })?;
        // SAFETY: the mapping is read-only. Like every safetensors loader, we rely on the file not
        // being truncated or rewritten while it is mapped.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let tensors = index_tensors(path, &mmap)?;
        let weights = Weights {
            path: path.to_path_buf(),
            file: Arc::new(file),
            mmap: Arc::new(mmap),
            tensors,
        };
        weights.check_against(config)?;
        Ok(weights)
    }

    fn check_against(&self, config: &Config) -> Result<()> {
        let expected = expected_tensors(config);
        let known: BTreeMap<&str, &Vec<usize>> =
            expected.iter().map(|(n, s, _)| (n.as_str(), s)).collect();
        for (name, entry) in &self.tensors {
            match known.get(name.as_str()) {
                None => {
                    return Err(Error::UnexpectedTensor {
                        name: name.clone(),
                        shape: entry.shape.clone(),
                    })
                }
                Some(shape) if **shape != entry.shape => {
                    return Err(Error::TensorShape {
                        name: name.clone(),
                        expected: (*shape).clone(),
                        found: entry.shape.clone(),
                    })
                }
                Some(_) => {}
            }
        }
        for (name, shape, required) in expected {
            if required && !self.tensors.contains_key(&name) {
                return Err(Error::MissingTensor {
                    name,
                    expected: shape,
                });
            }
        }
        Ok(())
    }

    /// The path of the mapped file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The storage dtype of most tensors (that of the word-embedding table).
    pub fn dtype(&self) -> StoredDtype {
        self.tensors
            .get("roberta.embeddings.word_embeddings.parametrizations.weight.original")
            .map(|e| e.dtype)
            .unwrap_or(StoredDtype::F32)
    }

    /// Whether every linear weight of the encoder is stored as bf16 (true of the published
    /// checkpoint), so that bf16 storage of it loses nothing.
    pub fn linear_weights_are_bf16(&self) -> bool {
        let linear = |name: &str| {
            name.starts_with("roberta.encoder.layers.")
                && name.ends_with(".parametrizations.weight.original")
        };
        self.tensors
            .iter()
            .filter(|(name, _)| linear(name))
            .all(|(_, e)| e.dtype == StoredDtype::Bf16)
    }

    /// Total number of stored values.
    pub fn parameter_count(&self) -> usize {
        self.tensors
            .values()
            .map(|e| e.shape.iter().product::<usize>())
            .sum()
    }

    fn entry(&self, name: &str) -> Result<&TensorEntry> {
        self.tensors.get(name).ok_or_else(|| Error::MissingTensor {
            name: name.to_string(),
            expected: Vec::new(),
        })
    }

    /// Whether the file holds `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// The whole tensor converted to f32, row-major.
    ///
    /// The mapped pages it was read from are then given back (`MADV_DONTNEED`): the copy is
    /// what the model keeps, and the file's pages would otherwise stay in this process's resident
    /// set, a second copy of every weight (1.1 GB on the real checkpoint).
    pub fn f32(&self, name: &str) -> Result<Vec<f32>> {
        let entry = self.entry(name)?;
        let bytes = &self.mmap[entry.start..entry.end];
        let values = convert_to_f32(bytes, entry.dtype);
        self.release(entry.start, entry.end);
        Ok(values)
    }

    /// Drops the whole pages inside `start..end` from the resident set. They stay in the page
    /// cache, and a later read faults them back in: only pages wholly inside the range go, so a
    /// neighbouring tensor never loses data, only residency.
    fn release(&self, start: usize, end: usize) {
        #[cfg(unix)]
        {
            const PAGE: usize = 4096;
            let base = self.mmap.as_ptr() as usize;
            let first = (base + start).next_multiple_of(PAGE) - base;
            let last = (base + end) / PAGE * PAGE - base;
            if last > first {
                // SAFETY: a read-only private file mapping: discarding its pages loses nothing
                // (they are read again from the file), and no reference into the range is kept
                // by this method's callers (they copied it).
                let _ = unsafe {
                    self.mmap.unchecked_advise_range(
                        memmap2::UncheckedAdvice::DontNeed,
                        first,
                        last - first,
                    )
                };
            }
        }
        #[cfg(not(unix))]
        let _ = (start, end);
    }

    /// A 2-D view (the trailing dimension is the row width) whose rows are read from the file.
    ///
    /// Rows are read with positioned reads, not through the mapping: a batch reads rows in token
    /// order, which is random, and a page fault maps a whole page-cache folio. A freshly written
    /// or downloaded file sits in the page cache in folios of up to 2 MB (ext4, kernel 6.18), so
    /// the 1,024 rows of a batch of 8 × 128 tokens mapped the whole 512 MB word table into the
    /// resident set; read ahead on an older file, ~130 MB. A read copies the row alone.
    pub fn table(&self, name: &str) -> Result<FileTable> {
        let entry = self.entry(name)?;
        let cols = *entry.shape.last().unwrap_or(&1);
        let rows = entry.shape.iter().rev().skip(1).product::<usize>();
        Ok(FileTable {
            path: self.path.clone(),
            file: Arc::clone(&self.file),
            // The mapping covers the whole file, so a mapping offset is a file offset.
            start: entry.start as u64,
            rows,
            cols,
            dtype: entry.dtype,
        })
    }
}

fn index_tensors(path: &Path, bytes: &[u8]) -> Result<BTreeMap<String, TensorEntry>> {
    let corrupt = |message: String| Error::Safetensors {
        path: path.to_path_buf(),
        message,
    };
    let st = SafeTensors::deserialize(bytes).map_err(|e| corrupt(e.to_string()))?;
    let base = bytes.as_ptr() as usize;
    let mut tensors = BTreeMap::new();
    for (name, view) in st.tensors() {
        let dtype = match view.dtype() {
            Dtype::BF16 => StoredDtype::Bf16,
            Dtype::F16 => StoredDtype::F16,
            Dtype::F32 => StoredDtype::F32,
            other => {
                return Err(Error::UnsupportedDtype {
                    name,
                    dtype: format!("{other:?}"),
                })
            }
        };
        let data = view.data();
        let start = data.as_ptr() as usize - base;
        let count: usize = view.shape().iter().product();
        if data.len() != count * dtype.size() {
            return Err(corrupt(format!(
                "tensor {name} holds {} bytes, but shape {:?} in {} needs {}",
                data.len(),
                view.shape(),
                dtype.name(),
                count * dtype.size()
            )));
        }
        tensors.insert(
            name,
            TensorEntry {
                dtype,
                shape: view.shape().to_vec(),
                start,
                end: start + data.len(),
            },
        );
    }
    Ok(tensors)
}

/// Converts little-endian stored values to f32 (exact for BF16 and F16).
pub fn convert_to_f32(bytes: &[u8], dtype: StoredDtype) -> Vec<f32> {
    let n = bytes.len() / dtype.size();
    let mut out = vec![0f32; n];
    const CHUNK: usize = 1 << 16;
    out.par_chunks_mut(CHUNK).enumerate().for_each(|(c, dst)| {
        let first = c * CHUNK;
        convert_into(
            &bytes[first * dtype.size()..(first + dst.len()) * dtype.size()],
            dtype,
            dst,
        );
    });
    out
}

fn convert_into(bytes: &[u8], dtype: StoredDtype, dst: &mut [f32]) {
    match dtype {
        StoredDtype::Bf16 => {
            for (d, b) in dst.iter_mut().zip(bytes.chunks_exact(2)) {
                *d = bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
            }
        }
        StoredDtype::F16 => {
            for (d, b) in dst.iter_mut().zip(bytes.chunks_exact(2)) {
                *d = f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
            }
        }
        StoredDtype::F32 => {
            for (d, b) in dst.iter_mut().zip(bytes.chunks_exact(4)) {
                *d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
    }
}

/// A table that stays in the file; rows are read and converted to f32 when asked for.
///
/// Used for the word embeddings (250002 × 1024): a batch touches a few hundred rows, so copying
/// the whole 1 GB table to f32 would only cost memory.
#[derive(Clone)]
pub struct FileTable {
    path: PathBuf,
    file: Arc<File>,
    /// Byte offset of row 0 in the file.
    start: u64,
    rows: usize,
    cols: usize,
    dtype: StoredDtype,
}

impl FileTable {
    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Width of a row.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Writes row `row` into `out` (length `cols`) as f32.
    ///
    /// The file was checked at load, so a failed read means it was truncated or replaced while
    /// the model was loaded; that panics with the file's name (through a mapping, as every
    /// safetensors loader reads, it would have been a `SIGBUS`).
    pub fn read_row(&self, row: usize, out: &mut [f32]) {
        assert!(row < self.rows && out.len() == self.cols);
        let size = self.dtype.size();
        let mut bytes = vec![0u8; self.cols * size];
        let offset = self.start + (row * self.cols * size) as u64;
        if let Err(e) = read_exact_at(&self.file, &mut bytes, offset) {
            panic!(
                "cannot read row {row} of a table in {}: {e} (was the file changed while loaded?)",
                self.path.display()
            );
        }
        convert_into(&bytes, self.dtype, out);
    }
}

#[cfg(unix)]
fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(windows)]
fn read_exact_at(file: &File, mut buf: &mut [u8], mut offset: u64) -> std::io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        match file.seek_read(buf, offset)? {
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            n => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
        }
    }
    Ok(())
}
