//! The request decoder of `POST /v1/embeddings`: any body bytes, with and without the OpenAI
//! SDK header, go through `jina_server::api::decode_request`. It must return a request or an
//! error (never panic), and what it accepts must hold together: the texts come out, the
//! late-chunking mode is derived, and the error's status is a 4xx.
#![no_main]

use http::{HeaderMap, HeaderValue};
use jina_server::api::{decode_request, LateChunkingField};
use jina_server::Dialect;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the headers, the rest is the body.
    let Some((&flags, body)) = data.split_first() else { return };
    let mut headers = HeaderMap::new();
    if flags & 1 == 1 {
        headers.insert("x-stainless-lang", HeaderValue::from_static("python"));
    }
    let mut dialect = Dialect::Jina;
    match decode_request(body, &headers, &mut dialect) {
        Ok(request) => {
            // Accepted JSON parses with serde_json too, and the decoded fields are usable.
            assert!(serde_json::from_slice::<serde_json::Value>(body).is_ok());
            if request.encoding_format.is_some() || flags & 1 == 1 {
                assert_eq!(dialect, Dialect::OpenAi);
            }
            if let Some(input) = request.input {
                let _texts = input.into_texts();
            }
            let _mode = LateChunkingField::mode(request.late_chunking, request.late_chunking_overlap);
        }
        Err(error) => {
            let status = error.status().as_u16();
            assert!((400..500).contains(&status), "a decode error is a client error, got {status}: {error}");
            let _message = error.to_string();
        }
    }
});
