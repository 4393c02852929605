"""The official outputs (crates/engine/tests/fixtures/golden-small.json) through Model.encode,
within the fixture tolerances: 2e-5 per component for normalised vectors, 2e-5 x |v| otherwise."""

import numpy as np
import pyarrow as pa
import pytest

import jina_embeddings
from jina_embeddings import Model

TOL = 2e-5


def encode_case(model, case, **kwargs):
    # The golden `null` task is the official encode() without a task: the base weights.
    return model.encode(
        case["input"],
        task=case["task"] if case["task"] is not None else "none",
        dimensions=case["dimensions"],
        normalize=case["normalized"],
        late_chunking=case["late_chunking"],
        **kwargs,
    )


def test_every_golden_case_within_tolerance(model, golden):
    worst = []
    for n, case in enumerate(golden["cases"]):
        got = encode_case(model, case)
        want = np.asarray(case["embeddings"], dtype=np.float32)
        assert got.dtype == np.float32 and got.shape == want.shape, f"case {n}"
        scale = 1.0 if case["normalized"] else np.linalg.norm(want, axis=1, keepdims=True)
        rel = np.abs(got - want) / scale
        worst.append(float(rel.max()))
        assert rel.max() <= TOL, f"case {n} ({case['task']}): max relative diff {rel.max():.2e}"
    print("worst relative diff per case:", " ".join(f"{w:.1e}" for w in worst))


def test_golden_token_counts(model, golden):
    for n, case in enumerate(golden["cases"]):
        if case.get("tokens") is None or case["late_chunking"]:
            continue
        task = case["task"] if case["task"] is not None else "none"
        counts = [len(t["ids"]) for t in model.tokenize(case["input"], task=task)]
        assert counts == case["tokens"], f"case {n}"


def test_ubinary_and_binary_are_the_golden_sign_bits(model, golden):
    checked = 0
    for n, case in enumerate(golden["cases"]):
        want = np.asarray(case["embeddings"], dtype=np.float32)
        got = encode_case(model, case, embedding_type="ubinary")
        d = want.shape[1]
        assert got.dtype == np.uint8 and got.shape == (want.shape[0], (d + 7) // 8), f"case {n}"
        bits = np.unpackbits(got, axis=1)[:, :d]
        # A component within the tolerance of zero may take either sign.
        sure = np.abs(want) > TOL * (1.0 if case["normalized"] else np.linalg.norm(want, axis=1, keepdims=True))
        assert np.array_equal(bits[sure], (want > 0)[sure]), f"case {n}"
        assert not np.any(np.unpackbits(got, axis=1)[:, d:]), f"case {n}: padding bits must be zero"
        binary = encode_case(model, case, embedding_type="binary")
        assert binary.dtype == np.int8
        assert np.array_equal(binary.astype(np.int16), got.astype(np.int16) - 128), f"case {n}"
        checked += int(sure.sum())
    assert checked > 1000


def test_default_task_is_text_matching_and_shortcuts(model):
    texts = ["What is the capital of France?", "Paris"]
    assert model.info()["default_task"] == "text-matching"
    np.testing.assert_array_equal(model.encode(texts), model.encode(texts, task="text-matching"))
    np.testing.assert_array_equal(model.encode_query(texts), model.encode(texts, task="retrieval.query"))
    np.testing.assert_array_equal(model.encode_document(texts), model.encode(texts, task="retrieval.passage"))
    assert not np.array_equal(model.encode(texts, task="none"), model.encode(texts))


def test_inputs_as_numpy_and_pyarrow(model):
    texts = ["a", "Paris is the capital of France.", "", "東京"]
    want = model.encode(texts, dimensions=32)
    np.testing.assert_array_equal(model.encode(np.array(texts), dimensions=32), want)
    np.testing.assert_array_equal(model.encode(np.array(texts, dtype=object), dimensions=32), want)
    np.testing.assert_array_equal(model.encode(pa.array(texts), dimensions=32), want)
    np.testing.assert_array_equal(model.encode(pa.chunked_array([texts[:2], texts[2:]]), dimensions=32), want)
    np.testing.assert_array_equal(model.encode(pa.array(texts, pa.large_string()), dimensions=32), want)
    np.testing.assert_array_equal(model.encode(tuple(texts), dimensions=32), want)


def test_output_is_a_plain_writable_array(model):
    v = model.encode(["x", "y", "z"], dimensions=64)
    assert v.shape == (3, 64) and v.flags["C_CONTIGUOUS"] and v.flags["WRITEABLE"]
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-6)
    # The array wraps the engine's buffer (numpy's base is the Rust container), not a copy.
    assert not v.flags["OWNDATA"] and type(v.base).__name__ == "PySliceContainer"
    assert model.encode([]).shape == (0, 128)
    assert model.encode([], embedding_type="ubinary", dimensions=12).shape == (0, 2)


def test_progress_bar_and_callback_give_the_same_vectors(model, capsys):
    texts = ["word " * (i % 50 + 1) for i in range(300)]
    plain = model.encode(texts)
    np.testing.assert_array_equal(model.encode(texts, progress=True), plain)
    calls = []
    small = Model(model.info()["path"], threads=1, max_batch_tokens=512)
    small._native.encode(texts, progress=lambda done, total: calls.append((done, total)))
    assert len(calls) > 3 and calls[-1] == (300, 300)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    np.testing.assert_allclose(small.encode(texts), plain, atol=1e-6)


def test_late_chunking_options(model):
    chunks = ["Paris is the capital of France.", "It lies on the Seine.", "Berlin is in Germany."]
    joint = model.encode(chunks, late_chunking=True)
    assert joint.shape == (3, 128)
    assert not np.allclose(joint, model.encode(chunks))
    # Windows larger than the joined sequence change nothing.
    np.testing.assert_allclose(model.encode(chunks, late_chunking=True, late_chunking_overlap=16), joint, atol=1e-6)


def test_reduced_precisions_keep_cosine(fixture_dir, golden):
    for precision, gate in [("bf16", 0.999), ("int8", 0.99)]:
        m = Model(fixture_dir, precision=precision)
        assert m.info()["precision"] in ("f32", "bf16", "int8")
        for n, case in enumerate(golden["cases"][:10]):
            got = encode_case(m, case)
            want = np.asarray(case["embeddings"], dtype=np.float32)
            cos = np.sum(got * want, axis=1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
            assert cos.min() >= gate, f"{precision} case {n}: cosine {cos.min()}"


def test_tokenize_and_info(model):
    (plain,) = model.tokenize(["Paris"], task="none")
    assert plain["ids"][0] == 0 and plain["ids"][-1] == 2 and plain["tokens"][0] == "<s>"
    (query,) = model.tokenize(["Paris"], task="retrieval.query")
    assert len(query["ids"]) > len(plain["ids"])  # the instruction prefix
    info = model.info()
    assert info["dimensions"] == 128 and info["max_tokens"] == 8194
    assert info["tasks"] == ["retrieval.query", "retrieval.passage", "separation", "classification", "text-matching"]
    assert info["precision"] == "f32" and info["threads"] >= 1
    assert "Model(" in repr(model)
    assert jina_embeddings.DEFAULT_TASK == "text-matching" and jina_embeddings.NO_TASK == "none"
