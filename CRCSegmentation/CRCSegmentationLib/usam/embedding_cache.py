"""A small LRU cache of U-SAM image encodings, one entry per (volume, slice, window).

The image encoder (CNN + ViT) is the expensive half of U-SAM; a click only re-runs the
prompt encoder and the mask decoder (SAM's split, which U-SAM keeps). The key names the
voxels the encoding was computed from: the caller's volume identity and modification
time (a changed volume gets new encodings), the slice index and the HU window.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Optional, Tuple


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


class EmbeddingCache:
    """Least-recently-used store of ``CachedEncoding``s; counts hits and encoder runs."""

    def __init__(self, capacity: int = 8) -> None:
        if capacity < 1:
            raise ValueError(f"embedding cache capacity must be at least 1, got {capacity}")
        self.capacity = int(capacity)
        self._entries: "OrderedDict[EncodingKey, CachedEncoding]" = OrderedDict()
        self.hits = 0
        self.misses = 0  # = encoder runs through this cache

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
        if len(self._entries) > self.capacity:
            self._entries.popitem(last=False)  # least recently used
        return entry

    def drop_volume(self, volume: Hashable) -> None:
        """Forget every slice of one volume (e.g. its node was removed)."""
        for key in [k for k in self._entries if k.volume == volume]:
            del self._entries[key]

    def clear(self) -> None:
        self._entries.clear()
