//! The prefix / tokenisation / late-chunking span builder, `jina_engine::tokenize::plan`, with
//! the real XLM-RoBERTa tokenizer of the fixtures. The input picks the mode, the token limit
//! (small, so that windows are exercised), the overlap, a task prefix and the texts (split on
//! NUL). A plan that comes back must hold together:
//!
//! * every sequence fits the limit and every span lies inside its sequence;
//! * without late chunking: one sequence and one whole span per input, `<s>` … `</s>`;
//! * with late chunking in one sequence: the spans tile the sequence in input order;
//! * in long windows: every token of the joined sequence is pooled exactly once, by the
//!   output that owns it, and `total_tokens` counts each token once.
//!
//! An error must be one the request could cause (too long, overlap too large), never a panic.
#![no_main]

use std::sync::OnceLock;

use jina_engine::tokenize::{plan, PlanParams, TextTokenizer};
use jina_engine::{Error, LateChunking};
use libfuzzer_sys::fuzz_target;

const BOS: u32 = 0;
const EOS: u32 = 2;

fn tokenizer() -> &'static TextTokenizer {
    static TOKENIZER: OnceLock<TextTokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("jina-fuzz-tokenizer-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("tokenizer.json");
        std::fs::write(&path, jina_engine::fixture::tokenizer_json()).expect("write tokenizer.json");
        let tokenizer = TextTokenizer::from_file(&path).expect("load the vendored tokenizer");
        let _ = std::fs::remove_dir_all(&dir);
        tokenizer
    })
}

fuzz_target!(|data: &[u8]| {
    let [mode, limit, overlap, rest @ ..] = data else { return };
    let late_chunking = match mode & 3 {
        0 => LateChunking::Off,
        1 => LateChunking::On,
        _ => LateChunking::Long { overlap: *overlap as usize },
    };
    let truncate = mode & 4 != 0;
    let prefix = if mode & 8 != 0 { "Represent the query for retrieving evidence documents: " } else { "" };
    let max_tokens = if *limit == 255 { 8194 } else { 2 + *limit as usize };
    let inputs: Vec<String> = rest.split(|&b| b == 0).take(64).map(|s| String::from_utf8_lossy(s).into_owned()).collect();
    let params = PlanParams {
        adapter: (mode & 8 != 0).then_some(jina_engine::TaskAdapter::Builtin(1)),
        prefix,
        max_tokens,
        truncate,
        late_chunking,
        eos: EOS,
        bos: BOS,
    };
    let result = plan(tokenizer(), &inputs, &params);
    let plan = match result {
        Ok(plan) => plan,
        Err(Error::InputTooLong { limit, .. }) => {
            assert!(late_chunking == LateChunking::Off && !truncate && limit == max_tokens);
            return;
        }
        Err(Error::LateChunkingTooLong { tokens, limit }) => {
            assert!(late_chunking == LateChunking::On && tokens > limit && limit == max_tokens);
            return;
        }
        Err(Error::InvalidRequest(message)) => {
            assert!(message.contains("late_chunking_overlap"), "unexpected error: {message}");
            assert!(matches!(late_chunking, LateChunking::Long { overlap } if overlap > max_tokens / 2));
            return;
        }
        Err(other) => panic!("unexpected error: {other}"),
    };

    assert_eq!(plan.outputs, inputs.len());
    for seq in &plan.sequences {
        assert!(!seq.ids.is_empty() && seq.ids.len() <= max_tokens, "sequence of {} over {max_tokens}", seq.ids.len());
        assert_eq!(seq.adapter, params.adapter);
        for span in &seq.spans {
            assert!(span.range.start <= span.range.end && span.range.end <= seq.ids.len(), "{span:?} outside the sequence");
            assert!(span.output < plan.outputs);
        }
    }
    match late_chunking {
        LateChunking::Off => {
            assert_eq!(plan.sequences.len(), inputs.len());
            let mut total = 0;
            for (i, seq) in plan.sequences.iter().enumerate() {
                assert_eq!(seq.spans.len(), 1);
                assert_eq!(seq.spans[0].output, i);
                assert_eq!(seq.spans[0].range, 0..seq.ids.len());
                assert_eq!(seq.ids.first(), Some(&BOS));
                assert_eq!(seq.ids.last(), Some(&EOS));
                total += seq.ids.len();
            }
            assert_eq!(plan.total_tokens, total);
        }
        LateChunking::On | LateChunking::Long { .. } if plan.sequences.len() == 1 => {
            let seq = &plan.sequences[0];
            assert_eq!(plan.total_tokens, seq.ids.len());
            assert_eq!(seq.spans.len(), inputs.len());
            let mut at = 0;
            for (i, span) in seq.spans.iter().enumerate() {
                assert_eq!(span.output, i);
                assert_eq!(span.range.start, at, "spans tile the sequence");
                at = span.range.end;
            }
            assert_eq!(at, seq.ids.len());
        }
        LateChunking::On => panic!("late chunking without windows made {} sequences", plan.sequences.len()),
        LateChunking::Long { overlap } => {
            let stride = max_tokens - overlap;
            let mut owner = vec![usize::MAX; plan.total_tokens];
            for (w, seq) in plan.sequences.iter().enumerate() {
                let offset = w * stride;
                assert!(offset + seq.ids.len() <= plan.total_tokens, "window {w} past the end");
                for span in &seq.spans {
                    for row in span.range.clone() {
                        assert_eq!(owner[offset + row], usize::MAX, "token {} pooled twice", offset + row);
                        owner[offset + row] = span.output;
                    }
                }
            }
            // Every token pooled once, by outputs in input order.
            assert!(owner.iter().all(|&o| o != usize::MAX), "a token is pooled by no window");
            assert!(owner.windows(2).all(|p| p[0] <= p[1]), "outputs out of order");
            assert_eq!(plan.sequences.last().map(|s| s.ids.last()), Some(Some(&EOS)));
        }
    }
});
