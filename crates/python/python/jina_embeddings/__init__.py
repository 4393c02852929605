"""jina-embeddings-v3 in-process: the project's Rust engine as a Python package.

>>> from jina_embeddings import Model
>>> m = Model("jinaai/jina-embeddings-v3")          # a hub id in the Hugging Face cache, or a folder
>>> m.encode_query(["What is the capital of France?"], dimensions=256).shape
(1, 256)

The GIL is released while the engine computes, so several Python threads can encode at once;
each ``Model`` has its own compute threads (``threads=``). A ``Model`` pickles by reference (its
path and options, not its weights): Ray, Spark and ``multiprocessing`` ship it to workers, and
each worker loads it once.
"""

from __future__ import annotations

import json
import os
import threading
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np

from . import _native
from ._native import DEFAULT_MODEL, DEFAULT_TASK, NO_TASK, ModelNotCachedError

__all__ = [
    "Model",
    "train",
    "ModelNotCachedError",
    "write_fixture",
    "DEFAULT_MODEL",
    "DEFAULT_TASK",
    "NO_TASK",
]

#: What ``encode`` accepts: a list (or any sequence) of str, a 1-D numpy array of str, or a
#: pyarrow string array / chunked array (a pandas Series works too).
Texts = Union[Sequence[str], "np.ndarray", Any]

def write_fixture(folder: Union[str, os.PathLike], seed: int = 1) -> str:
    """Writes the ``small`` formula checkpoint (hidden 128, 2 layers) into ``folder``.

    It is the checkpoint the project's golden outputs of the official code were computed on
    (seed 1); the same as ``jina-embed fixture``. Returns the folder.
    """
    folder = os.fspath(folder)
    _native.write_fixture(folder, seed)
    return folder


def _as_list(texts: Texts) -> Any:
    """Turns numpy and pyarrow inputs into a list of str; other iterables go through as they are
    (the engine checks every item and names the first one that is not a str)."""
    if isinstance(texts, str):
        raise TypeError("texts must be a list of str, not a single str: wrap it as [text]")
    if isinstance(texts, np.ndarray):
        if texts.ndim != 1:
            raise ValueError(f"texts must be a 1-D array, not one of shape {texts.shape}")
        return texts.tolist()
    to_pylist = getattr(texts, "to_pylist", None)  # pyarrow Array / ChunkedArray
    if callable(to_pylist):
        return to_pylist()
    to_list = getattr(texts, "tolist", None)  # pandas Series
    if callable(to_list):
        return to_list()
    return texts


def _resolve(model: str, offline: Optional[bool]) -> str:
    """The folder of ``model``: a folder as it is, or a hub id from the Hugging Face cache,
    downloaded there first with ``huggingface_hub`` when it is missing and downloads are allowed."""
    try:
        folder, _commit = _native.resolve(model)
        return folder
    except ModelNotCachedError as not_cached:
        if offline is None:
            offline = any(
                os.environ.get(v, "").lower() in ("1", "true", "yes", "on")
                for v in ("JINA_OFFLINE", "HF_HUB_OFFLINE")
            )
        if offline:
            raise ModelNotCachedError(f"{not_cached}\n(not downloaded: offline)") from None
        try:
            import huggingface_hub
        except ImportError:
            raise ModelNotCachedError(
                f"{not_cached}\n(not downloaded: pip install huggingface_hub to let Model fetch it)"
            ) from None
        repo, _, revision = model.partition("@")
        huggingface_hub.snapshot_download(
            repo, revision=revision or None, allow_patterns=list(_native.MODEL_FILES)
        )
        folder, _commit = _native.resolve(model)
        return folder


class Model:
    """A jina-embeddings-v3 model loaded in this process.

    Args:
        model: a model folder (``config.json``, ``tokenizer.json``, ``model.safetensors``) or a
            hub id ``owner/name[@revision]`` found in the Hugging Face cache (``HF_HUB_CACHE``,
            ``HF_HOME/hub`` or ``~/.cache/huggingface/hub``). A hub id that is not cached is
            fetched with ``huggingface_hub`` if it is installed, unless ``offline``.
        precision: ``"f32"`` (the official numbers), ``"bf16"`` or ``"int8"``; on a CPU without
            the instructions a precision needs the engine falls back (``info()["precision"]``
            says what runs).
        threads: compute threads of this model (default: one per core). Each model has its own.
        offline: never download (default: ``JINA_OFFLINE`` or ``HF_HUB_OFFLINE`` set).
        max_batch_tokens: token budget of one forward pass.
        device: where the encoder runs: ``"cpu"``, ``"gpu"`` (a GPU through wgpu; needs a
            package built with the ``gpu`` feature) or ``"auto"`` (a hardware GPU when there is
            one, else the CPU); default ``JINA_DEVICE``, else ``"auto"``. ``info()["device"]``
            says what runs.
        adapters: custom tasks to serve beside the built-in five, ``{name: folder}`` (folders
            from ``jina-embed train`` or ``train()``, or PEFT folders); ``encode(task=name)``
            then uses them, mixed with built-in tasks in one batch. More can be added with
            ``load_adapter``.

    Raises:
        FileNotFoundError: the folder or one of its files is missing, or the hub id is not
            cached (``ModelNotCachedError``, whose message gives the download command).
        ValueError: a file is invalid (the message names it), or an option is out of range.
    """

    def __init__(
        self,
        model: Union[str, os.PathLike] = DEFAULT_MODEL,
        *,
        precision: str = "f32",
        threads: Optional[int] = None,
        offline: Optional[bool] = None,
        max_batch_tokens: int = 16384,
        adapters: Optional[Dict[str, Union[str, os.PathLike]]] = None,
        device: Optional[str] = None,
    ) -> None:
        spec = os.fspath(model)
        # A folder is kept absolute so that an unpickled copy finds it from any working directory.
        if os.path.isdir(spec):
            spec = os.path.abspath(spec)
        self._spec = spec
        self._base_options = dict(
            precision=precision, threads=threads, offline=offline, max_batch_tokens=max_batch_tokens,
            device=device,
        )
        folder = _resolve(spec, offline)
        self._native = _native.Model(
            folder, precision=precision, threads=threads, max_batch_tokens=max_batch_tokens,
            device=device,
        )
        self._adapters: Dict[str, str] = {}
        for name, path in (adapters or {}).items():
            self.load_adapter(path, name=name)

    @property
    def _options(self) -> Dict[str, Any]:
        # What an unpickled copy is built with: the custom tasks travel as folders.
        return dict(self._base_options, adapters=dict(self._adapters))

    def load_adapter(self, folder: Union[str, os.PathLike], name: Optional[str] = None) -> str:
        """Serves an adapter folder as the task ``name`` (default: the name in its
        ``jina_adapter.json``); returns the name. Raises ``ValueError`` for a folder that is
        malformed, for another base model, or a name that is taken."""
        path = os.path.abspath(os.fspath(folder))
        loaded = self._native.load_adapter(path, name=name)
        self._adapters[loaded] = path
        return loaded

    def unload_adapter(self, name: str) -> None:
        """Stops serving the custom task ``name``."""
        self._native.unload_adapter(name)
        self._adapters.pop(name, None)

    def adapters(self) -> List[Dict[str, Any]]:
        """The custom tasks served: ``name``, ``prefix``, ``path`` and ``metadata`` (the
        folder's ``jina_adapter.json``)."""
        out = []
        for a in self._native.adapters():
            out.append(dict(name=a["name"], prefix=a["prefix"], path=self._adapters.get(a["name"]),
                            metadata=json.loads(a["metadata"])))
        return out

    # Pickling by reference: the path and options travel, the weights do not.
    def __reduce__(self):
        return (_restore, (self._spec, self._options))

    def __repr__(self) -> str:
        info = self._native.info()
        return f"Model({self._spec!r}, precision={info['precision']!r}, threads={info['threads']})"

    @property
    def model(self) -> str:
        """The model as given (a hub id, or the folder's absolute path)."""
        return self._spec

    def info(self) -> Dict[str, Any]:
        """What was loaded: ``precision`` (resolved on this CPU), ``dimensions``,
        ``matryoshka_dimensions``, ``tasks``, ``default_task``, ``max_tokens``, ``threads``,
        ``path``, ``weights_dtype``, ``parameters``, ``max_batch_tokens``, ``device`` (``cpu``
        or ``gpu``), ``requested_device``, ``device_summary``, ``gpu_adapter``,
        ``device_fallbacks``."""
        return self._native.info()

    def encode(
        self,
        texts: Texts,
        *,
        task: Optional[str] = None,
        dimensions: Optional[int] = None,
        normalize: bool = True,
        late_chunking: bool = False,
        late_chunking_overlap: Optional[int] = None,
        truncate: bool = False,
        embedding_type: str = "float",
        progress: bool = False,
    ) -> np.ndarray:
        """Embeds ``texts``; one row per text, in order.

        Args:
            texts: a list of str, a 1-D numpy array of str, or a pyarrow string array.
            task: ``retrieval.query``, ``retrieval.passage``, ``separation``,
                ``classification``, ``text-matching`` or a custom task (``adapters=``,
                ``load_adapter``); ``None`` is the model's default task
                (text-matching); ``"none"`` the base weights without adapter or prefix.
            dimensions: keep the first N dimensions (Matryoshka), then normalise.
            normalize: L2-normalise (default).
            late_chunking: embed the texts as chunks of one document: one forward pass, one
                vector per chunk, each seeing the whole document.
            late_chunking_overlap: with ``late_chunking``, let the document exceed the token
                limit: it runs in windows overlapping by this many tokens.
            truncate: cut texts over the token limit instead of raising ``ValueError``.
            embedding_type: ``"float"`` (float32 ``(n, dimensions)``), ``"ubinary"`` (sign bits
                packed MSB-first, uint8 ``(n, ceil(dimensions/8))``) or ``"binary"`` (the same
                minus 128, int8).
            progress: show a progress bar (tqdm if installed, else a line on stderr).

        Returns:
            A numpy array that owns the engine's buffer (no copy).

        Raises:
            ValueError: a text is too long (naming its index, token count and the limit), an
                unknown task, ``dimensions`` out of range, an unknown ``embedding_type``.
            TypeError: an item is not a str (naming its index).
        """
        items = _as_list(texts)
        options = dict(
            task=task,
            dimensions=dimensions,
            normalize=normalize,
            late_chunking=late_chunking,
            late_chunking_overlap=late_chunking_overlap,
            truncate=truncate,
            embedding_type=embedding_type,
        )
        if not progress:
            return self._native.encode(items, **options)
        with _progress_bar() as bar:
            return self._native.encode(items, progress=bar.update_to, **options)

    def encode_query(self, texts: Texts, **kwargs: Any) -> np.ndarray:
        """``encode`` with ``task="retrieval.query"``: for search queries."""
        return self.encode(texts, task="retrieval.query", **kwargs)

    def encode_document(self, texts: Texts, **kwargs: Any) -> np.ndarray:
        """``encode`` with ``task="retrieval.passage"``: for the documents searched."""
        return self.encode(texts, task="retrieval.passage", **kwargs)

    def tokenize(self, texts: Texts, *, task: Optional[str] = None) -> List[Dict[str, list]]:
        """The tokens of each text as the model sees them for ``task`` (default: the model's
        default task): ``<s>``, the task's instruction prefix, the text, ``</s>``. One dict per
        text with ``ids`` (list of int) and ``tokens`` (list of str)."""
        return self._native.tokenize(_as_list(texts), task=task)


def _pairs(data: Any) -> Any:
    """A path (JSONL, CSV, TSV: read by the engine; Parquet: read here with pyarrow), or rows:
    dicts with ``query``/``anchor``, ``positive`` and optional ``negatives``/``negative``, or
    ``(query, positive[, negatives])`` tuples."""
    if isinstance(data, (str, os.PathLike)):
        path = os.fspath(data)
        if not path.lower().endswith((".parquet", ".pq")):
            return path
        import pyarrow.parquet as pq

        data = pq.read_table(path).to_pylist()
    rows = []
    for i, row in enumerate(data):
        if isinstance(row, dict):
            query = row.get("query", row.get("anchor"))
            negatives = row.get("negatives", row.get("negative")) or []
            if isinstance(negatives, str):
                negatives = [negatives]
            positive = row.get("positive")
        else:
            query, positive, *rest = row
            negatives = list(rest[0]) if rest else []
        if not isinstance(query, str) or not isinstance(positive, str):
            raise TypeError(f"data[{i}] needs str `query` (or `anchor`) and `positive`, got {row!r}")
        rows.append((query, positive, list(negatives)))
    return rows


def train(
    data: Any,
    *,
    name: str,
    out: Union[str, os.PathLike],
    model: Union[str, os.PathLike] = DEFAULT_MODEL,
    from_task: Optional[str] = "retrieval.query",
    eval: Any = None,
    epochs: int = 1,
    lr: float = 5e-4,
    batch: int = 32,
    max_tokens: int = 256,
    seed: int = 0,
    threads: Optional[int] = None,
    resume: bool = False,
    prefix: Optional[str] = None,
    joint: Optional[bool] = None,
    passage_task: Optional[str] = None,
    symmetric: bool = False,
    matryoshka: Optional[List[int]] = None,
    scale: float = 20.0,
    warmup: float = 0.1,
    weight_decay: float = 0.01,
    max_grad_norm: float = 1.0,
    chunk_tokens: int = 0,
    offline: Optional[bool] = None,
    progress: bool = False,
) -> Dict[str, Any]:
    """Trains a new task adapter on (query, positive, negatives) pairs on this CPU, as
    ``jina-embed train`` does (same options, same folder), and returns
    ``{"path": out, "report": {...}}`` with the loss per epoch and the evaluation figures
    (recall@1/@10, MRR@10, nDCG@10 on ``eval`` before training and after each epoch).

    ``data`` and ``eval``: a JSONL, CSV, TSV or Parquet path, or a list of dicts or tuples.
    Query-side by default from ``retrieval.query`` (passages stay under the frozen
    ``retrieval.passage``, so an existing passage index stays valid); ``joint=True`` trains
    both sides. Ctrl-C stops after the current step; ``resume=True`` goes on from the
    checkpoint. Serve the result with ``Model(..., adapters={name: out})``.
    """
    folder = _resolve(os.fspath(model), offline)
    out = os.path.abspath(os.fspath(out))
    import sys

    def on_step(step: int, total: int, loss: float) -> None:
        if progress:
            sys.stderr.write(f"\rtraining {name}: step {step}/{total}, loss {loss:.4f}")
            sys.stderr.flush()

    report = _native.train(
        folder, _pairs(data), name, out, from_task, eval=None if eval is None else _pairs(eval),
        epochs=epochs, lr=lr, batch=batch, max_tokens=max_tokens, seed=seed, threads=threads,
        resume=resume, prefix=prefix, joint=joint, passage_task=passage_task, symmetric=symmetric,
        matryoshka=matryoshka, scale=scale, warmup=warmup, weight_decay=weight_decay,
        max_grad_norm=max_grad_norm, chunk_tokens=chunk_tokens, progress=on_step,
    )
    if progress:
        sys.stderr.write("\n")
    return {"path": out, "report": json.loads(report)}


def _restore(spec: str, options: Dict[str, Any]) -> Model:
    return Model(spec, **options)


class _progress_bar:
    """A progress bar fed ``(done, total)`` by the engine after each forward pass: tqdm when it
    is installed, otherwise one line on stderr redrawn in place."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._bar = None

    def __enter__(self) -> "_progress_bar":
        return self

    def update_to(self, done: int, total: int) -> None:
        with self._lock:
            if self._bar is None:
                try:
                    from tqdm.auto import tqdm

                    self._bar = tqdm(total=total, unit="seq", desc="embedding")
                except ImportError:
                    self._bar = _LineBar(total)
            self._bar.update(done - self._bar.n)

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.close()


class _LineBar:
    """The fallback bar: ``embedding 512/1000 seq`` on stderr."""

    def __init__(self, total: int) -> None:
        import sys

        self.n, self.total, self._out = 0, total, sys.stderr

    def update(self, k: int) -> None:
        self.n += k
        self._out.write(f"\rembedding {self.n}/{self.total} seq")
        self._out.flush()

    def close(self) -> None:
        self._out.write("\n")
        self._out.flush()
