//! Dynamic batching: an actor on its own OS thread that owns the queue and runs the model.
//!
//! Handlers tokenise a request into a [`Plan`] and [`Scheduler::submit`] it; the scheduler
//! thread keeps every queued plan in FIFO order and builds forward passes from them:
//!
//! * a pass takes sequences from the oldest request first, then from younger ones, until
//!   `max_batch_tokens` is reached (tasks mixed: every sequence carries its own adapter);
//! * within a request, sequences are taken longest first, so the sequences of one pass have
//!   similar lengths and a large client batch is spread over several passes;
//! * a sequence longer than the budget runs alone;
//! * before each pass, requests whose client went away (the handler future was dropped, so the
//!   reply channel is closed) are dropped with their remaining sequences, so a cancelled request
//!   costs no more compute;
//! * a panic inside the runner, or an error it returns, fails only the requests of that pass.
//!
//! What runs a pass is a [`BatchRunner`]: the engine's model in production, a fake in tests.
//!
//! The budget counts real tokens: the engine runs sequences unpadded, so there is no padding to
//! count. Admission (how many requests may be queued) is decided before [`Scheduler::submit`]
//! by the server's semaphore; the channel itself never refuses or panics.
//!
//! When a request's last sequence has run, its plan and span sums go back to the handler, which
//! pools and encodes them off the scheduler thread.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use jina_engine::{Plan, Sequence, SpanSum};
use tokio::sync::oneshot;
use tracing::{debug, error};

use crate::metrics::Metrics;
use crate::runner::BatchRunner;

/// What a request gets back: its plan and the span sums of all its sequences, or an internal
/// error message.
pub type JobResult = Result<(Plan, Vec<SpanSum>), String>;

/// A submitted request.
struct Job {
    plan: Plan,
    reply: oneshot::Sender<JobResult>,
    span: tracing::Span,
    enqueued: Instant,
}

/// A queued request and its progress.
struct Entry {
    job: Job,
    /// Indices of sequences not yet run, longest first.
    remaining: Vec<usize>,
    sums: Vec<SpanSum>,
    started: bool,
}

impl Entry {
    fn new(job: Job) -> Self {
        let mut remaining: Vec<usize> = (0..job.plan.sequences.len()).collect();
        remaining.sort_by_key(|&i| std::cmp::Reverse(job.plan.sequences[i].ids.len()));
        Entry {
            job,
            remaining,
            sums: Vec::new(),
            started: false,
        }
    }
}

/// Handle to the scheduler thread.
pub struct Scheduler {
    tx: Mutex<Option<mpsc::Sender<Job>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// Why a submission was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum SubmitError {
    /// [`Scheduler::close`] was called.
    Closed,
}

impl Scheduler {
    /// Starts the scheduler thread.
    pub fn start(
        runner: Arc<dyn BatchRunner>,
        max_batch_tokens: usize,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Scheduler> {
        let (tx, rx) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name("jina-scheduler".into())
            .spawn(move || run(rx, runner.as_ref(), max_batch_tokens.max(1), &metrics))?;
        Ok(Scheduler {
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Queues a plan; the receiver gets the result. Dropping the receiver cancels the sequences
    /// that have not run yet.
    pub fn submit(
        &self,
        plan: Plan,
        span: tracing::Span,
    ) -> Result<oneshot::Receiver<JobResult>, SubmitError> {
        let (reply, rx) = oneshot::channel();
        let job = Job {
            plan,
            reply,
            span,
            enqueued: Instant::now(),
        };
        let guard = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        match guard.as_ref() {
            Some(tx) => tx.send(job).map(|()| rx).map_err(|_| SubmitError::Closed),
            None => Err(SubmitError::Closed),
        }
    }

    /// Stops taking work. The thread finishes what is queued (skipping requests whose client
    /// went away), then exits.
    pub fn close(&self) {
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    /// Closes, then waits for the thread to exit.
    pub fn join(&self) {
        self.close();
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(thread) = thread {
            if thread.join().is_err() {
                error!("the scheduler thread panicked");
            }
        }
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.close();
    }
}

fn run(rx: mpsc::Receiver<Job>, runner: &dyn BatchRunner, budget: usize, metrics: &Metrics) {
    let mut queue: VecDeque<Entry> = VecDeque::new();
    let enqueue = |queue: &mut VecDeque<Entry>, job: Job| {
        metrics
            .queued_sequences
            .fetch_add(job.plan.sequences.len() as u64, Ordering::Relaxed);
        queue.push_back(Entry::new(job));
    };
    loop {
        if queue.is_empty() {
            match rx.recv() {
                Ok(job) => enqueue(&mut queue, job),
                Err(_) => return, // closed and drained
            }
        }
        while let Ok(job) = rx.try_recv() {
            enqueue(&mut queue, job);
        }
        drop_cancelled(&mut queue, metrics);
        if queue.is_empty() {
            continue;
        }
        run_one_batch(&mut queue, runner, budget, metrics);
    }
}

/// Drops requests whose client went away.
fn drop_cancelled(queue: &mut VecDeque<Entry>, metrics: &Metrics) {
    queue.retain(|entry| {
        if !entry.job.reply.is_closed() {
            return true;
        }
        let skipped = entry.remaining.len() as u64;
        metrics.cancelled.fetch_add(1, Ordering::Relaxed);
        metrics
            .cancelled_sequences
            .fetch_add(skipped, Ordering::Relaxed);
        metrics
            .queued_sequences
            .fetch_sub(skipped, Ordering::Relaxed);
        entry.job.span.in_scope(|| {
            debug!(
                skipped_sequences = skipped,
                "client went away; request dropped from the queue"
            )
        });
        false
    });
}

/// Picks `(entry, sequence)` pairs for one forward pass: oldest request first, longest
/// sequence first within a request, first fit up to `budget` tokens (at least one sequence).
fn pick(queue: &mut VecDeque<Entry>, budget: usize) -> (Vec<(usize, usize)>, usize) {
    let mut picks = Vec::new();
    let mut used = 0;
    for (e, entry) in queue.iter_mut().enumerate() {
        let mut k = 0;
        while k < entry.remaining.len() {
            let len = entry.job.plan.sequences[entry.remaining[k]].ids.len();
            if picks.is_empty() || used + len <= budget {
                picks.push((e, entry.remaining.remove(k)));
                used += len;
            } else {
                k += 1;
            }
        }
        if used >= budget {
            break;
        }
    }
    (picks, used)
}

fn run_one_batch(
    queue: &mut VecDeque<Entry>,
    runner: &dyn BatchRunner,
    budget: usize,
    metrics: &Metrics,
) {
    let (picks, tokens) = pick(queue, budget);
    for &(e, _) in &picks {
        let entry = &mut queue[e];
        if !entry.started {
            entry.started = true;
            let wait = entry.job.enqueued.elapsed();
            metrics.queue_wait.observe(wait.as_secs_f64());
            entry.job.span.in_scope(|| {
                debug!(
                    queue_wait_ms = wait.as_secs_f64() * 1e3,
                    "first forward pass"
                )
            });
        }
    }
    metrics
        .queued_sequences
        .fetch_sub(picks.len() as u64, Ordering::Relaxed);
    let seqs: Vec<&Sequence> = picks
        .iter()
        .map(|&(e, s)| &queue[e].job.plan.sequences[s])
        .collect();
    let started = Instant::now();
    let outcome = catch_unwind(AssertUnwindSafe(|| runner.run(&seqs)));
    let elapsed = started.elapsed().as_secs_f64();
    metrics.inference.observe(elapsed);
    metrics.batch_size.observe(picks.len() as f64);
    metrics.batch_tokens.observe(tokens as f64);
    metrics.batch_fill.observe(tokens as f64 / budget as f64);
    metrics
        .forward_tokens
        .fetch_add(tokens as u64, Ordering::Relaxed);
    debug!(
        sequences = picks.len(),
        tokens,
        inference_ms = elapsed * 1e3,
        "forward pass"
    );

    let mut failed = vec![false; queue.len()];
    match outcome {
        Ok(Ok(sums)) if sums.len() == picks.len() => {
            for (&(e, _), seq_sums) in picks.iter().zip(sums) {
                queue[e].sums.extend(seq_sums);
            }
        }
        Ok(Ok(sums)) => {
            error!(
                expected = picks.len(),
                got = sums.len(),
                "the model returned the wrong number of results"
            );
            picks.iter().for_each(|&(e, _)| failed[e] = true);
        }
        Ok(Err(message)) => {
            error!(error = %message, sequences = picks.len(), tokens, "the forward pass failed; failing its requests");
            picks.iter().for_each(|&(e, _)| failed[e] = true);
        }
        Err(panic) => {
            let what = jina_engine::error::panic_message(panic.as_ref())
                .unwrap_or_else(|| "unknown panic".into());
            error!(panic = %what, sequences = picks.len(), tokens, "the forward pass panicked; failing its requests");
            picks.iter().for_each(|&(e, _)| failed[e] = true);
        }
    }

    let old = std::mem::take(queue);
    for (e, entry) in old.into_iter().enumerate() {
        if failed[e] {
            let left = entry.remaining.len() as u64;
            metrics.queued_sequences.fetch_sub(left, Ordering::Relaxed);
            let _ = entry.job.reply.send(Err("the forward pass failed".into()));
        } else if entry.remaining.is_empty() {
            let Entry { job, sums, .. } = entry;
            // An error here means the client went away after its last pass: nothing to do.
            let _ = job.reply.send(Ok((job.plan, sums)));
        } else {
            queue.push_back(entry);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jina_engine::Span;

    fn plan(lengths: &[usize]) -> Plan {
        let sequences = lengths
            .iter()
            .enumerate()
            .map(|(i, &n)| Sequence {
                ids: vec![0; n],
                adapter: None,
                spans: vec![Span {
                    output: i,
                    range: 0..n,
                }],
            })
            .collect();
        Plan {
            sequences,
            outputs: lengths.len(),
            total_tokens: lengths.iter().sum(),
        }
    }

    fn entry(lengths: &[usize]) -> (Entry, oneshot::Receiver<JobResult>) {
        let (reply, rx) = oneshot::channel();
        let job = Job {
            plan: plan(lengths),
            reply,
            span: tracing::Span::none(),
            enqueued: Instant::now(),
        };
        (Entry::new(job), rx)
    }

    #[test]
    fn picks_oldest_first_longest_first_within_budget() {
        let (a, _ra) = entry(&[10, 50, 30]);
        let (b, _rb) = entry(&[5, 40]);
        let mut queue: VecDeque<Entry> = [a, b].into_iter().collect();
        // Budget 100: a's 50 and 30 fit, 10 fits (90), then b's 40 does not, b's 5 does (95).
        let (picks, used) = pick(&mut queue, 100);
        assert_eq!(picks, vec![(0, 1), (0, 2), (0, 0), (1, 0)]);
        assert_eq!(used, 95);
        assert!(queue[0].remaining.is_empty());
        assert_eq!(queue[1].remaining, vec![1]);
    }

    #[test]
    fn an_oversized_sequence_runs_alone() {
        let (a, _ra) = entry(&[500, 3]);
        let mut queue: VecDeque<Entry> = [a].into_iter().collect();
        let (picks, used) = pick(&mut queue, 100);
        assert_eq!((picks, used), (vec![(0, 0)], 500));
        let (picks, used) = pick(&mut queue, 100);
        assert_eq!((picks, used), (vec![(0, 1)], 3));
    }

    #[test]
    fn cancelled_requests_are_dropped() {
        let metrics = Metrics::default();
        let (a, ra) = entry(&[4, 4]);
        let (b, _rb) = entry(&[4]);
        metrics.queued_sequences.store(3, Ordering::Relaxed);
        let mut queue: VecDeque<Entry> = [a, b].into_iter().collect();
        drop(ra);
        drop_cancelled(&mut queue, &metrics);
        assert_eq!(queue.len(), 1);
        assert_eq!(metrics.cancelled.load(Ordering::Relaxed), 1);
        assert_eq!(metrics.cancelled_sequences.load(Ordering::Relaxed), 2);
        assert_eq!(metrics.queued_sequences.load(Ordering::Relaxed), 1);
    }
}
