"""KV caches for the step scheduler: a batch of rows that join and leave, and reused prefixes.

The batch is left-padded: every row writes its next key/value at the same column, so one
decode step is one `model.forward` over all rows. A row's padding columns are masked out.
Buffers grow by doubling and are written in place (no `torch.cat` of the whole cache per step).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

# One layer's keys or values: (batch, kv_heads, tokens, head_dim)
KV = tuple[torch.Tensor, torch.Tensor]


class GrowingLayer(DynamicLayer):  # type: ignore[no-untyped-call]
    """A `DynamicLayer` whose keys and values live in a buffer with room to grow."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)  # type: ignore[no-untyped-call]
        self._k: torch.Tensor | None = None
        self._v: torch.Tensor | None = None
        self._length = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self.is_initialized = True

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> KV:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        added = key_states.shape[-2]
        self._reserve(key_states, self._length + added)
        assert self._k is not None and self._v is not None
        self._k[:, :, self._length : self._length + added] = key_states
        self._v[:, :, self._length : self._length + added] = value_states
        self._length += added
        return self._view()

    def get_seq_length(self) -> int:
        return self._length

    def reset(self) -> None:
        self._k = self._v = None
        self._length = 0
        super().reset()

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self._k is not None and self._v is not None:
            self._k, self._v = self._k[indices], self._v[indices]
            self.keys, self.values = self._view()

    def truncate(self, length: int) -> None:
        """Forget every column from `length` on (they are overwritten by the next update)."""
        self._length = min(self._length, length)
        if self._k is not None:
            self._view()

    def kv(self) -> KV:
        """Keys and values so far: (batch, kv_heads, tokens, head_dim) views."""
        return self._view()

    def set(self, keys: torch.Tensor, values: torch.Tensor, room: int = 64) -> None:
        """Replace the contents (copied into a fresh buffer with `room` spare columns)."""
        buffer_k, buffer_v = _buffers(keys, keys.shape[2] + room)
        buffer_k[:, :, : keys.shape[2]] = keys
        buffer_v[:, :, : keys.shape[2]] = values
        self.adopt(buffer_k, buffer_v, keys.shape[2])

    def adopt(self, buffer_k: torch.Tensor, buffer_v: torch.Tensor, length: int) -> None:
        """Take these buffers (not copied) as the contents; their first `length` columns hold."""
        self._k, self._v, self._length = buffer_k, buffer_v, length
        self.dtype, self.device, self.is_initialized = buffer_k.dtype, buffer_k.device, True
        self.keys, self.values = self._view()

    def _reserve(self, like: torch.Tensor, length: int) -> None:
        if self._k is not None and self._k.shape[2] >= length:
            return
        capacity = max(64, length, 2 * (0 if self._k is None else self._k.shape[2]))
        grown_k, grown_v = _buffers(like, capacity)
        if self._k is not None and self._v is not None and self._length:
            grown_k[:, :, : self._length] = self._k[:, :, : self._length]
            grown_v[:, :, : self._length] = self._v[:, :, : self._length]
        self._k, self._v = grown_k, grown_v

    def _view(self) -> KV:
        assert self._k is not None and self._v is not None
        self.keys = self._k[:, :, : self._length]
        self.values = self._v[:, :, : self._length]
        return self.keys, self.values


def _buffers(like: torch.Tensor, columns: int, rows: int | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Empty key and value buffers shaped as `like` but (rows, kv_heads, columns, head_dim)."""
    shape = (like.shape[0] if rows is None else rows, like.shape[1], columns, like.shape[3])
    return like.new_empty(shape), like.new_empty(shape)


def new_cache(config: Any) -> DynamicCache:
    """An empty cache of `GrowingLayer`s, one per decoder layer of `config`'s model."""
    cache = DynamicCache(config=config)
    cache.layers = [GrowingLayer() for _ in cache.layers]
    return cache


def layers(cache: DynamicCache) -> list[GrowingLayer]:
    found = [layer for layer in cache.layers if isinstance(layer, GrowingLayer)]
    assert len(found) == len(cache.layers), "a cache made by new_cache"
    return found


def truncate(cache: DynamicCache, columns: int) -> None:
    """Keep only the first `columns` columns of every layer (a rejected draft's are dropped)."""
    for layer in layers(cache):
        layer.truncate(columns)


ROOM = 64  # spare columns in a new buffer: a batch grows that far before it reallocates


def cache_from(config: Any, kv: Sequence[KV], room: int = ROOM) -> DynamicCache:
    """A cache holding copies of `kv` (one (keys, values) pair per layer)."""
    cache = new_cache(config)
    for layer, (keys, values) in zip(layers(cache), kv, strict=True):
        layer.set(keys, values, room)
    return cache


def snapshot(cache: DynamicCache, tokens: int) -> list[KV]:
    """Contiguous copies of the first `tokens` columns of a one-row cache."""
    return [(k[:, :, :tokens].clone(), v[:, :, :tokens].clone())
            for k, v in (layer.kv() for layer in layers(cache))]


def join_rows(config: Any, batch: DynamicCache | None, batch_mask: torch.Tensor | None,
              row: DynamicCache) -> tuple[DynamicCache, torch.Tensor]:
    """The batch with `row` (a one-row cache, all columns valid) added as its last row,
    left-padded so that every row ends at the same column; returns the cache and its
    (rows, columns) mask of valid columns."""
    row_kv = [layer.kv() for layer in layers(row)]
    row_len = row_kv[0][0].shape[2]
    if batch is None or batch_mask is None:
        mask = torch.ones((1, row_len), dtype=torch.long, device=row_kv[0][0].device)
        return cache_from(config, row_kv), mask
    batch_len = batch_mask.shape[1]
    width = max(batch_len, row_len)
    cache = new_cache(config)
    for layer, old, (rk, rv) in zip(layers(cache), layers(batch), row_kv, strict=True):
        bk, bv = old.kv()
        # zeros: a row's padding columns are masked out, but must hold finite numbers
        keys, values = (t.zero_() for t in _buffers(bk, width + ROOM, rows=bk.shape[0] + 1))
        keys[:-1, :, width - batch_len : width], values[:-1, :, width - batch_len : width] = bk, bv
        keys[-1:, :, width - row_len : width], values[-1:, :, width - row_len : width] = rk, rv
        layer.adopt(keys, values, width)
    mask = batch_mask.new_zeros((batch_mask.shape[0] + 1, width))
    mask[:-1, width - batch_len :] = batch_mask
    mask[-1, width - row_len :] = 1
    return cache, mask


def keep_rows(config: Any, batch: DynamicCache, mask: torch.Tensor,
              keep: Sequence[int]) -> tuple[DynamicCache, torch.Tensor]:
    """Only the rows `keep`, with the columns no kept row uses dropped from the front."""
    index = torch.tensor(list(keep), dtype=torch.long, device=mask.device)
    mask = mask[index]
    used = mask.any(dim=0).nonzero()
    first = int(used[0]) if len(used) else mask.shape[1]
    kept = [(k[index, :, first:], v[index, :, first:])
            for k, v in (layer.kv() for layer in layers(batch))]
    return cache_from(config, kept), mask[:, first:].contiguous()


@dataclass
class PrefixStats:
    hits: int = 0
    misses: int = 0
    reused_tokens: int = 0
    entries: int = 0
    tokens: int = 0


class PrefixCache:
    """An LRU of prompts' KV, bounded by the tokens it holds; a new prompt reuses the longest
    common prefix with any entry (the system prompt at least, a repeated question whole)."""

    def __init__(self, max_tokens: int, min_prefix: int = 8) -> None:
        self.max_tokens = max_tokens
        self.min_prefix = min_prefix
        self.stats = PrefixStats()
        self._entries: OrderedDict[int, tuple[np.ndarray, list[KV]]] = OrderedDict()
        self._next_key = 0
        self._lock = threading.Lock()

    def lookup(self, ids: Sequence[int]) -> tuple[int, list[KV] | None]:
        """The number of leading tokens of `ids` whose KV is cached (at most all but the last,
        whose logits are still needed), and that KV; (0, None) when none is worth reusing."""
        wanted = np.asarray(ids, dtype=np.int64)
        best, best_key = 0, None
        with self._lock:
            for key, (tokens, _) in self._entries.items():
                common = _common_prefix(tokens, wanted)
                if common > best:
                    best, best_key = common, key
            best = min(best, len(wanted) - 1)
            if best_key is None or best < self.min_prefix:
                self.stats.misses += 1
                return 0, None
            self._entries.move_to_end(best_key)
            kv = self._entries[best_key][1]
            self.stats.hits += 1
            self.stats.reused_tokens += best
        return best, [(k[:, :, :best], v[:, :, :best]) for k, v in kv]

    def store(self, ids: Sequence[int], kv: list[KV]) -> None:
        """Keep `kv` (the KV of all of `ids`), evicting the least recently used past the bound."""
        if self.max_tokens <= 0 or len(ids) > self.max_tokens:
            return
        tokens = np.asarray(ids, dtype=np.int64)
        with self._lock:
            for key, (held, _) in list(self._entries.items()):
                if len(held) <= len(tokens) and _common_prefix(held, tokens) == len(held):
                    del self._entries[key]  # the new entry covers it
                    self.stats.tokens -= len(held)
            self._entries[self._next_key] = (tokens, kv)
            self._next_key += 1
            self.stats.tokens += len(tokens)
            while self.stats.tokens > self.max_tokens:
                evicted, _ = self._entries.popitem(last=False)[1]
                self.stats.tokens -= len(evicted)
            self.stats.entries = len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.stats.entries = self.stats.tokens = 0


def _common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    n = min(len(a), len(b))
    differ = np.flatnonzero(a[:n] != b[:n])
    return int(differ[0]) if len(differ) else n
