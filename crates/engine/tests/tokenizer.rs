//! Token ids equal those of the Python references (made by `scripts/make-tokenizer-reference.py`):
//! the `tokenizers` package on multilingual text (`tests/fixtures/tokenizer-reference.json`), and
//! `transformers.AutoTokenizer`, which applies `tokenizer_config.json` over `tokenizer.json`, on
//! texts that hold the literal spellings of the special tokens
//! (`tests/fixtures/tokenizer-reference-transformers.json`), with the real repository's config and
//! with one whose flags are flipped.

mod common;

use std::path::{Path, PathBuf};

use jina_engine::tokenize::TextTokenizer;
use jina_engine::{EmbedRequest, Error, Model};
use serde::Deserialize;

#[derive(Deserialize)]
struct Reference {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    text: String,
    with_specials: Vec<u32>,
    plain: Vec<u32>,
}

#[derive(Deserialize)]
struct TransformersReference {
    model_max_length: usize,
    flipped_config: serde_json::Value,
    cases: Vec<Case>,
    flipped_cases: Vec<Case>,
}

fn fixture_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn transformers_reference() -> TransformersReference {
    serde_json::from_str(
        &std::fs::read_to_string(fixture_file("tokenizer-reference-transformers.json")).unwrap(),
    )
    .unwrap()
}

fn assert_cases(tokenizer: &TextTokenizer, cases: &[Case], what: &str) {
    for case in cases {
        assert_eq!(
            tokenizer.encode_with_specials(&case.text).unwrap(),
            case.with_specials,
            "{what}: {:?}",
            case.text
        );
        assert_eq!(
            tokenizer.encode_plain(&case.text).unwrap(),
            case.plain,
            "{what}: {:?} without specials",
            case.text
        );
    }
}

/// A folder with the fixture's tokenizer.json and the given tokenizer_config.json text.
fn tokenizer_dir(config: Option<&str>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("tokenizer.json"),
        jina_engine::fixture::tokenizer_json(),
    )
    .unwrap();
    if let Some(config) = config {
        std::fs::write(dir.path().join("tokenizer_config.json"), config).unwrap();
    }
    dir
}

#[test]
fn ids_equal_the_python_reference() {
    let reference: Reference = serde_json::from_str(
        &std::fs::read_to_string(fixture_file("tokenizer-reference.json")).unwrap(),
    )
    .unwrap();
    assert!(reference.cases.len() >= 15);
    assert_cases(
        common::small_model().tokenizer(),
        &reference.cases,
        "tokenizers",
    );
}

#[test]
fn literal_special_tokens_equal_transformers_on_the_fixture_folder() {
    let reference = transformers_reference();
    assert!(reference.cases.len() >= 25);
    let model = common::small_model();
    assert_cases(model.tokenizer(), &reference.cases, "transformers");
    assert_eq!(
        model.tokenizer().model_max_length(),
        Some(reference.model_max_length)
    );
    assert_eq!(model.max_tokens(), 8194);
}

#[test]
fn the_fixture_writes_the_real_repository_tokenizer_files_unchanged() {
    let assets = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets");
    for name in ["tokenizer_config.json", "special_tokens_map.json"] {
        let written = std::fs::read(common::small_fixture_dir().join(name)).unwrap();
        assert_eq!(written, std::fs::read(assets.join(name)).unwrap(), "{name}");
    }
}

#[test]
fn flipped_flags_flip_the_ids_as_in_transformers() {
    let reference = transformers_reference();
    let dir = tokenizer_dir(Some(&reference.flipped_config.to_string()));
    let flipped = TextTokenizer::from_dir(dir.path()).unwrap();
    assert_cases(
        &flipped,
        &reference.flipped_cases,
        "transformers, flipped config",
    );
    // The flip matters: `<mask>` no longer takes the space before it.
    let shipped = common::small_model().tokenizer();
    assert_eq!(shipped.encode_plain("a <mask>").unwrap(), [10, 250001]);
    assert_eq!(flipped.encode_plain("a <mask>").unwrap(), [10, 6, 250001]);
    // Without a config, tokenizer.json alone (lstrip false) decides.
    let bare = TextTokenizer::from_dir(tokenizer_dir(None).path()).unwrap();
    assert_eq!(bare.encode_plain("a <mask>").unwrap(), [10, 6, 250001]);
    assert_eq!(bare.model_max_length(), None);
}

#[test]
fn split_special_tokens_tokenises_their_spellings_as_text() {
    // transformers 4.57.6 on the same folder (`split_special_tokens` in the config) gives these:
    // `<s>` is then text that the vocabulary's own `<s>` piece matches, followed by `x` as a
    // word-internal piece rather than the `▁x` after a special token.
    let dir = tokenizer_dir(Some(
        r#"{"split_special_tokens": true, "tokenizer_class": "XLMRobertaTokenizer"}"#,
    ));
    let split = TextTokenizer::from_dir(dir.path()).unwrap();
    assert_eq!(split.encode_plain("a <s>x").unwrap(), [10, 6, 0, 425]);
    assert_eq!(
        common::small_model()
            .tokenizer()
            .encode_plain("a <s>x")
            .unwrap(),
        [10, 6, 0, 1022]
    );
}

#[test]
fn a_named_special_token_missing_from_tokenizer_json_is_added() {
    let dir = tokenizer_dir(Some(r#"{"additional_special_tokens": ["<extra>"]}"#));
    let tokenizer = TextTokenizer::from_dir(dir.path()).unwrap();
    assert_eq!(tokenizer.vocab_size(), 250003);
    assert_eq!(tokenizer.encode_plain("a<extra>b").unwrap()[1], 250002);
}

#[test]
fn a_malformed_config_is_an_error_naming_the_file() {
    for (text, needle) in [
        ("{\"added_tokens_decoder\": ", "EOF"),
        (
            r#"{"added_tokens_decoder": {"250001": {"content": "<mask>", "lstrip": "yes"}}}"#,
            "added_tokens_decoder.250001.lstrip",
        ),
        (r#"{"model_max_length": "long"}"#, "model_max_length"),
        (r#"{"model_max_length": 1}"#, "model_max_length is 1"),
    ] {
        let dir = tokenizer_dir(Some(text));
        let err = TextTokenizer::from_dir(dir.path()).err().expect("an error");
        assert!(matches!(err, Error::TokenizerConfig { .. }), "{err:?}");
        let message = err.to_string();
        assert!(
            message.contains(
                &dir.path()
                    .join("tokenizer_config.json")
                    .display()
                    .to_string()
            ),
            "{message}"
        );
        assert!(message.contains(needle), "{needle} missing from: {message}");
    }
}

#[test]
fn model_max_length_limits_the_model() {
    let dir = tempfile::tempdir().unwrap();
    for file in std::fs::read_dir(common::small_fixture_dir()).unwrap() {
        let file = file.unwrap();
        std::fs::copy(file.path(), dir.path().join(file.file_name())).unwrap();
    }
    let mut config: serde_json::Value =
        serde_json::from_slice(jina_engine::fixture::TOKENIZER_CONFIG_JSON).unwrap();
    config["model_max_length"] = 16.into();
    std::fs::write(dir.path().join("tokenizer_config.json"), config.to_string()).unwrap();
    let model = Model::load(dir.path()).unwrap();
    assert_eq!(model.max_tokens(), 16);
    let err = model
        .plan(&EmbedRequest::new(vec!["word ".repeat(20)]))
        .unwrap_err();
    assert!(err.to_string().contains("limit of 16"), "{err}");

    std::fs::write(dir.path().join("tokenizer_config.json"), "[1, 2]").unwrap();
    let err = Model::load(dir.path()).err().expect("an error").to_string();
    assert!(err.contains("tokenizer_config.json"), "{err}");
}
