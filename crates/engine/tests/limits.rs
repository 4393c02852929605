//! The token limit (8194 with `<s>` and `</s>`), truncation and `dimensions` bounds.

mod common;

use common::small_model;
use jina_engine::{EmbedRequest, Error, LateChunking};

/// A text of `n` content tokens: "▁world" is one piece of the XLM-R vocabulary.
fn words(n: usize) -> String {
    vec!["world"; n].join(" ")
}

#[test]
fn an_8194_token_input_runs() {
    let model = small_model();
    let request = EmbedRequest::new(vec![words(8192)]).with_task("none");
    assert_eq!(model.plan(&request).unwrap().sequences[0].ids.len(), 8194);
    let result = model.embed(&request).unwrap();
    assert_eq!(result.total_tokens, 8194);
    assert!((common::norm(&result.embeddings[0]) - 1.0).abs() < 1e-5);
}

#[test]
fn an_8195_token_input_is_rejected_unless_truncate() {
    let model = small_model();
    let mut request = EmbedRequest::new(vec!["short".into(), words(8193)]).with_task("none");
    match model.embed(&request) {
        Err(Error::InputTooLong {
            index: 1,
            tokens: 8195,
            limit: 8194,
        }) => {}
        other => panic!("expected InputTooLong, got {other:?}"),
    }
    let message = model.embed(&request).unwrap_err().to_string();
    assert!(
        message.contains("input[1]") && message.contains("8195") && message.contains("8194"),
        "{message}"
    );

    request.truncate = true;
    let plan = model.plan(&request).unwrap();
    let ids = &plan.sequences[1].ids;
    assert_eq!(ids.len(), 8194);
    assert_eq!(*ids.last().unwrap(), 2, "truncation keeps </s> last");
    // Truncating 8193 words to 8192 gives the 8192-word embedding.
    let cut = model.embed(&request).unwrap().embeddings.remove(1);
    let exact = model
        .embed(&EmbedRequest::new(vec![words(8192)]).with_task("none"))
        .unwrap()
        .embeddings
        .remove(0);
    assert!(common::max_abs_diff(&cut, &exact) < 1e-6);
}

#[test]
fn the_prefix_counts_toward_the_limit() {
    let model = small_model();
    let request = EmbedRequest::new(vec![words(8192)]).with_task("retrieval.query");
    let err = model.plan(&request).unwrap_err();
    assert!(
        matches!(
            err,
            Error::InputTooLong {
                index: 0,
                limit: 8194,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn late_chunking_over_the_limit_is_rejected_even_with_truncate() {
    let model = small_model();
    let mut request = EmbedRequest::new(vec![words(5000), words(5000)]).with_task("none");
    request.late_chunking = LateChunking::On;
    request.truncate = true;
    match model.plan(&request) {
        Err(Error::LateChunkingTooLong {
            tokens: 10002,
            limit: 8194,
        }) => {}
        other => panic!("expected LateChunkingTooLong, got {other:?}"),
    }
}

#[test]
fn dimensions_and_tasks_are_checked() {
    let model = small_model();
    for bad in [0, 129] {
        let err = model
            .embed(&EmbedRequest::new(vec!["x".into()]).with_dimensions(bad))
            .unwrap_err();
        assert!(err.is_client_error());
        assert!(
            err.to_string().contains(&format!("dimensions {bad}"))
                && err.to_string().contains("128"),
            "{err}"
        );
    }
    let one = model
        .embed(&EmbedRequest::new(vec!["x".into()]).with_dimensions(1))
        .unwrap();
    assert_eq!(one.embeddings[0].len(), 1);
    assert_eq!(one.embeddings[0][0].abs(), 1.0);

    let err = model
        .embed(&EmbedRequest::new(vec!["x".into()]).with_task("summarization"))
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("summarization")
            && text.contains("retrieval.query")
            && text.contains("text-matching"),
        "{text}"
    );
    assert!(matches!(
        model.embed(&EmbedRequest::new(vec![])),
        Err(Error::EmptyInput)
    ));
}

#[test]
fn default_task_is_text_matching_and_empty_text_is_valid() {
    let model = small_model();
    assert_eq!(model.default_task(), "text-matching");
    let default = model
        .embed(&EmbedRequest::new(vec!["hello".into(), "".into()]))
        .unwrap();
    let explicit = model
        .embed(&EmbedRequest::new(vec!["hello".into(), "".into()]).with_task("text-matching"))
        .unwrap();
    assert_eq!(default, explicit);
    assert_eq!(default.total_tokens, 4 + 2, "<s> ▁hell o </s> and <s> </s>");
}
