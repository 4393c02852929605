"""Engine errors reach Python as ordinary exceptions with the engine's message."""

import os
import shutil

import numpy as np
import pyarrow as pa
import pytest

import jina_embeddings
from jina_embeddings import Model, ModelNotCachedError


def test_too_long_input_names_index_count_and_limit(model):
    texts = ["short", "word " * 9000]
    with pytest.raises(ValueError) as err:
        model.encode(texts)
    message = str(err.value)
    assert "input[1] has" in message and "more than the limit of 8194" in message and "truncate" in message
    tokens = int(message.split(" has ")[1].split()[0])
    assert tokens > 8194
    assert model.encode(texts, truncate=True).shape == (2, 128)


def test_late_chunking_too_long(model):
    with pytest.raises(ValueError, match="late chunking joins all inputs"):
        model.encode(["word " * 5000, "word " * 5000], late_chunking=True)
    assert model.encode(["word " * 5000, "word " * 5000], late_chunking=True, late_chunking_overlap=64).shape == (2, 128)
    with pytest.raises(ValueError, match="late_chunking_overlap needs late_chunking"):
        model.encode(["a"], late_chunking_overlap=8)


def test_bad_options(model):
    with pytest.raises(ValueError, match=r'task "retrieval" is not supported; accepted values are retrieval.query, .*none'):
        model.encode(["a"], task="retrieval")
    with pytest.raises(ValueError, match="dimensions 129 is out of range: it must be between 1 and 128"):
        model.encode(["a"], dimensions=129)
    with pytest.raises(ValueError, match="dimensions 0 is out of range"):
        model.encode(["a"], dimensions=0)
    with pytest.raises(ValueError, match="dimensions 0 is out of range"):
        model.encode([], dimensions=0)
    with pytest.raises(OverflowError):
        model.encode(["a"], dimensions=-1)
    with pytest.raises(ValueError, match='embedding_type "int8" is not supported; accepted values are float'):
        model.encode(["a"], embedding_type="int8")
    with pytest.raises(ValueError, match="base64"):
        model.encode(["a"], embedding_type="base64")
    with pytest.raises(ValueError, match="task"):
        model.tokenize(["a"], task="nope")


def test_bad_inputs_name_the_item(model):
    with pytest.raises(TypeError, match=r"texts\[2\] is int, not str"):
        model.encode(["a", "b", 3])
    with pytest.raises(TypeError, match=r"texts\[1\] is None, not str"):
        model.encode(pa.array(["a", None]))
    with pytest.raises(TypeError, match="not a single str"):
        model.encode("a single text")
    with pytest.raises(TypeError, match=r"texts\[0\] is bytes"):
        model.encode([b"bytes"])
    with pytest.raises(ValueError, match="1-D"):
        model.encode(np.array([["a", "b"]]))
    with pytest.raises(TypeError):
        model.encode(42)


def test_load_options(fixture_dir):
    with pytest.raises(ValueError, match='precision "fp8" is not supported; accepted values are f32, bf16, int8'):
        Model(fixture_dir, precision="fp8")
    with pytest.raises(ValueError, match="threads 0 is out of range"):
        Model(fixture_dir, threads=0)
    with pytest.raises(ValueError, match="max_batch_tokens 0 is out of range"):
        Model(fixture_dir, max_batch_tokens=0)


def test_missing_and_corrupt_files(fixture_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a folder nor a hub id"):
        Model(str(tmp_path / "no-such-folder"))
    broken = tmp_path / "broken"
    shutil.copytree(fixture_dir, broken)
    os.remove(broken / "model.safetensors")
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        Model(broken)
    with open(broken / "model.safetensors", "wb") as f:
        f.write(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(ValueError, match="model.safetensors"):
        Model(broken)
    os.remove(broken / "config.json")
    with pytest.raises(FileNotFoundError, match="config.json is missing"):
        Model(broken)


def test_hub_ids_come_from_the_cache(fixture_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ModelNotCachedError, match="jinaai/jina-embeddings-v3 is not in the Hugging Face cache") as err:
        Model("jinaai/jina-embeddings-v3", offline=True)
    assert isinstance(err.value, FileNotFoundError) and "not downloaded: offline" in str(err.value)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotCachedError):
        Model("jinaai/jina-embeddings-v3")
    # The huggingface_hub layout: blobs, a snapshot of symlinks, refs/main.
    repo = tmp_path / "cache" / "models--jinaai--jina-embeddings-v3"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "blobs").mkdir()
    (repo / "refs").mkdir()
    for name in jina_embeddings._native.MODEL_FILES:
        shutil.copy(os.path.join(fixture_dir, name), repo / "blobs" / name)
        os.symlink(f"../../blobs/{name}", repo / "snapshots" / commit / name)
    (repo / "refs" / "main").write_text(commit)
    m = Model("jinaai/jina-embeddings-v3")
    assert m.info()["path"].endswith(commit)
    assert m.model == "jinaai/jina-embeddings-v3"
    np.testing.assert_array_equal(m.encode(["x"]), Model(fixture_dir).encode(["x"]))


def test_device_is_chosen_by_name_and_reported(fixture_dir, monkeypatch):
    monkeypatch.delenv("JINA_DEVICE", raising=False)
    model = jina_embeddings.Model(fixture_dir, device="cpu")
    info = model.info()
    assert info["device"] == "cpu" and info["requested_device"] == "cpu"
    assert info["gpu_adapter"] is None
    # The default is auto: the CPU here (no GPU feature, or only lavapipe, which auto never takes),
    # with the reason.
    auto = jina_embeddings.Model(fixture_dir).info()
    assert auto["requested_device"] == "auto" and auto["device"] == "cpu"
    assert auto["device_fallbacks"], auto
    with pytest.raises(ValueError, match="device \"tpu\" is not supported; accepted values are cpu, gpu, auto"):
        jina_embeddings.Model(fixture_dir, device="tpu")
    monkeypatch.setenv("JINA_DEVICE", "nope")
    with pytest.raises(ValueError, match="JINA_DEVICE"):
        jina_embeddings.Model(fixture_dir)


def test_a_gpu_that_cannot_run_is_a_clear_runtime_error(fixture_dir, monkeypatch):
    # A wheel without the `gpu` feature says how to build one; with it (CI builds it so), no
    # adapter has this name. Either way a RuntimeError that says why, never a crash.
    monkeypatch.setenv("JINA_GPU_ADAPTER", "no-such-adapter")
    with pytest.raises(RuntimeError, match="--features gpu|no GPU adapter was found"):
        jina_embeddings.Model(fixture_dir, device="gpu")
