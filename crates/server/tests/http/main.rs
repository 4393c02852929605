//! HTTP tests of `jina-server`, with the small formula checkpoint (generated once into the
//! target folder). Most call the router in-process (`tower::ServiceExt::oneshot`), with the real
//! engine or a fake runner (`fake.rs`); the rest, which need a socket (shutdown and drain,
//! disconnects, slow bodies, raw bytes, the Python clients), run real servers on 127.0.0.1
//! port 0. One test binary, split by topic.

mod adapters;
mod batching;
mod common;
mod errors;
mod fake;
mod faults;
mod golden;
mod inprocess;
mod keys;
mod lifecycle;
mod llamaindex;
mod openai;
mod routes;
