"""Shared fixtures: the small formula checkpoint (written once per session by the package's own
write_fixture, the engine's formula) and the vendored golden outputs of the official code."""

import json
import pathlib

import pytest

import jina_embeddings

GOLDEN = pathlib.Path(__file__).resolve().parents[2] / "engine" / "tests" / "fixtures" / "golden-small.json"


@pytest.fixture(scope="session")
def fixture_dir(tmp_path_factory) -> str:
    return jina_embeddings.write_fixture(tmp_path_factory.mktemp("small-fixture"), seed=1)


@pytest.fixture(scope="session")
def model(fixture_dir) -> jina_embeddings.Model:
    return jina_embeddings.Model(fixture_dir)


@pytest.fixture(scope="session")
def golden() -> dict:
    data = json.loads(GOLDEN.read_text())
    assert data["variant"] == "small" and data["seed"] == 1
    return data


def mixed_texts(n: int, seed: int = 7) -> list:
    """Deterministic texts of mixed lengths (1 to ~400 words), in several scripts."""
    import random

    rng = random.Random(seed)
    words = "the capital of France is Paris Berlin liegt an der Spree 東京は日本の首都です Москва столица".split()
    return [" ".join(rng.choice(words) for _ in range(rng.choice([1, 3, 10, 40, 120, 400]))) for _ in range(n)]
