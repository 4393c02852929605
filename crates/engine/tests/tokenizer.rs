//! Token ids equal those of the Python `tokenizers` package on multilingual text
//! (`tests/fixtures/tokenizer-reference.json`, made by `scripts/make-tokenizer-reference.py`).

mod common;

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

#[test]
fn ids_equal_the_python_reference() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer-reference.json");
    let reference: Reference = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert!(reference.cases.len() >= 15);
    let tokenizer = common::small_model().tokenizer();
    for case in &reference.cases {
        assert_eq!(tokenizer.encode_with_specials(&case.text).unwrap(), case.with_specials, "{:?}", case.text);
        assert_eq!(tokenizer.encode_plain(&case.text).unwrap(), case.plain, "{:?} without specials", case.text);
    }
}
