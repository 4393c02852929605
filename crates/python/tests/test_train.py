"""Training from Python: ``jina_embeddings.train`` writes the adapter folder that
``Model(adapters=...)`` serves per request, mixed with built-in tasks; the adapters travel
with a pickled model; bad input raises with a message."""

import pickle

import numpy as np
import pytest

import jina_embeddings

PAIRS = [
    {"query": f"question {i} about topic {i % 3}", "positive": f"the answer to question {i} is {i * 7}",
     "negatives": [f"unrelated text {i}"] if i % 2 else []}
    for i in range(8)
]


@pytest.fixture(scope="module")
def trained(fixture_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("adapters") / "topics.query"
    result = jina_embeddings.train(
        PAIRS, name="topics.query", out=out, model=fixture_dir, eval=PAIRS, epochs=2, batch=4, lr=1e-2,
    )
    return result, out


def test_train_returns_the_folder_and_the_figures(trained):
    result, out = trained
    report = result["report"]
    assert result["path"] == str(out)
    assert report["steps"] == 4 and report["total_steps"] == 4 and not report["stopped"]
    assert len(report["eval"]) == 3  # before training, after each epoch
    assert all(0.0 <= e["recall_at_1"] <= 1.0 for e in report["eval"])
    assert (out / "adapter_model.safetensors").exists() and (out / "jina_adapter.json").exists()


def test_a_trained_adapter_is_a_task_mixed_with_built_in_ones(fixture_dir, trained):
    _, out = trained
    m = jina_embeddings.Model(fixture_dir, adapters={"topics.query": out})
    assert [a["name"] for a in m.adapters()] == ["topics.query"]
    assert m.adapters()[0]["metadata"]["training"]["passage_task"] == "retrieval.passage"
    assert "topics.query" in m.info()["tasks"]
    texts = ["question 3 about topic 0", "something else"]
    custom = m.encode(texts, task="topics.query")
    builtin = m.encode(texts, task="retrieval.query")
    assert custom.shape == builtin.shape
    assert not np.allclose(custom, builtin), "the trained adapter moved the vectors"
    np.testing.assert_allclose(np.linalg.norm(custom, axis=1), 1.0, rtol=1e-5)
    # Its vectors do not depend on what else is in the process or the batch.
    again = pickle.loads(pickle.dumps(m)).encode(texts, task="topics.query")
    np.testing.assert_allclose(again, custom, atol=1e-6)
    m.unload_adapter("topics.query")
    with pytest.raises(ValueError, match="topics.query"):
        m.encode(texts, task="topics.query")


def test_bad_training_input_raises_with_a_message(fixture_dir, tmp_path):
    with pytest.raises(ValueError, match="--batch 9 is larger than the data \\(8 pairs\\)"):
        jina_embeddings.train(PAIRS, name="x.query", out=tmp_path / "a", model=fixture_dir, batch=9)
    with pytest.raises(TypeError, match="data\\[0\\]"):
        jina_embeddings.train([{"query": 1, "positive": "p"}], name="x.query", out=tmp_path / "b", model=fixture_dir)
    with pytest.raises(ValueError, match="cannot be used"):
        jina_embeddings.train(PAIRS, name="bad name", out=tmp_path / "c", model=fixture_dir, batch=2)
    missing = tmp_path / "pairs.jsonl"
    missing.write_text('{"query": "q"}\n')
    with pytest.raises(ValueError, match="pairs.jsonl:1: no field `positive`"):
        jina_embeddings.train(str(missing), name="x.query", out=tmp_path / "d", model=fixture_dir, batch=1)
    with pytest.raises(ValueError, match="no such|missing|adapter"):
        jina_embeddings.Model(fixture_dir, adapters={"gone": tmp_path / "absent"})
