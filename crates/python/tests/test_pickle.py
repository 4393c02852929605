"""A Model pickles by reference: path and options travel, weights do not."""

import multiprocessing
import pickle

import numpy as np

from jina_embeddings import Model


def test_pickle_round_trip_is_small(fixture_dir):
    m = Model(fixture_dir, precision="bf16", threads=1, max_batch_tokens=1024)
    data = pickle.dumps(m)
    assert len(data) < 1000, f"{len(data)} bytes: weights must not travel"
    copy = pickle.loads(data)
    assert copy.info() == m.info()
    np.testing.assert_array_equal(copy.encode(["a", "b"]), m.encode(["a", "b"]))


def embed_in_worker(args):
    model, texts = args
    return model.encode(texts, task="retrieval.query", dimensions=64)


def test_multiprocessing_ships_the_model(fixture_dir):
    m = Model(fixture_dir, threads=1)
    chunks = [["first", "second"], ["third"], ["fourth", "fifth", "sixth"]]
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        got = pool.map(embed_in_worker, [(m, c) for c in chunks])
    for c, g in zip(chunks, got):
        np.testing.assert_array_equal(g, m.encode(c, task="retrieval.query", dimensions=64))
