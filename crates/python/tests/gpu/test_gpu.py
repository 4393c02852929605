"""The Python package on the GPU backend: a wheel built with `maturin build --features gpu`, run by
scripts/test-gpu.sh on Mesa's lavapipe (scripts/test-python.sh's main wheel has no `gpu` feature
and leaves this folder out). Every test asserts that the GPU ran: a silent CPU fallback fails."""

import concurrent.futures

import numpy as np
import pytest

import jina_embeddings

TOL = 2e-5


def encode_case(model, case):
    # As test_golden.py: the golden `null` task is the base weights.
    return model.encode(
        case["input"],
        task=case["task"] if case["task"] is not None else "none",
        dimensions=case["dimensions"],
        normalize=case["normalized"],
        late_chunking=case["late_chunking"],
    )


def gpu_model(fixture_dir, precision="f32"):
    m = jina_embeddings.Model(fixture_dir, device="gpu", precision=precision)
    info = m.info()
    assert info["device"] == "gpu" and info["gpu_adapter"], info
    assert info["precision"] == precision, info
    return m


@pytest.fixture(scope="module")
def gpu(fixture_dir):
    return gpu_model(fixture_dir)


def test_every_golden_case_through_the_gpu(gpu, golden):
    print(gpu.info()["device_summary"])
    for n, case in enumerate(golden["cases"]):
        got = encode_case(gpu, case)
        want = np.asarray(case["embeddings"], dtype=np.float32)
        scale = 1.0 if case["normalized"] else np.linalg.norm(want, axis=1, keepdims=True)
        rel = np.abs(got - want) / scale
        assert rel.max() <= TOL, f"case {n} ({case['task']}): max relative diff {rel.max():.2e}"


def test_the_gpu_equals_the_cpu_for_every_task_and_output_type(gpu, model):
    texts = ["Paris is the capital of France.", "", "Ein kurzer deutscher Satz. " * 30]
    for task in model.info()["tasks"]:
        np.testing.assert_allclose(gpu.encode(texts, task=task), model.encode(texts, task=task), atol=TOL)
    late = dict(task="retrieval.passage", late_chunking=True)
    np.testing.assert_allclose(gpu.encode(texts, **late), model.encode(texts, **late), atol=TOL)
    # The output encodings are computed from the same vectors (signs of components far from 0).
    got = gpu.encode(texts, embedding_type="ubinary")
    assert got.dtype == np.uint8 and got.shape[0] == len(texts)


def test_threads_share_one_device_without_the_gil(gpu):
    texts = [f"sentence number {i} about the weather in city {i % 7}" for i in range(48)]
    alone = gpu.encode(texts)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        parts = list(pool.map(lambda i: gpu.encode(texts[i::4]), range(4)))
    for i, part in enumerate(parts):
        np.testing.assert_allclose(part, alone[i::4], atol=TOL)


def test_f16_on_the_gpu_is_within_cosine_0_999_of_f32(fixture_dir, model):
    f16 = gpu_model(fixture_dir, "f16")
    assert "f16" in f16.info()["kernels"], f16.info()
    texts = ["What is the capital of France?", "Berlin liegt an der Spree. " * 20]
    a, b = f16.encode(texts, task="retrieval.query"), model.encode(texts, task="retrieval.query")
    cosines = (a * b).sum(axis=1)
    assert cosines.min() >= 0.999, cosines
    assert np.abs(a - b).max() > 0, "f16 gave the f32 results exactly"


def test_precisions_without_gpu_kernels_say_so(fixture_dir):
    m = jina_embeddings.Model(fixture_dir, device="gpu", precision="int8")
    info = m.info()
    assert info["device"] == "gpu" and info["precision"] == "f32", info
    assert any("int8" in reason for reason in info["precision_fallbacks"]), info


def test_auto_never_takes_a_software_adapter(fixture_dir):
    info = jina_embeddings.Model(fixture_dir, device="auto").info()
    assert info["device"] == "cpu", info
    assert info["device_fallbacks"], info
