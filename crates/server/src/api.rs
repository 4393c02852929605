//! Request and response types of both dialects, as serde types that also generate the OpenAPI
//! document (`GET /openapi.json`).
//!
//! One request type serves the Jina and the OpenAI dialect: the fields of both are accepted
//! together (an `openai` SDK caller may pass Jina's `task` through `extra_body`), unknown
//! fields are ignored, and a known field of the wrong type is a 422 naming the field.
//! Fields whose JSON may take several shapes (`input`, `embedding_type`, `late_chunking`) are
//! read through [`serde_json::Value`] so that their errors say which item is wrong and what
//! shapes are accepted, rather than serde's "did not match any variant".

use std::collections::BTreeMap;

use axum::http::HeaderMap;
use jina_engine::{EmbeddingType, Encoded, LateChunking};
use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::errors::{ApiError, Dialect};

/// Deepest nesting of arrays and objects a request body may have. A valid request needs 3
/// (`{"input": [{"text": …}]}`); the bound is checked by a scan of the bytes before the JSON
/// parser runs, so a hostile body cannot make the parser (or the drop of its value) recurse
/// deeply. serde_json's own limit (128) stays as a second guard.
pub const MAX_JSON_DEPTH: usize = 32;

/// Checks that `bytes` nests arrays and objects at most `max` deep, without parsing: brackets
/// inside strings (escapes included) are skipped. Returns the depth reached when it is over.
/// The scan is linear and allocates nothing; malformed JSON is left to the parser.
pub fn check_json_depth(bytes: &[u8], max: usize) -> Result<(), usize> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in bytes {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return Err(depth);
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// Parses a request body that must be a JSON object: the depth bound first (400), then the
/// parser (400 for malformed JSON or invalid UTF-8), then the object check (422).
pub fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, ApiError> {
    if let Err(depth) = check_json_depth(bytes, MAX_JSON_DEPTH) {
        return Err(ApiError::MalformedJson(format!(
            "arrays and objects nest deeper than {MAX_JSON_DEPTH} levels (reached {depth})"
        )));
    }
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(ApiError::NotAnObject(json_kind(&other))),
        Err(e) => Err(ApiError::MalformedJson(e.to_string())),
    }
}

/// Deserialises a typed request from a parsed object; a wrong field is a 422 naming it.
pub fn typed<T: DeserializeOwned>(map: Map<String, Value>) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(Value::Object(map)).map_err(|e| {
        let field = e.path().to_string();
        ApiError::InvalidField {
            field,
            message: e.into_inner().to_string(),
        }
    })
}

/// The request decoder of `POST /v1/embeddings`, as a pure function (the fuzz target
/// `decode_request` drives it): body bytes → [`EmbeddingsRequest`], or the error the client
/// gets. `dialect` starts as the headers' dialect and becomes the body's once the body parses,
/// so an error after that point is shaped for the dialect the body speaks.
pub fn decode_request(
    bytes: &[u8],
    headers: &HeaderMap,
    dialect: &mut Dialect,
) -> Result<EmbeddingsRequest, ApiError> {
    *dialect = Dialect::from_headers(headers);
    let map = parse_object(bytes)?;
    *dialect = Dialect::from_request(headers, &map);
    typed(map)
}

/// `POST /v1/embeddings` (and `/embeddings`): the Jina and OpenAI request in one.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct EmbeddingsRequest {
    /// Model name. Accepted for compatibility and not checked: the server serves one model, and
    /// the response names it.
    #[serde(default)]
    #[schema(example = "jina-embeddings-v3")]
    pub model: Option<String>,
    /// The texts: a string, an array of strings, or `{"text": …}` objects (alone or in an
    /// array). An empty string is valid. Token-id arrays are refused.
    #[serde(default)]
    pub input: Option<Input>,
    /// Task adapter: `retrieval.query`, `retrieval.passage`, `separation`, `classification`,
    /// `text-matching`, or `none` for the base weights. Default: the server's `--default-task`
    /// (`text-matching` unless changed).
    #[serde(default)]
    #[schema(example = "retrieval.query")]
    pub task: Option<String>,
    /// Matryoshka size: keep the first `dimensions` values (1 to the hidden size), then
    /// normalise. Default: all.
    #[serde(default, deserialize_with = "integer")]
    #[schema(minimum = 1, example = 256)]
    pub dimensions: Option<i64>,
    /// Jina: `true` embeds all inputs in one sequence and pools each input's span;
    /// `"long"` (beyond the hosted API) also lets that sequence exceed the token limit, in
    /// overlapping windows. Default false.
    #[serde(default)]
    pub late_chunking: Option<LateChunkingField>,
    /// Overlap in tokens of the windows of `late_chunking: "long"`. Default 512.
    #[serde(default, deserialize_with = "integer")]
    #[schema(example = 512)]
    pub late_chunking_overlap: Option<usize>,
    /// Jina: `float`, `base64`, `binary`, `ubinary`, or a list of them (each item's
    /// `embedding` is then an object keyed by type). Alias `encoding_type`. Default `float`.
    #[serde(default, alias = "encoding_type")]
    #[schema(value_type = Option<EmbeddingTypesSchema>)]
    pub embedding_type: Option<EmbeddingTypes>,
    /// OpenAI: `float` or `base64` (the official SDK sends `base64` unless told otherwise).
    /// Its presence makes the request an OpenAI-dialect request.
    #[serde(default)]
    pub encoding_format: Option<EncodingFormat>,
    /// Jina: L2-normalise the embeddings. Default true.
    #[serde(default)]
    pub normalized: Option<bool>,
    /// Jina: cut inputs over the token limit instead of refusing them. Default false.
    #[serde(default)]
    pub truncate: Option<bool>,
    /// OpenAI: an end-user id. Accepted and ignored.
    #[serde(default)]
    pub user: Option<String>,
}

/// An integer field, or null. JSON Schema's `integer` (and JavaScript, which has no integer type)
/// counts `34.0` as the integer 34, so a number without a fractional part is accepted whatever
/// its spelling; anything else names what it is.
pub(crate) fn integer<'de, D: Deserializer<'de>, T: TryFrom<i64>>(
    d: D,
) -> Result<Option<T>, D::Error> {
    let value = match Value::deserialize(d)? {
        Value::Null => return Ok(None),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => Some(i),
            (None, Some(f)) if f.fract() == 0.0 && f.abs() < 9.0e15 => Some(f as i64),
            _ => None,
        }
        .ok_or_else(|| D::Error::custom(format!("must be an integer, found {n}")))?,
        other => {
            return Err(D::Error::custom(format!(
                "must be an integer, found {} {other}",
                json_kind(&other)
            )))
        }
    };
    T::try_from(value)
        .map(Some)
        .map_err(|_| D::Error::custom(format!("{value} is out of range")))
}

/// The `input` field.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(untagged)]
pub enum Input {
    /// One text (a string or `{"text": …}`).
    One(TextItem),
    /// Several texts.
    Many(Vec<TextItem>),
}

/// One text: a string or `{"text": …}`.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(untagged)]
pub enum TextItem {
    /// A plain string.
    Text(String),
    /// Jina's object form.
    Object(TextObject),
}

/// `{"text": …}`.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct TextObject {
    /// The text.
    pub text: String,
}

impl Input {
    /// The texts, in order.
    pub fn into_texts(self) -> Vec<String> {
        let text = |item: TextItem| match item {
            TextItem::Text(s) => s,
            TextItem::Object(o) => o.text,
        };
        match self {
            Input::One(item) => vec![text(item)],
            Input::Many(items) => items.into_iter().map(text).collect(),
        }
    }

    fn from_value(value: Value) -> Result<Input, String> {
        match value {
            Value::Array(items) => {
                let mut texts = Vec::with_capacity(items.len());
                for (i, item) in items.into_iter().enumerate() {
                    if let Value::Array(inner) = &item {
                        if inner.iter().all(Value::is_number) {
                            return Err(token_ids_refused());
                        }
                    }
                    texts.push(text_item(item).map_err(|e| format!("item {i} {e}"))?);
                }
                Ok(Input::Many(texts))
            }
            Value::Null => Err("must not be null".into()),
            other => text_item(other)
                .map(Input::One)
                .map_err(|e| format!("value {e}")),
        }
    }
}

fn token_ids_refused() -> String {
    "token-id arrays are not supported: send the texts themselves (a string or an array of strings)"
        .into()
}

pub(crate) fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn text_item(value: Value) -> Result<TextItem, String> {
    match value {
        Value::String(s) => Ok(TextItem::Text(s)),
        Value::Object(mut map) => match map.remove("text") {
            Some(Value::String(text)) => Ok(TextItem::Object(TextObject { text })),
            Some(other) => Err(format!(
                "has a `text` that is {}, not a string",
                json_kind(&other)
            )),
            None if map.contains_key("image") => {
                Err("is an image: jina-embeddings-v3 embeds text only; send {\"text\": …}".into())
            }
            None => Err("is an object without `text`: send a string or {\"text\": …}".into()),
        },
        Value::Number(_) => Err(token_ids_refused()),
        other => Err(format!(
            "must be a string or {{\"text\": …}}, found {}",
            json_kind(&other)
        )),
    }
}

impl<'de> Deserialize<'de> for Input {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Input::from_value(Value::deserialize(d)?).map_err(D::Error::custom)
    }
}

/// The `embedding_type` field: one type or a list.
#[derive(Debug, Clone, PartialEq)]
pub enum EmbeddingTypes {
    /// One type: `embedding` is that encoding.
    One(EmbeddingType),
    /// A list: `embedding` is an object keyed by type.
    Many(Vec<EmbeddingType>),
}

/// The `embedding_type` field: one type or a list (schema of [`EmbeddingTypes`]).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(untagged)]
pub enum EmbeddingTypesSchema {
    /// One type: `embedding` is that encoding.
    One(EmbeddingTypeName),
    /// A list: `embedding` is an object keyed by type.
    Many(Vec<EmbeddingTypeName>),
}

/// Names of the output encodings (schema only).
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum EmbeddingTypeName {
    /// JSON numbers.
    Float,
    /// Base64 of the little-endian float32 bytes.
    Base64,
    /// Sign bits packed MSB-first, minus 128 (int8).
    Binary,
    /// Sign bits packed MSB-first (uint8).
    Ubinary,
}

impl<'de> Deserialize<'de> for EmbeddingTypes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let parse = |v: &Value| -> Result<EmbeddingType, String> {
            match v {
                Value::String(s) => s.parse::<EmbeddingType>().map_err(|e| e.to_string()),
                other => Err(format!(
                    "must be float, base64, binary or ubinary (or a list of them), found {}",
                    json_kind(other)
                )),
            }
        };
        match Value::deserialize(d)? {
            Value::Array(items) => {
                if items.is_empty() {
                    return Err(D::Error::custom("the list of types is empty"));
                }
                let mut types: Vec<EmbeddingType> = Vec::with_capacity(items.len());
                for item in &items {
                    let t = parse(item).map_err(D::Error::custom)?;
                    if !types.contains(&t) {
                        types.push(t);
                    }
                }
                Ok(EmbeddingTypes::Many(types))
            }
            other => parse(&other)
                .map(EmbeddingTypes::One)
                .map_err(D::Error::custom),
        }
    }
}

/// The OpenAI `encoding_format` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum EncodingFormat {
    /// JSON numbers.
    Float,
    /// Base64 of the little-endian float32 bytes.
    Base64,
}

impl<'de> Deserialize<'de> for EncodingFormat {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::String(s) if s == "float" => Ok(EncodingFormat::Float),
            Value::String(s) if s == "base64" => Ok(EncodingFormat::Base64),
            Value::String(s) => Err(D::Error::custom(format!(
                "{s:?} is not supported; accepted values are float and base64 (embedding_type also accepts binary and ubinary)"
            ))),
            other => Err(D::Error::custom(format!("must be \"float\" or \"base64\", found {}", json_kind(&other)))),
        }
    }
}

/// The `late_chunking` field: a boolean, or `"long"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(untagged)]
pub enum LateChunkingField {
    /// `true` or `false`.
    Flag(bool),
    /// `"long"`: late chunking in overlapping windows, for inputs over the token limit.
    #[schema(value_type = String, example = "long")]
    Long(LongMarker),
}

/// The string `"long"` (schema helper).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename = "long")]
pub struct LongMarker;

impl<'de> Deserialize<'de> for LateChunkingField {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::Bool(b) => Ok(LateChunkingField::Flag(b)),
            Value::String(s) if s == "long" => Ok(LateChunkingField::Long(LongMarker)),
            other => Err(D::Error::custom(format!(
                "must be true, false or \"long\", found {other}"
            ))),
        }
    }
}

impl LateChunkingField {
    /// The engine's mode, with `overlap` for `"long"`.
    pub fn mode(field: Option<LateChunkingField>, overlap: Option<usize>) -> LateChunking {
        match field {
            None | Some(LateChunkingField::Flag(false)) => LateChunking::Off,
            Some(LateChunkingField::Flag(true)) => LateChunking::On,
            Some(LateChunkingField::Long(_)) => LateChunking::Long {
                overlap: overlap.unwrap_or(jina_engine::DEFAULT_LONG_OVERLAP),
            },
        }
    }
}

/// The response of `POST /v1/embeddings`, identical in both dialects.
#[derive(Debug, Serialize, ToSchema)]
pub struct EmbeddingsResponse {
    /// Always `list`.
    #[schema(example = "list")]
    pub object: &'static str,
    /// The served model name.
    #[schema(example = "jina-embeddings-v3")]
    pub model: String,
    /// One item per input, in input order.
    pub data: Vec<EmbeddingItem>,
    /// Tokens fed to the model.
    pub usage: Usage,
}

/// One embedding.
#[derive(Debug, Serialize, ToSchema)]
pub struct EmbeddingItem {
    /// Always `embedding`.
    #[schema(example = "embedding")]
    pub object: &'static str,
    /// Position of the input in the request.
    pub index: usize,
    /// The embedding in the requested encoding, or an object keyed by type when a list of
    /// types was asked for.
    #[schema(value_type = EmbeddingValueSchema)]
    pub embedding: EmbeddingValue,
}

/// An embedding in one encoding, or in several keyed by type.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum EmbeddingValue {
    /// One encoding.
    One(Encoded),
    /// Several, keyed by type name.
    ByType(BTreeMap<&'static str, Encoded>),
}

/// Schema of [`EmbeddingValue`].
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum EmbeddingValueSchema {
    /// One encoding.
    One(EncodedSchema),
    /// Several, keyed by type name (`float`, `base64`, `binary`, `ubinary`).
    ByType(BTreeMap<String, EncodedSchema>),
}

/// One encoding of an embedding (schema of the engine's `Encoded`).
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum EncodedSchema {
    /// `float`: numbers.
    Float(Vec<f32>),
    /// `base64`: little-endian float32 bytes in base64.
    Base64(String),
    /// `binary` (int8) or `ubinary` (uint8): packed sign bits.
    Bits(Vec<i16>),
}

/// Token counts of a request: `<s>`, `</s>` and the task prefix included.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Usage {
    /// Tokens fed to the model.
    pub prompt_tokens: usize,
    /// Same as `prompt_tokens` (embedding models produce no tokens).
    pub total_tokens: usize,
}

/// `POST /tokenize`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct TokenizeRequest {
    /// A string, an array of strings, or `{"text": …}` objects.
    #[serde(default)]
    pub input: Option<Input>,
    /// Task whose instruction prefix is prepended (as for embeddings). Default: the server's
    /// default task.
    #[serde(default)]
    pub task: Option<String>,
}

/// The response of `POST /tokenize`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TokenizeResponse {
    /// The task whose prefix was applied.
    pub task: String,
    /// The instruction prefix prepended to each input ("" for none).
    pub prefix: String,
    /// The token limit of one sequence, `<s>` and `</s>` included.
    pub max_tokens: usize,
    /// One item per input.
    pub data: Vec<TokenizedItem>,
    /// Sum of the counts.
    pub total_tokens: usize,
}

/// The tokens of one input, exactly as the model sees them: `<s>`, prefix, text, `</s>`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TokenizedItem {
    /// Position of the input.
    pub index: usize,
    /// Token ids.
    pub ids: Vec<u32>,
    /// Token pieces.
    pub tokens: Vec<String>,
    /// Number of tokens.
    pub count: usize,
}

/// The response of `GET /v1/models` (OpenAI's list format with extra fields).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ModelList {
    /// Always `list`.
    pub object: String,
    /// The served model.
    pub data: Vec<ModelCard>,
}

/// The served model.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ModelCard {
    /// The served model name.
    pub id: String,
    /// Always `model`.
    pub object: String,
    /// Unix time the server loaded the model.
    pub created: u64,
    /// Always `jina-embeddings-rs`.
    pub owned_by: String,
    /// Full embedding size.
    pub dimensions: usize,
    /// Trained Matryoshka sizes.
    pub matryoshka_dimensions: Vec<usize>,
    /// Token limit of one sequence, `<s>` and `</s>` included.
    pub max_tokens: usize,
    /// Accepted task names (`none` = base weights).
    pub tasks: Vec<String>,
    /// Task used when a request names none.
    pub default_task: String,
    /// Precision the linear layers run in (`f32` = the official numbers, `bf16` or `int8`):
    /// what the CPU resolved `--precision` to.
    pub precision: String,
    /// Precision asked for with `--precision`.
    pub requested_precision: String,
    /// Instruction-set level the kernels use (`avx2`, `avx512bf16`, `amx`, `neon`, …).
    pub isa: String,
    /// The kernels that run.
    pub kernels: Kernels,
    /// Why what runs differs from what was asked for, one line per operation (empty: nothing).
    pub precision_fallbacks: Vec<String>,
    /// Where the encoder runs.
    pub device: DeviceCard,
}

/// The device a model runs on, as resolved at load (`--device`).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DeviceCard {
    /// `cpu` or `gpu`: what runs the encoder's blocks.
    pub kind: String,
    /// What `--device` asked for: `cpu`, `gpu` or `auto`.
    pub requested: String,
    /// The GPU adapter's name (`NVIDIA L4`, `Apple M2`, `llvmpipe (…)`); absent on the CPU.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adapter: Option<String>,
    /// The API wgpu drives the GPU through: `Vulkan`, `Metal`, `Dx12`; absent on the CPU.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// `discrete`, `integrated`, `virtual` or `software`; absent on the CPU.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adapter_kind: Option<String>,
    /// Tokens one forward pass on the device holds; absent on the CPU.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_batch_tokens: Option<usize>,
    /// What each operation runs on and in which precision, on a GPU.
    pub operations: Vec<String>,
    /// Why the device differs from what was asked for, one line each (empty: nothing).
    pub fallbacks: Vec<String>,
}

/// The kernels a model runs, as resolved at load.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Kernels {
    /// The linear layers' kernel and weight storage.
    pub linear: String,
    /// The attention kernel and its precision.
    pub attention: String,
}

/// The response of `GET /health`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `ok`, `loading` or `shutting_down`.
    pub status: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(json: &str) -> Result<EmbeddingsRequest, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[test]
    fn input_shapes() {
        let texts = |json: &str| req(json).unwrap().input.unwrap().into_texts();
        assert_eq!(texts(r#"{"input": "a"}"#), vec!["a"]);
        assert_eq!(texts(r#"{"input": ["a", ""]}"#), vec!["a", ""]);
        assert_eq!(texts(r#"{"input": {"text": "a"}}"#), vec!["a"]);
        assert_eq!(texts(r#"{"input": [{"text": "a"}, "b"]}"#), vec!["a", "b"]);
        assert!(req(r#"{"input": []}"#)
            .unwrap()
            .input
            .unwrap()
            .into_texts()
            .is_empty());
        let err = req(r#"{"input": ["a", 3]}"#).unwrap_err().to_string();
        assert!(err.contains("token-id arrays are not supported"), "{err}");
        let err = req(r#"{"input": [[1, 2]]}"#).unwrap_err().to_string();
        assert!(err.contains("token-id arrays"), "{err}");
        let err = req(r#"{"input": ["a", true]}"#).unwrap_err().to_string();
        assert!(
            err.contains("item 1 must be a string or {\"text\": …}, found a boolean"),
            "{err}"
        );
        let err = req(r#"{"input": [{"image": "x"}]}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("image"), "{err}");
    }

    #[test]
    fn types_and_flags() {
        let r = req(r#"{"input": "a", "encoding_type": ["ubinary", "float", "ubinary"], "late_chunking": "long", "unknown": 1}"#)
            .unwrap();
        assert_eq!(
            r.embedding_type,
            Some(EmbeddingTypes::Many(vec![
                EmbeddingType::Ubinary,
                EmbeddingType::Float
            ]))
        );
        assert_eq!(
            LateChunkingField::mode(r.late_chunking, None),
            LateChunking::Long { overlap: 512 }
        );
        let err = req(r#"{"input": "a", "embedding_type": "int8"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"int8\" is not supported"), "{err}");
        let err = req(r#"{"input": "a", "encoding_format": "binary"}"#)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("accepted values are float and base64"),
            "{err}"
        );
        let err = req(r#"{"input": "a", "late_chunking": 1}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("must be true, false or \"long\""), "{err}");
        // JSON Schema's integers: 34.0 is 34; 34.5, "34" and -1 for a count are not.
        assert_eq!(
            req(r#"{"input": "a", "dimensions": 34.0}"#)
                .unwrap()
                .dimensions,
            Some(34)
        );
        assert_eq!(
            req(r#"{"input": "a", "late_chunking_overlap": 8.0}"#)
                .unwrap()
                .late_chunking_overlap,
            Some(8)
        );
        assert!(req(r#"{"input": "a", "dimensions": 34.5}"#)
            .unwrap_err()
            .to_string()
            .contains("must be an integer, found 34.5"));
        assert!(req(r#"{"input": "a", "dimensions": "34"}"#)
            .unwrap_err()
            .to_string()
            .contains(r#"found a string "34""#));
        assert!(req(r#"{"input": "a", "late_chunking_overlap": -1}"#)
            .unwrap_err()
            .to_string()
            .contains("-1 is out of range"));
    }
}
