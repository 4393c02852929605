"""Ray Data integration: ``Dataset.map_batches(Embedder, ...)`` embeds a text column on actors.

>>> import ray
>>> from jina_embeddings.ray import Embedder
>>> ds = ray.data.read_parquet("corpus.parquet")
>>> ds = ds.map_batches(
...     Embedder,
...     fn_constructor_kwargs={"model": "jinaai/jina-embeddings-v3", "task": "retrieval.passage",
...                            "dimensions": 256, "precision": "bf16"},
...     compute=ray.data.ActorPoolStrategy(size=2),  # two actors; concurrency=2 on Ray < 2.51
...     num_cpus=8, batch_size=256)
>>> ds.write_parquet("vectors/")

Each actor loads the model once, in its constructor. Ray itself is not imported here: the class
only needs what Ray hands it, so this module imports without Ray installed.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional, Union

import numpy as np

from . import DEFAULT_MODEL, Model

__all__ = ["Embedder"]


def _assigned_cpus() -> Optional[int]:
    """The CPUs Ray gave this actor (``num_cpus``), so that the model's threads match its share."""
    try:
        import ray

        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
    except Exception:  # not inside a Ray worker, or an older Ray
        return None
    return max(1, int(cpus)) if cpus else None


class Embedder:
    """A callable class for ``ray.data.Dataset.map_batches``: reads ``text_column`` and adds
    ``embedding_column`` (one vector per row; uint8 / int8 bits for ``ubinary`` / ``binary``).

    Args:
        model: a folder or a hub id (each worker resolves it from its own cache).
        task, dimensions, normalize, late_chunking, truncate, embedding_type: as ``Model.encode``.
        precision, offline, max_batch_tokens: as ``Model``.
        threads: compute threads; by default the CPUs Ray assigned the actor (``num_cpus``),
            else one per core.
        text_column: the column holding the text (``"text"``).
        embedding_column: the column written (``"embedding"``).

    Batches may come as a dict of numpy arrays (Ray's default), a pandas DataFrame or a pyarrow
    Table; the same kind is returned.
    """

    def __init__(
        self,
        model: Union[str, os.PathLike] = DEFAULT_MODEL,
        task: Optional[str] = None,
        dimensions: Optional[int] = None,
        precision: str = "f32",
        threads: Optional[int] = None,
        normalize: bool = True,
        late_chunking: bool = False,
        truncate: bool = False,
        embedding_type: str = "float",
        text_column: str = "text",
        embedding_column: str = "embedding",
        offline: Optional[bool] = None,
        max_batch_tokens: int = 16384,
    ) -> None:
        self.model = Model(
            model,
            precision=precision,
            threads=threads if threads is not None else _assigned_cpus(),
            offline=offline,
            max_batch_tokens=max_batch_tokens,
        )
        self.text_column = text_column
        self.embedding_column = embedding_column
        self.options = dict(
            task=task,
            dimensions=dimensions,
            normalize=normalize,
            late_chunking=late_chunking,
            truncate=truncate,
            embedding_type=embedding_type,
        )

    def __call__(self, batch: Any) -> Any:
        if isinstance(batch, dict):
            vectors = self._embed(batch, list(batch))
            out: Dict[str, Any] = dict(batch)
            out[self.embedding_column] = vectors  # a 2-D array: Ray stores it as a tensor column
            return out
        if hasattr(batch, "append_column") and hasattr(batch, "column_names"):  # pyarrow Table
            import pyarrow as pa

            vectors = self._embed(batch, batch.column_names)
            width = vectors.shape[1]
            column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), width)
            return batch.append_column(self.embedding_column, column)
        if hasattr(batch, "columns") and hasattr(batch, "assign"):  # pandas DataFrame
            vectors = self._embed(batch, list(batch.columns))
            out = batch.copy()
            out[self.embedding_column] = list(vectors)
            return out
        raise TypeError(
            f"Embedder got a batch of type {type(batch).__name__}; expected a dict of numpy arrays, "
            "a pandas DataFrame or a pyarrow Table (map_batches' batch_format)"
        )

    def _embed(self, batch: Any, columns: Any) -> np.ndarray:
        if self.text_column not in columns:
            raise KeyError(
                f"the batch has no column {self.text_column!r} (columns: {', '.join(map(str, columns))}); "
                "set text_column in fn_constructor_kwargs"
            )
        return self.model.encode(batch[self.text_column], **self.options)
