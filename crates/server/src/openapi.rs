//! The OpenAPI document as the server enforces it.
//!
//! utoipa generates the document from the [`crate::api`] types and the handlers' `#[utoipa::path]`
//! attributes ([`crate::routes::ApiDoc`]). What the types cannot say is added here, in one place,
//! so that a schema-driven fuzzer (`scripts/schemathesis.sh`) finds the document and the server
//! in agreement: every request the schema allows is accepted, every one it forbids is refused.
//!
//! * Always: `input` is required and holds at least one text (decisions.md: an empty request is
//!   an error, an empty string is not); a list of `embedding_type`s is not empty;
//!   `late_chunking`'s string form is only `"long"`; `encoding_format` and `embedding_type`
//!   together must name the same single type; the untagged encodings of an embedding overlap
//!   (`[1, -2]` is both floats and bits), so they are `anyOf`, not `oneOf`.
//! * From the served model and limits ([`Served`]): the accepted `task` names, the largest
//!   `dimensions`, the largest `late_chunking_overlap` and the most inputs per request. The
//!   document without a model (`docs/openapi.json`, or while the model loads) uses the real
//!   model's values.
//! * `/invocations` (SageMaker): our request without a `data` field, or SageMaker's (which has
//!   one): exclusive branches, as the server tells them apart.
//! * Security per route as the server enforces it: with API keys, every route but `/health` and
//!   `/metrics` declares `bearer` and a 401; without keys nothing is declared.

use serde_json::{json, Value};
use utoipa::OpenApi;

use crate::routes::ApiDoc;

/// What the served document depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    /// Whether API keys are configured.
    pub keys: bool,
    /// Accepted task names (`none` included).
    pub tasks: Vec<String>,
    /// Largest `dimensions` (the hidden size).
    pub hidden_size: usize,
    /// Token limit of one sequence.
    pub max_tokens: usize,
    /// Most inputs in one request.
    pub max_inputs: usize,
}

impl Served {
    /// The real jina-embeddings-v3 with the default limits and API keys: what
    /// `docs/openapi.json` describes.
    pub fn reference() -> Served {
        Served {
            keys: true,
            tasks: [
                "retrieval.query",
                "retrieval.passage",
                "separation",
                "classification",
                "text-matching",
                "none",
            ]
            .map(String::from)
            .to_vec(),
            hidden_size: 1024,
            max_tokens: 8194,
            max_inputs: crate::ServerLimits::DEFAULT_MAX_INPUTS_PER_REQUEST,
        }
    }
}

/// The document for `served`.
pub fn document(served: &Served) -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_else(|_| json!({}));
    let schemas = &mut doc["components"]["schemas"];

    // `input`: required, not null, one text or a non-empty list of at most max_inputs.
    for request in ["EmbeddingsRequest", "TokenizeRequest"] {
        let schema = &mut schemas[request];
        let description = schema["properties"]["input"]["oneOf"][1]["description"].clone();
        schema["properties"]["input"] =
            json!({"$ref": "#/components/schemas/Input", "description": description});
        schema["required"] = json!(["input"]);
        let tasks: Vec<Value> = served
            .tasks
            .iter()
            .map(|t| json!(t))
            .chain([Value::Null])
            .collect();
        schema["properties"]["task"]["enum"] = Value::Array(tasks);
    }
    for branch in as_array(&mut schemas["Input"]["oneOf"]) {
        if branch["type"] == "array" {
            branch["minItems"] = json!(1);
            branch["maxItems"] = json!(served.max_inputs);
        }
    }
    for branch in as_array(&mut schemas["EmbeddingTypesSchema"]["oneOf"]) {
        if branch["type"] == "array" {
            branch["minItems"] = json!(1);
        }
    }
    for branch in as_array(&mut schemas["LateChunkingField"]["oneOf"]) {
        if branch["type"] == "string" {
            branch["enum"] = json!(["long"]);
        }
    }
    for name in ["EncodedSchema", "EmbeddingValueSchema"] {
        if let Some(branches) = schemas[name]
            .as_object_mut()
            .and_then(|o| o.remove("oneOf"))
        {
            schemas[name]["anyOf"] = branches;
        }
    }
    let request = &mut schemas["EmbeddingsRequest"];
    request["properties"]["dimensions"]["maximum"] = json!(served.hidden_size);
    request["properties"]["late_chunking_overlap"]["maximum"] = json!(served.max_tokens / 2);
    // Both output fields at once only when they agree on one type (routes::outputs).
    // `properties` constrains only fields that are present: this is "absent or null".
    let absent_or_null = |field: &str| json!({"properties": {field: {"type": "null"}}});
    let same = |t: &str| json!({"properties": {"embedding_type": {"const": t}, "encoding_format": {"const": t}}});
    request["anyOf"] = json!([
        absent_or_null("embedding_type"),
        absent_or_null("encoding_format"),
        same("float"),
        same("base64")
    ]);

    // SageMaker (`crate::sagemaker`): at least one and at most max_inputs texts, the same tasks
    // and dimensions; `/invocations` takes our body (without `data`, which makes it SageMaker's)
    // or SageMaker's, and answers in the matching form.
    let tasks: Vec<Value> = served
        .tasks
        .iter()
        .map(|t| json!(t))
        .chain([Value::Null])
        .collect();
    let sagemaker = &mut schemas["SageMakerRequest"];
    sagemaker["properties"]["data"]["minItems"] = json!(1);
    sagemaker["properties"]["data"]["maxItems"] = json!(served.max_inputs);
    for branch in as_array(&mut schemas["SageMakerId"]["oneOf"]) {
        if branch["type"] == "integer" {
            branch["minimum"] = json!(-(crate::sagemaker::MAX_SAFE_ID as i64));
            branch["maximum"] = json!(crate::sagemaker::MAX_SAFE_ID as i64);
        }
    }
    let parameters = &mut schemas["SageMakerParameters"]["properties"];
    parameters["task"]["enum"] = Value::Array(tasks);
    parameters["dimensions"]["maximum"] = json!(served.hidden_size);
    let invocations = &mut doc["paths"]["/invocations"]["post"];
    invocations["requestBody"]["content"]["application/json"]["schema"] = json!({"oneOf": [
        {"allOf": [
            {"$ref": "#/components/schemas/EmbeddingsRequest"},
            {"not": {"required": ["data"]}}
        ]},
        {"$ref": "#/components/schemas/SageMakerRequest"}
    ]});
    invocations["responses"]["200"]["content"]["application/json"]["schema"] = json!({"anyOf": [
        {"$ref": "#/components/schemas/EmbeddingsResponse"},
        {"$ref": "#/components/schemas/SageMakerResponse"}
    ]});

    if !served.keys {
        if let Some(components) = doc["components"].as_object_mut() {
            components.remove("securitySchemes");
        }
        for path in as_object_values(&mut doc["paths"]) {
            for operation in as_object_values(path) {
                if let Some(operation) = operation.as_object_mut() {
                    operation.remove("security");
                    if let Some(responses) = operation
                        .get_mut("responses")
                        .and_then(Value::as_object_mut)
                    {
                        responses.remove("401");
                    }
                }
            }
        }
    }
    doc
}

fn as_array(value: &mut Value) -> impl Iterator<Item = &mut Value> {
    value.as_array_mut().into_iter().flatten()
}

fn as_object_values(value: &mut Value) -> impl Iterator<Item = &mut Value> {
    value
        .as_object_mut()
        .into_iter()
        .flat_map(|o| o.values_mut())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn security_follows_the_keys() {
        let with = document(&Served::reference());
        assert_eq!(
            with["paths"]["/tokenize"]["post"]["security"],
            json!([{"bearer": []}])
        );
        assert!(with["paths"]["/tokenize"]["post"]["responses"]["401"].is_object());
        assert!(with["paths"]["/health"]["get"]["security"].is_null());
        let without = document(&Served {
            keys: false,
            ..Served::reference()
        });
        let text = without.to_string();
        assert!(
            !text.contains("bearer") && !text.contains("\"401\""),
            "{text}"
        );
    }

    #[test]
    fn input_is_required_and_not_empty() {
        let doc = document(&Served {
            max_inputs: 7,
            ..Served::reference()
        });
        let schemas = &doc["components"]["schemas"];
        assert_eq!(schemas["EmbeddingsRequest"]["required"], json!(["input"]));
        assert_eq!(schemas["TokenizeRequest"]["required"], json!(["input"]));
        let list = &schemas["Input"]["oneOf"][1];
        assert_eq!(
            (list["minItems"].clone(), list["maxItems"].clone()),
            (json!(1), json!(7))
        );
        assert_eq!(
            schemas["EmbeddingTypesSchema"]["oneOf"][1]["minItems"],
            json!(1)
        );
        assert_eq!(
            schemas["EmbeddingsRequest"]["properties"]["dimensions"]["maximum"],
            json!(1024)
        );
    }
}
