"""Type stubs of the Rust extension module (crates/python/src/lib.rs)."""

from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

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
