"""Text-embedding caches: an in-memory LRU per processor and an optional on-disk store shared by processes.

Text embeddings depend only on the text tower's weights, the dtype, the prompt templates and the class names;
both caches key on these, so a repeated label set never runs the text tower again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections import OrderedDict
from pathlib import Path

import torch

from .errors import first_line

logger = logging.getLogger(__name__)


class TextEmbeddingCache:
    """A thread-safe LRU cache of text embeddings, bounded to ``max_entries`` label sets (least recently used
    first out). Two threads asking for the same missing key may both compute it; the entries never mix."""

    def __init__(self, max_entries: int = 32) -> None:
        if max_entries < 1:
            raise ValueError(f"the text cache needs max_entries >= 1, got {max_entries}")
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple) -> torch.Tensor | None:
        with self._lock:
            value = self._entries.get(key)
            if value is None:
                self.misses += 1
            else:
                self.hits += 1
                self._entries.move_to_end(key)
            return value

    def put(self, key: tuple, value: torch.Tensor) -> None:
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def __deepcopy__(self, memo: dict) -> TextEmbeddingCache:
        return TextEmbeddingCache(self.max_entries)  # a copied processor starts with an empty cache


def text_tower_fingerprint(model: torch.nn.Module) -> str:
    """sha256 of the weights that determine text embeddings (the text tower and its projection), computed
    once per model object."""
    cached = getattr(model, "_hf_ovseg_text_fingerprint", None)
    if cached is None:
        digest = hashlib.sha256()
        for name, tensor in sorted(model.state_dict().items()):
            if name.startswith(("text_model.", "text_projection.")):
                digest.update(name.encode())
                digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        cached = digest.hexdigest()
        model._hf_ovseg_text_fingerprint = cached
    return cached


class DiskTextCache:
    """Text embeddings kept on disk across processes, one safetensors file per (text-tower weights, dtype,
    templates, labels): a second ``hf-ovseg segment`` with the same labels runs no text tower. Each file
    stores its key and the sha256 of its tensor; a file that does not read back whole is recomputed.

    The default folder is ``$HF_HOME/hf_ovseg/text_embeddings`` (``~/.cache/huggingface/...``)."""

    def __init__(self, folder: str | os.PathLike | None = None) -> None:
        if folder is None:
            from huggingface_hub import constants

            folder = Path(constants.HF_HOME) / "hf_ovseg" / "text_embeddings"
        self.folder = Path(folder)

    @staticmethod
    def key(model: torch.nn.Module, dtype: torch.dtype, templates: list[str], names: tuple[str, ...]) -> str:
        payload = json.dumps([text_tower_fingerprint(model), str(dtype), list(templates), list(names)])
        return hashlib.sha256(payload.encode()).hexdigest()

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.safetensors"

    def get(self, key: str) -> torch.Tensor | None:
        path = self.path(key)
        if not path.is_file():
            return None
        from safetensors import safe_open

        try:
            with safe_open(path, "pt") as entry:
                metadata = entry.metadata() or {}
                tensor = entry.get_tensor("embeddings")
            intact = metadata.get("key") == key and metadata.get("sha256") == _tensor_digest(tensor)
        except Exception as error:  # safetensors raises its own errors for a damaged file
            logger.warning("text cache entry %s cannot be read (%s): recomputing it", path, first_line(error))
            return None
        if not intact:
            logger.warning("text cache entry %s is corrupted (checksum mismatch): recomputing it", path)
            return None
        return tensor

    def put(self, key: str, tensor: torch.Tensor) -> None:
        from safetensors.torch import save_file

        tensor = tensor.detach().to("cpu").contiguous()
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            partial = self.path(key).with_suffix(f".{os.getpid()}.partial")
            save_file({"embeddings": tensor}, partial, metadata={"key": key, "sha256": _tensor_digest(tensor)})
            os.replace(partial, self.path(key))
        except OSError as error:  # a read-only cache folder only costs the text tower next time
            logger.warning("cannot write the text cache in %s (%s)", self.folder, first_line(error))


def _tensor_digest(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.to(torch.float32).contiguous().numpy().tobytes()).hexdigest()


__all__ = ["DiskTextCache", "TextEmbeddingCache", "text_tower_fingerprint"]
