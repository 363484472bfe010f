"""A small LRU cache of U-SAM image encodings, one entry per (volume, slice, window).

The image encoder (CNN + ViT) is the expensive half of U-SAM; a click only re-runs the
prompt encoder and the mask decoder (SAM's split, which U-SAM keeps). The key names the
voxels the encoding was computed from: the caller's volume identity and modification
time (a changed volume gets new encodings), the slice index and the HU window.

One prompt to 3D encodes ~20-26 slices; re-prompting should find them all, so the cache holds
dozens of slices, bounded by bytes as well as by count: a ViT-B encoding of a 224 x 224 input,
with its skip features and skip terms, is 20.5 MiB, the small demonstration preset's (128 x 128) 3.3 MiB.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Optional, Tuple

import torch


@dataclass(frozen=True)
class EncodingKey:
    volume: Hashable  # who the voxels belong to: a node ID, a file path, id(array), ...
    modified: Hashable  # changes whenever the voxels change: a VTK MTime, a counter, ...
    slice_index: int
    window: Tuple[float, float]  # HU window the slice was normalised with


@dataclass
class CachedEncoding:
    encoding: Any  # what the model's ``encode_image`` returned (usam.ImageEncoding)
    transform: Any  # usam.SliceTransform of that slice


def tensor_bytes(value: Any) -> int:
    """Bytes of the tensors in ``value`` (a tensor, a list/tuple of them, or an object with tensor fields)."""
    if isinstance(value, torch.Tensor):
        return value.element_size() * value.nelement()
    if isinstance(value, (list, tuple)):
        return sum(tensor_bytes(v) for v in value)
    if hasattr(value, "__dict__"):
        return sum(tensor_bytes(v) for v in vars(value).values())
    return 0


class EmbeddingCache:
    """Least-recently-used store of ``CachedEncoding``s; counts hits and encoder runs.

    ``capacity``: most entries; ``max_bytes``: most tensor bytes in all (None: no byte bound). The
    entry just computed always stays, even alone over the byte bound.
    """

    def __init__(self, capacity: int = 8, max_bytes: Optional[int] = None) -> None:
        if capacity < 1:
            raise ValueError(f"embedding cache capacity must be at least 1, got {capacity}")
        if max_bytes is not None and max_bytes < 1:
            raise ValueError(f"embedding cache max_bytes must be at least 1 (or None), got {max_bytes}")
        self.capacity = int(capacity)
        self.max_bytes = max_bytes
        self._entries: "OrderedDict[EncodingKey, CachedEncoding]" = OrderedDict()
        self._sizes: "dict[EncodingKey, int]" = {}
        self.hits = 0
        self.misses = 0  # = encoder runs through this cache

    @property
    def nbytes(self) -> int:
        return sum(self._sizes.values())

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: EncodingKey) -> bool:
        return key in self._entries

    def get_or_compute(self, key: EncodingKey, compute: Callable[[], CachedEncoding]) -> CachedEncoding:
        entry: Optional[CachedEncoding] = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
            self.hits += 1
            return entry
        entry = compute()
        self.misses += 1
        self._entries[key] = entry
        self._sizes[key] = tensor_bytes(entry.encoding)
        while len(self._entries) > 1 and (len(self._entries) > self.capacity or (
                self.max_bytes is not None and self.nbytes > self.max_bytes)):
            oldest, _ = self._entries.popitem(last=False)  # least recently used
            del self._sizes[oldest]
        return entry

    def drop_volume(self, volume: Hashable) -> None:
        """Forget every slice of one volume (e.g. its node was removed)."""
        for key in [k for k in self._entries if k.volume == volume]:
            del self._entries[key]
            del self._sizes[key]

    def clear(self) -> None:
        self._entries.clear()
        self._sizes.clear()
