//! From texts to model sequences: the tokenizer, task prefixes, the token limit, truncation and
//! late-chunking spans.
//!
//! A request becomes a [`Plan`]: the [`Sequence`]s to run and, for each sequence, which of its
//! token ranges are pooled into which output ([`Span`]). Ordinary inputs are one sequence and one
//! span each; late chunking joins all inputs into one sequence with one span per input; long late
//! chunking cuts that sequence into overlapping windows whose spans together cover every token once.

use std::ops::Range;
use std::path::Path;

use crate::adapters::TaskAdapter;
use crate::error::{Error, Result};
use crate::tokenizer_config::{self, TokenizerConfig};

/// The XLM-RoBERTa tokenizer of the checkpoint (`tokenizer.json`, HF `tokenizers`), with what
/// `tokenizer_config.json` changes applied as transformers applies it.
pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    model_max_length: Option<usize>,
}

impl TextTokenizer {
    /// Loads `tokenizer.json` from a model folder and, when the folder has one,
    /// `tokenizer_config.json` over it ([`crate::tokenizer_config`]).
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let mut tokenizer = Self::from_file(&dir.join("tokenizer.json"))?;
        let config_path = dir.join(tokenizer_config::FILE_NAME);
        if config_path.exists() {
            let config = TokenizerConfig::from_file(&config_path)?;
            config.apply(&mut tokenizer.inner)?;
            tokenizer.model_max_length = config.model_max_length;
        } else {
            tracing::debug!(dir = %dir.display(), "no tokenizer_config.json: tokenizer.json is used as it is");
        }
        Ok(tokenizer)
    }

    /// Loads `tokenizer.json`; any truncation or padding it configures is switched off, since
    /// limits are applied here with their own errors.
    pub fn from_file(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(Error::MissingFile {
                path: path.to_path_buf(),
            });
        }
        let mut inner = tokenizers::Tokenizer::from_file(path).map_err(|e| Error::Tokenizer {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        inner.with_padding(None);
        inner.with_truncation(None).map_err(|e| Error::Tokenizer {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        if inner.get_vocab_size(true) == 0 {
            return Err(Error::Tokenizer {
                path: path.to_path_buf(),
                message: "the vocabulary is empty".into(),
            });
        }
        Ok(TextTokenizer {
            inner,
            model_max_length: None,
        })
    }

    /// Ids of `text` with `<s>` and `</s>` around it.
    pub fn encode_with_specials(&self, text: &str) -> Result<Vec<u32>> {
        self.encode(text, true)
    }

    /// Ids of `text` alone, without special tokens (late-chunking pieces).
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>> {
        self.encode(text, false)
    }

    fn encode(&self, text: &str, specials: bool) -> Result<Vec<u32>> {
        self.inner
            .encode_fast(text, specials)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| Error::InvalidRequest(format!("cannot tokenize input: {e}")))
    }

    /// The piece of every id (for `/tokenize`).
    pub fn pieces(&self, ids: &[u32]) -> Vec<String> {
        ids.iter()
            .map(|&id| self.inner.id_to_token(id).unwrap_or_default())
            .collect()
    }

    /// `model_max_length` of `tokenizer_config.json`: the longest sequence the official
    /// `encode()` keeps, special tokens included (`None` without a limit).
    pub fn model_max_length(&self) -> Option<usize> {
        self.model_max_length
    }

    /// Number of ids in the vocabulary, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}

/// Whether and how the inputs of a request are late-chunked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LateChunking {
    /// Every input is its own sequence.
    #[default]
    Off,
    /// All inputs join into one sequence that must fit the token limit.
    On,
    /// As `On`, but a joined sequence over the limit is run in windows that overlap by `overlap`
    /// tokens (beyond the hosted API; opt-in).
    Long {
        /// Tokens shared by two neighbouring windows.
        overlap: usize,
    },
}

/// Default overlap of long late chunking, as in the late-chunking paper's code.
pub const DEFAULT_LONG_OVERLAP: usize = 512;

/// Token rows `range` of a sequence are pooled into output `output`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    /// Index of the output (the request's input index).
    pub output: usize,
    /// Rows of the sequence.
    pub range: Range<usize>,
}

/// One sequence for the encoder, with the spans pooled from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sequence {
    /// Token ids.
    pub ids: Vec<u32>,
    /// Task adapter, or `None` for the base weights.
    pub adapter: Option<TaskAdapter>,
    /// What to pool.
    pub spans: Vec<Span>,
}

/// The sequences of one request and how their pooled spans map back to outputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Sequences to run, in no particular order.
    pub sequences: Vec<Sequence>,
    /// Number of outputs (= inputs of the request).
    pub outputs: usize,
    /// Tokens fed to the model for the request: `<s>`, `</s>` and prefixes included, each token
    /// counted once (overlapping windows do not count twice).
    pub total_tokens: usize,
}

/// What tokenisation needs to know about the model and the request.
pub struct PlanParams<'a> {
    /// Task adapter, or `None`.
    pub adapter: Option<TaskAdapter>,
    /// Instruction prefix of the task (empty for none).
    pub prefix: &'a str,
    /// Longest sequence, specials included (8194).
    pub max_tokens: usize,
    /// Cut inputs over the limit instead of refusing them.
    pub truncate: bool,
    /// Late-chunking mode.
    pub late_chunking: LateChunking,
    /// Id of `</s>`, appended after truncation.
    pub eos: u32,
    /// Id of `<s>`.
    pub bos: u32,
}

/// Tokenises `inputs` into a [`Plan`].
pub fn plan(tokenizer: &TextTokenizer, inputs: &[String], params: &PlanParams) -> Result<Plan> {
    if inputs.is_empty() {
        return Err(Error::EmptyInput);
    }
    match params.late_chunking {
        LateChunking::Off => plan_separate(tokenizer, inputs, params),
        LateChunking::On => plan_late(tokenizer, inputs, params, None),
        LateChunking::Long { overlap } => plan_late(tokenizer, inputs, params, Some(overlap)),
    }
}

fn plan_separate(tokenizer: &TextTokenizer, inputs: &[String], p: &PlanParams) -> Result<Plan> {
    let mut sequences = Vec::with_capacity(inputs.len());
    let mut total_tokens = 0;
    for (index, text) in inputs.iter().enumerate() {
        let mut ids = tokenizer.encode_with_specials(&format!("{}{}", p.prefix, text))?;
        if ids.len() > p.max_tokens {
            if !p.truncate {
                return Err(Error::InputTooLong {
                    index,
                    tokens: ids.len(),
                    limit: p.max_tokens,
                });
            }
            ids.truncate(p.max_tokens - 1);
            ids.push(p.eos);
        }
        total_tokens += ids.len();
        let len = ids.len();
        sequences.push(Sequence {
            ids,
            adapter: p.adapter.clone(),
            spans: vec![Span {
                output: index,
                range: 0..len,
            }],
        });
    }
    Ok(Plan {
        sequences,
        outputs: inputs.len(),
        total_tokens,
    })
}

/// `[<s>] + tok(prefix + input_0) + tok(input_1) + … + [</s>]`; span i covers input i's tokens,
/// span 0 also `<s>` (and the prefix), the last span also `</s>` (decisions.md, late chunking).
fn plan_late(
    tokenizer: &TextTokenizer,
    inputs: &[String],
    p: &PlanParams,
    overlap: Option<usize>,
) -> Result<Plan> {
    let mut ids = vec![p.bos];
    let mut spans = Vec::with_capacity(inputs.len());
    for (index, text) in inputs.iter().enumerate() {
        let piece = if index == 0 {
            tokenizer.encode_plain(&format!("{}{}", p.prefix, text))?
        } else {
            tokenizer.encode_plain(text)?
        };
        let start = if index == 0 { 0 } else { ids.len() };
        ids.extend_from_slice(&piece);
        spans.push(Span {
            output: index,
            range: start..ids.len(),
        });
    }
    ids.push(p.eos);
    if let Some(last) = spans.last_mut() {
        last.range.end = ids.len();
    }
    let total_tokens = ids.len();
    if total_tokens <= p.max_tokens {
        let sequence = Sequence {
            ids,
            adapter: p.adapter.clone(),
            spans,
        };
        return Ok(Plan {
            sequences: vec![sequence],
            outputs: inputs.len(),
            total_tokens,
        });
    }
    let Some(overlap) = overlap else {
        return Err(Error::LateChunkingTooLong {
            tokens: total_tokens,
            limit: p.max_tokens,
        });
    };
    let sequences = windows(&ids, &spans, &p.adapter, p.max_tokens, overlap)?;
    Ok(Plan {
        sequences,
        outputs: inputs.len(),
        total_tokens,
    })
}

/// Cuts a long late-chunking sequence into windows of at most `window` tokens that overlap by
/// `overlap`. Every token is pooled from exactly one window: the one where it sits furthest from
/// a cut, so the boundary between two windows is the middle of their overlap. Windows are raw
/// slices (only the first starts with `<s>`), as in the late-chunking paper.
fn windows(
    ids: &[u32],
    spans: &[Span],
    adapter: &Option<TaskAdapter>,
    window: usize,
    overlap: usize,
) -> Result<Vec<Sequence>> {
    if overlap > window / 2 {
        return Err(Error::InvalidRequest(format!(
            "late_chunking_overlap {overlap} is too large: it must be at most {}",
            window / 2
        )));
    }
    let stride = window - overlap;
    let len = ids.len();
    let mut out = Vec::new();
    let mut start = 0;
    loop {
        let end = (start + window).min(len);
        let last = end == len;
        let own_start = if start == 0 { 0 } else { start + overlap / 2 };
        let own_end = if last {
            len
        } else {
            start + stride + overlap / 2
        };
        let window_spans = spans
            .iter()
            .filter_map(|s| {
                let (a, b) = (s.range.start.max(own_start), s.range.end.min(own_end));
                (a < b).then(|| Span {
                    output: s.output,
                    range: a - start..b - start,
                })
            })
            .collect();
        out.push(Sequence {
            ids: ids[start..end].to_vec(),
            adapter: adapter.clone(),
            spans: window_spans,
        });
        if last {
            return Ok(out);
        }
        start += stride;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_cover_every_token_once() {
        let ids: Vec<u32> = (0..2500).collect();
        let spans = vec![
            Span {
                output: 0,
                range: 0..700,
            },
            Span {
                output: 1,
                range: 700..700,
            },
            Span {
                output: 2,
                range: 700..2500,
            },
        ];
        let seqs = windows(&ids, &spans, &Some(TaskAdapter::Builtin(1)), 1000, 200).unwrap();
        assert_eq!(seqs.len(), 3); // starts 0, 800, 1600
        let mut covered = vec![0u32; 2500];
        for (w, seq) in seqs.iter().enumerate() {
            assert!(seq.ids.len() <= 1000);
            let offset = w * 800;
            for span in &seq.spans {
                for row in span.range.clone() {
                    covered[offset + row] += 1;
                    let global = offset + row;
                    let owner = spans.iter().find(|s| s.range.contains(&global)).unwrap();
                    assert_eq!(owner.output, span.output);
                }
            }
        }
        assert!(covered.iter().all(|&c| c == 1));
        // The boundary between windows 0 and 1 is the middle of their overlap (800..1000).
        assert_eq!(seqs[0].spans.last().unwrap().range.end, 900);
    }

    #[test]
    fn overlap_is_bounded() {
        let err = windows(&[0; 10], &[], &None, 8, 5).unwrap_err();
        assert!(err.to_string().contains("late_chunking_overlap 5"));
    }
}
