"""LangChain integration: ``JinaEmbeddings``, a ``langchain_core.embeddings.Embeddings`` that runs
the model in this process (``pip install "jina-embeddings-rs[langchain]"``).

>>> from langchain_core.vectorstores import InMemoryVectorStore
>>> from jina_embeddings.langchain import JinaEmbeddings
>>> embeddings = JinaEmbeddings("jinaai/jina-embeddings-v3", dimensions=256)
>>> store = InMemoryVectorStore.from_texts(["Paris is the capital of France."], embeddings)
>>> store.similarity_search("What is the capital of France?", k=1)

Documents are embedded with the ``retrieval.passage`` adapter, queries with ``retrieval.query``
(the pair the model was trained to match). The async methods are LangChain's own: they run the
sync ones in a thread pool, and since the engine releases the GIL they do run concurrently.
LangChain is imported here, not by ``jina_embeddings`` itself.
"""

from __future__ import annotations

import os
from typing import List, Optional, Union

try:
    from langchain_core.embeddings import Embeddings
except ImportError as missing:  # pragma: no cover - the message is the point
    raise ImportError(
        "jina_embeddings.langchain needs langchain-core: pip install \"jina-embeddings-rs[langchain]\""
    ) from missing

from . import DEFAULT_MODEL, Model

__all__ = ["JinaEmbeddings"]


class JinaEmbeddings(Embeddings):
    """LangChain ``Embeddings`` on an in-process ``Model``.

    Args:
        model: a folder, a hub id, or a loaded ``Model`` (shared, not copied).
        dimensions: keep the first N dimensions (Matryoshka); default the model's full width.
        query_task, document_task: the adapters of ``embed_query`` and ``embed_documents``.
        precision, threads, offline: as ``Model`` (ignored when ``model`` is a ``Model``).
        truncate: cut texts over the token limit instead of raising ``ValueError``.
    """

    def __init__(
        self,
        model: Union[str, os.PathLike, Model] = DEFAULT_MODEL,
        *,
        dimensions: Optional[int] = None,
        query_task: str = "retrieval.query",
        document_task: str = "retrieval.passage",
        precision: str = "f32",
        threads: Optional[int] = None,
        offline: Optional[bool] = None,
        truncate: bool = False,
    ) -> None:
        self.model = model if isinstance(model, Model) else Model(
            model, precision=precision, threads=threads, offline=offline
        )
        self.dimensions = dimensions
        self.query_task = query_task
        self.document_task = document_task
        self.truncate = truncate

    def _encode(self, texts: List[str], task: str) -> List[List[float]]:
        return self.model.encode(
            texts, task=task, dimensions=self.dimensions, truncate=self.truncate
        ).tolist()

    def embed_documents(self, texts: List[str]) -> List[List[float]]:
        """One vector per text, with the ``document_task`` adapter (``retrieval.passage``)."""
        if not texts:
            return []
        return self._encode(list(texts), self.document_task)

    def embed_query(self, text: str) -> List[float]:
        """The vector of one query, with the ``query_task`` adapter (``retrieval.query``)."""
        return self._encode([text], self.query_task)[0]
