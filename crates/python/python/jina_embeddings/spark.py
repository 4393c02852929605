"""Spark integration: a ``predict_batch_udf`` that embeds a string column on the executors.

>>> from pyspark.sql import SparkSession
>>> from jina_embeddings.spark import embed_udf
>>> spark = SparkSession.builder.getOrCreate()
>>> embed = embed_udf("/models/jina-embeddings-v3", task="retrieval.passage", dimensions=256,
...                   precision="bf16", batch_size=256)
>>> df = spark.read.parquet("corpus.parquet").withColumn("embedding", embed("text"))
>>> df.write.parquet("vectors/")

The column ``embedding`` is ``array<float>``, one vector per row. Each Python worker process
loads the model once, on its first batch, and keeps it for the batches after (Spark reuses its
Python workers: ``spark.python.worker.reuse``, on by default). ``make_predict_fn`` is the piece
to hand to ``pyspark.ml.functions.predict_batch_udf`` yourself when you want its other options.

PySpark is imported only by ``embed_udf``: the rest of this module, and the package, work without
it.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Callable, Dict, Optional, Tuple, Union

import numpy as np

from . import DEFAULT_MODEL, Model

__all__ = ["embed_udf", "make_predict_fn", "load_model"]

# One model per (model, precision, threads, ...) in each worker process. predict_batch_udf also
# caches what make_predict_fn returns, but only for the UDF object it was made for: two UDFs on
# the same model (say one for queries, one for passages) share the weights through this.
_models: Dict[Tuple[Any, ...], Model] = {}
_models_lock = threading.Lock()


def load_model(
    model: Union[str, os.PathLike] = DEFAULT_MODEL,
    precision: str = "f32",
    threads: Optional[int] = None,
    offline: Optional[bool] = None,
    max_batch_tokens: int = 16384,
) -> Model:
    """The process's ``Model`` for these options, loaded on the first call and kept after it."""
    key = (os.fspath(model), precision, threads, offline, max_batch_tokens)
    with _models_lock:
        loaded = _models.get(key)
        if loaded is None:
            loaded = Model(
                model, precision=precision, threads=threads, offline=offline,
                max_batch_tokens=max_batch_tokens,
            )
            _models[key] = loaded
        return loaded


def _task_cpus() -> Optional[int]:
    """The CPUs Spark gives one task (``spark.task.cpus``), so that the model's threads match
    its share of the executor: each concurrent task runs in its own Python worker."""
    try:
        from pyspark import TaskContext

        context = TaskContext.get()
        return max(1, int(context.cpus())) if context is not None else None
    except Exception:  # not in a Spark task, or a PySpark without TaskContext.cpus()
        return None


def make_predict_fn(
    model: Union[str, os.PathLike] = DEFAULT_MODEL,
    *,
    task: Optional[str] = None,
    dimensions: Optional[int] = None,
    precision: str = "f32",
    threads: Optional[int] = None,
    normalize: bool = True,
    truncate: bool = False,
    offline: Optional[bool] = None,
    max_batch_tokens: int = 16384,
) -> Callable[[], Callable[[np.ndarray], np.ndarray]]:
    """A ``make_predict_fn`` for ``pyspark.ml.functions.predict_batch_udf``.

    Called once per Python worker, it loads the model (``load_model``) and returns a function
    from a batch of texts (a 1-D numpy array of str) to float32 vectors ``(batch, dimensions)``.

    Args:
        model: a folder or a hub id, resolved on each worker (the folder must be on every
            executor, or the hub id in each executor's Hugging Face cache).
        task, dimensions, normalize, truncate: as ``Model.encode``.
        precision, offline, max_batch_tokens: as ``Model``.
        threads: compute threads of each worker's model; by default ``spark.task.cpus``.
    """
    model = os.fspath(model)
    if os.path.isdir(model):
        model = os.path.abspath(model)
    options = dict(task=task, dimensions=dimensions, normalize=normalize, truncate=truncate)

    def make() -> Callable[[np.ndarray], np.ndarray]:
        loaded = load_model(
            model, precision=precision, threads=threads if threads is not None else _task_cpus(),
            offline=offline, max_batch_tokens=max_batch_tokens,
        )

        def predict(texts: np.ndarray) -> np.ndarray:
            return loaded.encode(texts, **options)

        return predict

    return make


def embed_udf(
    model: Union[str, os.PathLike] = DEFAULT_MODEL,
    *,
    task: Optional[str] = None,
    dimensions: Optional[int] = None,
    precision: str = "f32",
    batch_size: int = 64,
    threads: Optional[int] = None,
    normalize: bool = True,
    truncate: bool = False,
    offline: Optional[bool] = None,
    max_batch_tokens: int = 16384,
) -> Any:
    """A Spark UDF from a string column to an ``array<float>`` column of embeddings:
    ``pyspark.ml.functions.predict_batch_udf`` over ``make_predict_fn``.

    Args:
        batch_size: rows per call of the model (Spark's Arrow batches are cut to this size); the
            engine packs each batch into forward passes of up to ``max_batch_tokens`` tokens.
        The others: as ``make_predict_fn``.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    from pyspark.ml.functions import predict_batch_udf
    from pyspark.sql.types import ArrayType, FloatType

    return predict_batch_udf(
        make_predict_fn(
            model, task=task, dimensions=dimensions, precision=precision, threads=threads,
            normalize=normalize, truncate=truncate, offline=offline,
            max_batch_tokens=max_batch_tokens,
        ),
        return_type=ArrayType(FloatType()),
        batch_size=batch_size,
    )
