//! `tokenizer_config.json`: what `transformers.AutoTokenizer` (the official pipeline's loader)
//! applies over `tokenizer.json`.
//!
//! transformers 4.x (`PreTrainedTokenizerFast.__init__`) loads `tokenizer.json` unchanged, then
//! re-adds every entry of the config's `added_tokens_decoder` whose flags differ from the file's,
//! so the config's `lstrip`/`rstrip`/`single_word`/`normalized`/`special` win. The real
//! jina-embeddings-v3 config gives `<mask>` `lstrip: true` where its `tokenizer.json` says false:
//! in `"a <mask>"` the space before `<mask>` is then part of the token instead of a `▁` piece.
//! Named special tokens (`bos_token` … `mask_token`, `additional_special_tokens`) that are not yet
//! added tokens are added as special ones, `split_special_tokens` decides whether their literal
//! spellings in user text are matched, and `model_max_length` is the longest sequence the
//! official `encode()` keeps. Every other key (`clean_up_tokenization_spaces` acts on decoding
//! only, `tokenizer_class` names the class whose behaviour this reproduces) changes no id and is
//! ignored with a debug log.
//!
//! `special_tokens_map.json` is not read: transformers reads it only for legacy folders whose
//! config has no `added_tokens_decoder`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use tokenizers::AddedToken;

use crate::error::{Error, Result};

/// The file name inside a model folder.
pub const FILE_NAME: &str = "tokenizer_config.json";

/// transformers writes `int(1e30)` (`VERY_LARGE_INTEGER`) as `model_max_length` when a tokenizer
/// has no limit; anything this large means "no limit".
const NO_LIMIT_FROM: f64 = 1e18;

/// One added token as transformers serialises it (`AddedToken.__getstate__`).
#[derive(Debug, Clone, Deserialize)]
struct RawAddedToken {
    content: String,
    #[serde(default)]
    single_word: bool,
    #[serde(default)]
    lstrip: bool,
    #[serde(default)]
    rstrip: bool,
    /// Python's default is `not special`.
    normalized: Option<bool>,
    #[serde(default)]
    special: bool,
}

impl RawAddedToken {
    fn to_added_token(&self) -> AddedToken {
        AddedToken::from(self.content.clone(), self.special)
            .single_word(self.single_word)
            .lstrip(self.lstrip)
            .rstrip(self.rstrip)
            .normalized(self.normalized.unwrap_or(!self.special))
    }
}

/// A named special token: a plain string or a serialised `AddedToken`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum NamedToken {
    Text(String),
    Token(RawAddedToken),
}

#[derive(Debug, Deserialize)]
struct RawConfig {
    /// Keys are token ids written as strings.
    #[serde(default)]
    added_tokens_decoder: BTreeMap<String, RawAddedToken>,
    model_max_length: Option<serde_json::Number>,
    #[serde(default)]
    split_special_tokens: bool,
    bos_token: Option<NamedToken>,
    eos_token: Option<NamedToken>,
    unk_token: Option<NamedToken>,
    sep_token: Option<NamedToken>,
    pad_token: Option<NamedToken>,
    cls_token: Option<NamedToken>,
    mask_token: Option<NamedToken>,
    #[serde(default)]
    additional_special_tokens: Vec<NamedToken>,
    tokenizer_class: Option<String>,
    #[serde(flatten)]
    ignored: BTreeMap<String, serde_json::Value>,
}

/// What `tokenizer_config.json` changes about tokenisation.
#[derive(Debug, Clone)]
pub struct TokenizerConfig {
    path: PathBuf,
    /// `added_tokens_decoder`, by id.
    added_tokens: Vec<(u32, AddedToken)>,
    /// Named special tokens, with the flags they get if they are not added tokens yet.
    named: Vec<AddedToken>,
    /// Whether the literal spellings of special tokens in text are tokenised as plain text.
    pub split_special_tokens: bool,
    /// Longest sequence, special tokens included (`None`: no limit from the tokenizer).
    pub model_max_length: Option<usize>,
}

impl TokenizerConfig {
    /// Reads and checks the file; a malformed one is an [`Error::TokenizerConfig`] naming it and
    /// the field at fault.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json(path, &text)
    }

    /// Parses the file's text (`path` is used in messages only).
    pub fn from_json(path: &Path, text: &str) -> Result<Self> {
        let invalid = |message: String| Error::TokenizerConfig {
            path: path.to_path_buf(),
            message,
        };
        let raw: RawConfig =
            serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_str(text))
                .map_err(|e| match e.path().to_string().as_str() {
                    "." => invalid(e.inner().to_string()),
                    field => invalid(format!("{field}: {}", e.inner())),
                })?;
        let mut added_tokens = Vec::with_capacity(raw.added_tokens_decoder.len());
        for (key, token) in &raw.added_tokens_decoder {
            let id: u32 = key.parse().map_err(|_| {
                invalid(format!(
                    "added_tokens_decoder key {key:?} is not a token id (an integer from 0 to {})",
                    u32::MAX
                ))
            })?;
            if token.content.is_empty() {
                return Err(invalid(format!(
                    "added_tokens_decoder.{key}.content is empty"
                )));
            }
            added_tokens.push((id, token.to_added_token()));
        }
        // transformers adds them in id order.
        added_tokens.sort_by_key(|(id, _)| *id);
        let model_max_length = match &raw.model_max_length {
            None => None,
            Some(n) => match (n.as_u64(), n.as_f64()) {
                (Some(v), _) if v < 2 => {
                    return Err(invalid(format!(
                        "model_max_length is {v}; it must be at least 2 (<s> and </s>)"
                    )))
                }
                (Some(v), _) => Some(usize::try_from(v).unwrap_or(usize::MAX)),
                (None, Some(v)) if v >= NO_LIMIT_FROM => None,
                _ => {
                    return Err(invalid(format!(
                        "model_max_length {n} is not a positive integer"
                    )))
                }
            },
        };
        let xlm_roberta = raw
            .tokenizer_class
            .as_deref()
            .is_some_and(|c| c.starts_with("XLMRobertaTokenizer"));
        let mut named = Vec::new();
        let singles = [
            ("bos_token", &raw.bos_token),
            ("eos_token", &raw.eos_token),
            ("unk_token", &raw.unk_token),
            ("sep_token", &raw.sep_token),
            ("pad_token", &raw.pad_token),
            ("cls_token", &raw.cls_token),
            ("mask_token", &raw.mask_token),
        ];
        let all = singles
            .iter()
            .filter_map(|(name, t)| t.as_ref().map(|t| (*name, t)))
            .chain(
                raw.additional_special_tokens
                    .iter()
                    .map(|t| ("additional_special_tokens", t)),
            );
        for (name, token) in all {
            let token = match token {
                // `XLMRobertaTokenizerFast.__init__`: a mask token given as a string behaves like
                // a word, taking the space before it.
                NamedToken::Text(s) if name == "mask_token" && xlm_roberta => {
                    AddedToken::from(s.clone(), true)
                        .lstrip(true)
                        .normalized(false)
                }
                NamedToken::Text(s) => AddedToken::from(s.clone(), true).normalized(false),
                NamedToken::Token(t) => t.to_added_token().special(true),
            };
            if token.content.is_empty() {
                return Err(invalid(format!("{name} is empty")));
            }
            named.push(token);
        }
        if !raw.ignored.is_empty() {
            let keys: Vec<&str> = raw.ignored.keys().map(String::as_str).collect();
            tracing::debug!(path = %path.display(), "ignoring keys of the tokenizer configuration that change no token id: {}", keys.join(", "));
        }
        Ok(TokenizerConfig {
            path: path.to_path_buf(),
            added_tokens,
            named,
            split_special_tokens: raw.split_special_tokens,
            model_max_length,
        })
    }

    /// Applies the added-token flags, the named special tokens and `split_special_tokens` to a
    /// tokenizer loaded from `tokenizer.json`, as transformers does.
    pub fn apply(&self, tokenizer: &mut tokenizers::Tokenizer) -> Result<()> {
        let named: Vec<&str> = self.named.iter().map(|t| t.content.as_str()).collect();
        let existing = tokenizer.get_added_tokens_decoder();
        let mut changed = Vec::new();
        for (id, token) in &self.added_tokens {
            // A token named as special is special whatever its own flag says.
            let token = token
                .clone()
                .special(token.special || named.contains(&token.content.as_str()));
            if let Some(actual) = tokenizer.token_to_id(&token.content) {
                if actual != *id {
                    // transformers matches by content and keeps the tokenizer's id.
                    tracing::warn!(path = %self.path.display(), "added_tokens_decoder gives {:?} the id {id}, but tokenizer.json has it as {actual}; using {actual}", token.content);
                }
            }
            if existing.values().all(|t| *t != token) {
                changed.push(token);
            }
        }
        let already: Vec<String> = existing
            .values()
            .map(|t| t.content.clone())
            .chain(changed.iter().map(|t| t.content.clone()))
            .collect();
        for token in &self.named {
            if !already.contains(&token.content)
                && !changed.iter().any(|t| t.content == token.content)
            {
                changed.push(token.clone());
            }
        }
        if !changed.is_empty() {
            let names: Vec<&str> = changed.iter().map(|t| t.content.as_str()).collect();
            tracing::debug!(path = %self.path.display(), "tokenizer_config.json sets the added tokens {}", names.join(" "));
            tokenizer
                .add_tokens(changed)
                .map_err(|e| Error::TokenizerConfig {
                    path: self.path.clone(),
                    message: format!("cannot apply the added tokens: {e}"),
                })?;
        }
        tokenizer.set_encode_special_tokens(self.split_special_tokens);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<TokenizerConfig> {
        TokenizerConfig::from_json(Path::new("/m/tokenizer_config.json"), text)
    }

    #[test]
    fn malformed_files_name_the_file_and_the_field() {
        let err = parse("{not json").unwrap_err().to_string();
        assert!(err.contains("/m/tokenizer_config.json"), "{err}");
        let err = parse(
            r#"{"added_tokens_decoder": {"250001": {"content": "<mask>", "lstrip": "yes"}}}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("/m/tokenizer_config.json")
                && err.contains("added_tokens_decoder.250001.lstrip"),
            "{err}"
        );
        let err = parse(r#"{"added_tokens_decoder": {"x": {"content": "<mask>"}}}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains(r#"key "x""#), "{err}");
        let err = parse(r#"{"model_max_length": -3}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("model_max_length -3"), "{err}");
    }

    #[test]
    fn model_max_length_reads_transformers_no_limit_as_none() {
        assert_eq!(
            parse(r#"{"model_max_length": 8194}"#)
                .unwrap()
                .model_max_length,
            Some(8194)
        );
        assert_eq!(
            parse(r#"{"model_max_length": 1000000000000000019884624838656}"#)
                .unwrap()
                .model_max_length,
            None
        );
        assert_eq!(parse("{}").unwrap().model_max_length, None);
    }
}
