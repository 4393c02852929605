"""LlamaIndex integration: ``JinaEmbedding``, a ``llama_index.core.embeddings.BaseEmbedding`` that
runs the model in this process (``pip install "jina-embeddings-rs[llamaindex]"``).

>>> from llama_index.core import Settings, VectorStoreIndex, Document
>>> from jina_embeddings.llamaindex import JinaEmbedding
>>> Settings.embed_model = JinaEmbedding("jinaai/jina-embeddings-v3", dimensions=256)
>>> index = VectorStoreIndex.from_documents([Document(text="Paris is the capital of France.")])
>>> index.as_retriever(similarity_top_k=1).retrieve("What is the capital of France?")

Texts (the nodes indexed) are embedded with the ``retrieval.passage`` adapter, queries with
``retrieval.query``. The async methods run the sync ones in a thread (``asyncio.to_thread``):
the engine releases the GIL, so they do run concurrently. LlamaIndex is imported here, not by
``jina_embeddings`` itself.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, List, Optional, Union

try:
    from llama_index.core.bridge.pydantic import PrivateAttr
    from llama_index.core.embeddings import BaseEmbedding
except ImportError as missing:  # pragma: no cover - the message is the point
    raise ImportError(
        "jina_embeddings.llamaindex needs llama-index-core: "
        "pip install \"jina-embeddings-rs[llamaindex]\""
    ) from missing

from . import DEFAULT_MODEL, Model

__all__ = ["JinaEmbedding"]


class JinaEmbedding(BaseEmbedding):
    """LlamaIndex ``BaseEmbedding`` on an in-process ``Model``.

    Args:
        model: a folder, a hub id, or a loaded ``Model`` (shared, not copied). ``model_name``
            records it as given.
        dimensions: keep the first N dimensions (Matryoshka); default the model's full width.
        query_task, text_task: the adapters of queries and of the texts indexed.
        precision, threads, offline: as ``Model`` (ignored when ``model`` is a ``Model``).
        truncate: cut texts over the token limit instead of raising ``ValueError``.
        embed_batch_size: texts per call from LlamaIndex (its own batching; default 64).
    """

    dimensions: Optional[int] = None
    query_task: str = "retrieval.query"
    text_task: str = "retrieval.passage"
    truncate: bool = False
    _model: Model = PrivateAttr()

    def __init__(
        self,
        model: Union[str, os.PathLike, Model] = DEFAULT_MODEL,
        *,
        precision: str = "f32",
        threads: Optional[int] = None,
        offline: Optional[bool] = None,
        embed_batch_size: int = 64,
        **kwargs: Any,
    ) -> None:
        loaded = model if isinstance(model, Model) else Model(
            model, precision=precision, threads=threads, offline=offline
        )
        super().__init__(model_name=loaded.model, embed_batch_size=embed_batch_size, **kwargs)
        self._model = loaded

    @classmethod
    def class_name(cls) -> str:
        return "JinaEmbeddingsRs"

    def _encode(self, texts: List[str], task: str) -> List[List[float]]:
        if not texts:
            return []
        return self._model.encode(
            list(texts), task=task, dimensions=self.dimensions, truncate=self.truncate
        ).tolist()

    def _get_query_embedding(self, query: str) -> List[float]:
        return self._encode([query], self.query_task)[0]

    def _get_text_embedding(self, text: str) -> List[float]:
        return self._encode([text], self.text_task)[0]

    def _get_text_embeddings(self, texts: List[str]) -> List[List[float]]:
        return self._encode(texts, self.text_task)

    async def _aget_query_embedding(self, query: str) -> List[float]:
        return await asyncio.to_thread(self._get_query_embedding, query)

    async def _aget_text_embedding(self, text: str) -> List[float]:
        return await asyncio.to_thread(self._get_text_embedding, text)

    async def _aget_text_embeddings(self, texts: List[str]) -> List[List[float]]:
        return await asyncio.to_thread(self._get_text_embeddings, texts)
