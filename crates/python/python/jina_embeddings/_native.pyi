"""Type stubs of the Rust extension module (crates/python/src/lib.rs)."""

from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple, Union

import numpy as np

DEFAULT_MODEL: str
DEFAULT_TASK: str
NO_TASK: str
MODEL_FILES: List[str]

class ModelNotCachedError(FileNotFoundError):
    """A hub id that is not in the Hugging Face cache (the message says how to fetch it)."""

def resolve(spec: str) -> Tuple[str, Optional[str]]:
    """``(folder, commit)`` of a folder or a cached hub id; ``commit`` is None for a folder."""

def write_fixture(folder: str, seed: int = 1) -> None:
    """Writes the ``small`` formula checkpoint into ``folder``."""

class Model:
    """A loaded model folder with its own compute threads."""

    def __init__(
        self,
        folder: str,
        precision: str = "f32",
        threads: Optional[int] = None,
        max_batch_tokens: int = 16384,
        device: Optional[str] = None,
    ) -> None: ...
    def encode(
        self,
        texts: Iterable[str],
        task: Optional[str] = None,
        dimensions: Optional[int] = None,
        normalize: bool = True,
        late_chunking: bool = False,
        late_chunking_overlap: Optional[int] = None,
        truncate: bool = False,
        embedding_type: str = "float",
        progress: Optional[Callable[[int, int], Any]] = None,
    ) -> np.ndarray: ...
    def tokenize(self, texts: Iterable[str], task: Optional[str] = None) -> List[Dict[str, list]]: ...
    def info(self) -> Dict[str, Any]: ...
    def load_adapter(self, folder: str, name: Optional[str] = None) -> str: ...
    def unload_adapter(self, name: str) -> None: ...
    def adapters(self) -> List[Dict[str, str]]:
        """``[{"name", "prefix", "metadata"}]``, ``metadata`` as JSON text."""

def train(
    folder: str,
    data: Union[str, List[Tuple[str, str, List[str]]]],
    name: str,
    out: str,
    from_task: Optional[str],
    eval: Optional[Union[str, List[Tuple[str, str, List[str]]]]] = None,
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
    progress: Optional[Callable[[int, int, float], Any]] = None,
) -> str:
    """Trains an adapter into ``out``; returns the report as JSON text."""
