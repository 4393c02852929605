//! End-to-end tests of `jina-server` on real servers bound to 127.0.0.1 port 0, with the small
//! formula checkpoint (generated once into the target folder). One test binary, split by topic.

mod batching;
mod common;
mod errors;
mod faults;
mod golden;
mod keys;
mod lifecycle;
mod llamaindex;
mod openai;
mod routes;
