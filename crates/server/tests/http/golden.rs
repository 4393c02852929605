//! Every case of the official outputs (`golden-small.json`) through HTTP, as floats and as
//! base64, in the Jina and the OpenAI dialect, within the fixtures' tolerance (2e-5 per
//! component for normalised vectors, 2e-5 × ‖v‖ otherwise).

use jina_engine::{output, EmbedRequest, EmbeddingType, Encoded, LateChunking};
use serde_json::{json, Value};

use crate::common::{
    embeddings_of, get_with, golden, max_abs_diff, model, norm, post, shared, GoldenCase,
};

fn request(case: &GoldenCase) -> Value {
    let mut body = json!({
        "model": "jina-embeddings-v3",
        "input": case.input,
        // The golden `null` task is the official encode() without a task: base weights.
        "task": case.task.clone().unwrap_or_else(|| "none".into()),
        "normalized": case.normalized,
        "late_chunking": case.late_chunking,
    });
    if let Some(d) = case.dimensions {
        body["dimensions"] = json!(d);
    }
    body
}

fn check(n: usize, label: &str, case: &GoldenCase, body: &Value, failures: &mut Vec<String>) {
    let got = embeddings_of(body);
    assert_eq!(
        got.len(),
        case.embeddings.len(),
        "case {n} {label}: number of outputs"
    );
    for (i, (ours, theirs)) in got.iter().zip(&case.embeddings).enumerate() {
        let scale = if case.normalized { 1.0 } else { norm(theirs) };
        let diff = max_abs_diff(ours, theirs);
        if diff > 2e-5 * scale {
            failures.push(format!(
                "case {n} {label} input {i}: max |diff| {diff:e} > {:e}",
                2e-5 * scale
            ));
        }
    }
    let usage = &body["usage"];
    assert_eq!(
        usage["prompt_tokens"], usage["total_tokens"],
        "case {n} {label}: usage"
    );
    if let Some(tokens) = &case.tokens {
        assert_eq!(
            usage["total_tokens"],
            tokens.iter().sum::<usize>(),
            "case {n} {label}: usage"
        );
    }
    if let Some(total) = case.total_tokens {
        assert_eq!(
            usage["total_tokens"], total,
            "case {n} {label}: late-chunking usage"
        );
    }
    assert_eq!(body["object"], "list");
    assert_eq!(body["model"], "jina-embeddings-v3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_golden_case_as_float_and_base64_in_both_dialects() {
    let golden = golden();
    assert_eq!((golden.variant.as_str(), golden.seed), ("small", 1));
    let server = shared().await;
    let url = format!("{}/v1/embeddings", server.url);
    let mut failures = Vec::new();
    for (n, case) in golden.cases.iter().enumerate() {
        // Jina, default encoding (float).
        let reply = post(&url, &request(case)).await;
        assert_eq!(reply.status, 200, "case {n}: {}", reply.text);
        assert!(reply.body["data"][0]["embedding"].is_array());
        check(n, "jina float", case, &reply.body, &mut failures);

        // Jina, base64 (through the alias encoding_type on every other case).
        let mut body = request(case);
        let field = if n % 2 == 0 {
            "embedding_type"
        } else {
            "encoding_type"
        };
        body[field] = json!("base64");
        let reply = post(&url, &body).await;
        assert_eq!(reply.status, 200, "case {n}: {}", reply.text);
        assert!(reply.body["data"][0]["embedding"].is_string());
        check(n, "jina base64", case, &reply.body, &mut failures);

        // OpenAI dialect (as the SDK sends it, with Jina's fields as extra_body), on /embeddings.
        for format in ["base64", "float"] {
            let mut body = request(case);
            body["encoding_format"] = json!(format);
            let reply = post(&format!("{}/embeddings", server.url), &body).await;
            assert_eq!(reply.status, 200, "case {n}: {}", reply.text);
            check(
                n,
                &format!("openai {format}"),
                case,
                &reply.body,
                &mut failures,
            );
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// `binary`, `ubinary` and a list of types equal the engine's encodings of the same vectors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_encodings_and_type_lists_match_the_engine() {
    let server = shared().await;
    let inputs = vec![
        "What is the capital of France?".to_string(),
        String::new(),
        "Paris".to_string(),
    ];
    let expected = model()
        .embed(&EmbedRequest {
            inputs: inputs.clone(),
            task: Some("retrieval.passage".into()),
            dimensions: Some(60),
            normalized: true,
            late_chunking: LateChunking::Off,
            truncate: false,
        })
        .expect("engine embed");
    let body = json!({
        "input": inputs,
        "task": "retrieval.passage",
        "dimensions": 60,
        "embedding_type": ["binary", "ubinary", "float", "base64"],
    });
    let reply = post(&format!("{}/v1/embeddings", server.url), &body).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let data = reply.body["data"].as_array().expect("data");
    assert_eq!(data.len(), 3);
    for (i, item) in data.iter().enumerate() {
        let v = &expected.embeddings[i];
        let emb = &item["embedding"];
        let Encoded::Binary(binary) = output::encode(v, EmbeddingType::Binary) else {
            panic!("binary")
        };
        let Encoded::Ubinary(ubinary) = output::encode(v, EmbeddingType::Ubinary) else {
            panic!("ubinary")
        };
        assert_eq!(emb["binary"], json!(binary), "input {i} binary");
        assert_eq!(emb["ubinary"], json!(ubinary), "input {i} ubinary");
        assert_eq!(ubinary.len(), 8, "60 dimensions pack into 8 bytes");
        assert!(max_abs_diff(&crate::common::floats(&emb["float"]), v) <= 1e-6);
        assert!(
            max_abs_diff(
                &crate::common::decode_base64(emb["base64"].as_str().expect("b64")),
                v
            ) <= 1e-6
        );
    }
    // The empty string embeds `<s></s>`: a real, normalised vector.
    assert!((norm(&expected.embeddings[1]) - 1.0).abs() < 1e-5);
    // One type alone: the embedding itself, not an object.
    let reply = post(
        &format!("{}/v1/embeddings", server.url),
        &json!({"input": "x", "embedding_type": "ubinary"}),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(
        reply.body["data"][0]["embedding"].as_array().map(Vec::len),
        Some(16)
    );
}

/// `--precision bf16` is opt-in, `/v1/models` reports what runs (bf16 where the CPU has a bf16
/// dot product, else f32 arithmetic on bf16 weights, with the reason), and the vectors stay
/// within a cosine of 0.999 of every golden vector (the fixtures' bound for bf16).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bf16_precision_is_opt_in_reported_as_resolved_and_close_to_the_golden_outputs() {
    let default: Value = get_with(&format!("{}/v1/models", shared().await.url), &[])
        .await
        .body;
    assert_eq!(default["data"][0]["precision"], "f32");
    assert_eq!(default["data"][0]["requested_precision"], "f32");
    assert_eq!(default["data"][0]["precision_fallbacks"], json!([]));

    let host = jina_engine::Cpu::detected();
    // The CPU as it is, and capped to AVX2 (no bf16 dot product) where it has more: both ways
    // of resolving bf16 run wherever the CPU allows them.
    let mut caps = vec![None];
    if host.level() > jina_engine::Isa::Avx2 && host.avx2 {
        caps.push(Some(jina_engine::Isa::Avx2));
    }
    for cap in caps {
        let mut config = crate::common::config();
        config.precision = jina_engine::Precision::Bf16;
        config.max_isa = cap;
        let server = crate::common::TestServer::in_process(config);
        let models: Value = get_with(&format!("{}/v1/models", server.url), &[])
            .await
            .body;
        let card = &models["data"][0];
        let cpu = cap.map_or(host, |isa| host.capped(isa));
        let has_bf16_dot = cpu.avx512_bf16;
        assert_eq!(card["requested_precision"], "bf16", "{cap:?}");
        assert_eq!(
            card["precision"],
            if has_bf16_dot { "bf16" } else { "f32" },
            "{cap:?}: {card}"
        );
        assert_eq!(card["isa"], cpu.level().name(), "{cap:?}");
        let fallbacks = card["precision_fallbacks"].as_array().expect("fallbacks");
        let linear_fallback = fallbacks
            .iter()
            .filter_map(Value::as_str)
            .any(|f| f.starts_with("bf16: ") && f.contains("f32 arithmetic"));
        assert_eq!(linear_fallback, !has_bf16_dot, "{cap:?}: {card}");
        assert!(card["kernels"]["linear"].is_string() && card["kernels"]["attention"].is_string());
        let url = format!("{}/v1/embeddings", server.url);
        let mut worst = 1f32;
        for case in golden().cases.iter().filter(|c| c.normalized) {
            let reply = post(&url, &request(case)).await;
            assert_eq!(reply.status, 200, "{}", reply.text);
            for (ours, theirs) in embeddings_of(&reply.body).iter().zip(&case.embeddings) {
                let dot: f32 = ours.iter().zip(theirs).map(|(a, b)| a * b).sum();
                worst = worst.min(dot / (norm(ours) * norm(theirs)).max(1e-12));
            }
        }
        assert!(worst >= 0.999, "{cap:?}: worst cosine {worst}");
        server
            .stop(std::time::Duration::from_secs(10))
            .await
            .expect("clean stop");
    }
}
