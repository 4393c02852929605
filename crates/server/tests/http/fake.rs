//! A fake [`BatchRunner`]: planning, tokenising and the model's facts come from the real small
//! fixture (so validation is the real one), but a "forward pass" is a deterministic function of
//! the token ids, with a configurable delay and injected failures (an error or a panic). It
//! records every batch it ran.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jina_engine::pooling::SpanSum;
use jina_engine::{EmbedRequest, Plan, Sequence};
use jina_server::runner::{AdapterInfo, EngineRunner, Tokenized};
use jina_server::{BatchRunner, ModelInfo};

/// How a poisoned batch fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// `run` returns an error.
    Error,
    /// `run` panics.
    Panic,
}

/// The fake runner.
pub struct FakeRunner {
    real: EngineRunner,
    /// Sleep of every batch.
    pub delay: Mutex<Duration>,
    /// A batch with a sequence holding this token id fails.
    poison: Mutex<Option<(u32, Failure)>>,
    /// Every batch run: its sequences' lengths.
    pub batches: Mutex<Vec<Vec<usize>>>,
    /// Set while a batch runs.
    pub running: AtomicBool,
}

impl FakeRunner {
    /// A fake over the small fixture.
    pub fn new() -> Arc<FakeRunner> {
        let model =
            jina_engine::Model::load(crate::common::fixture_dir()).expect("load the small fixture");
        Arc::new(FakeRunner {
            real: EngineRunner::new(model),
            delay: Mutex::new(Duration::ZERO),
            poison: Mutex::new(None),
            batches: Mutex::new(Vec::new()),
            running: AtomicBool::new(false),
        })
    }

    /// Every batch sleeps `delay`.
    pub fn set_delay(&self, delay: Duration) {
        *self.delay.lock().unwrap() = delay;
    }

    /// Batches holding a sequence with the first token id of `word` fail.
    pub fn poison(&self, word: &str, how: Failure) {
        let ids = self.real.tokenize(word).expect("tokenize").ids;
        // <s> word… </s>
        assert!(ids.len() >= 3, "{word:?}: {ids:?}");
        *self.poison.lock().unwrap() = Some((ids[1], how));
    }

    /// The embedding the fake gives a sequence's span before pooling: the mean over the span's
    /// tokens of [`token_vector`].
    pub fn expected(ids: &[u32], hidden: usize) -> Vec<f32> {
        let mut sum = vec![0f64; hidden];
        for &id in ids {
            for (d, s) in sum.iter_mut().enumerate() {
                *s += token_value(id, d);
            }
        }
        let n = ids.len().max(1) as f64;
        let v: Vec<f32> = sum.iter().map(|s| (s / n) as f32).collect();
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
        v.iter().map(|x| x / norm).collect()
    }

    /// The number of batches run so far.
    pub fn batch_count(&self) -> usize {
        self.batches.lock().unwrap().len()
    }
}

/// Component `d` of the fake's vector of token `id`.
pub fn token_value(id: u32, d: usize) -> f64 {
    ((id as usize * 31 + d * 17) % 101) as f64 / 50.0 - 1.0
}

impl BatchRunner for FakeRunner {
    fn info(&self) -> &ModelInfo {
        self.real.info()
    }

    fn plan(&self, request: &EmbedRequest) -> Result<Plan, jina_engine::Error> {
        self.real.plan(request)
    }

    fn run(&self, batch: &[&Sequence]) -> Result<Vec<Vec<SpanSum>>, String> {
        self.running.store(true, Ordering::SeqCst);
        self.batches
            .lock()
            .unwrap()
            .push(batch.iter().map(|s| s.ids.len()).collect());
        let delay = *self.delay.lock().unwrap();
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        self.running.store(false, Ordering::SeqCst);
        let poison = *self.poison.lock().unwrap();
        if let Some((id, how)) = poison {
            if batch.iter().any(|s| s.ids.contains(&id)) {
                match how {
                    Failure::Error => return Err("injected failure".into()),
                    Failure::Panic => panic!("injected panic"),
                }
            }
        }
        let hidden = self.real.info().hidden_size;
        Ok(batch
            .iter()
            .map(|seq| {
                seq.spans
                    .iter()
                    .map(|span| {
                        let mut sum = vec![0f64; hidden];
                        for &id in &seq.ids[span.range.clone()] {
                            for (d, s) in sum.iter_mut().enumerate() {
                                *s += token_value(id, d);
                            }
                        }
                        SpanSum {
                            output: span.output,
                            sum,
                            count: span.range.len(),
                        }
                    })
                    .collect()
            })
            .collect())
    }

    fn task_prefix(&self, task: &str) -> Result<String, jina_engine::Error> {
        self.real.task_prefix(task)
    }

    fn tasks(&self) -> Vec<String> {
        self.real.tasks()
    }

    fn adapters(&self) -> Vec<AdapterInfo> {
        self.real.adapters()
    }

    fn load_adapter(
        &self,
        dir: &std::path::Path,
        name: Option<&str>,
    ) -> Result<AdapterInfo, jina_engine::Error> {
        self.real.load_adapter(dir, name)
    }

    fn unload_adapter(&self, name: &str) -> Result<AdapterInfo, jina_engine::Error> {
        self.real.unload_adapter(name)
    }

    fn tokenize(&self, text: &str) -> Result<Tokenized, jina_engine::Error> {
        self.real.tokenize(text)
    }
}
