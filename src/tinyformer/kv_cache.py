"""The KV cache: the keys and values of every token a request has seen, per layer.

Not trainable and not shared: one cache per request (per batch), grown by one row per layer per
generated token, and thrown away when the request ends.
"""

from __future__ import annotations

import torch


class KVCache:
    """keys[layer] and values[layer] are [B, nkv, S, hd] tensors (nkv = n_kv_head key/value heads); S grows as
    tokens arrive."""

    def __init__(self, n_layer: int):
        self.keys: list[torch.Tensor | None] = [None] * n_layer
        self.values: list[torch.Tensor | None] = [None] * n_layer
        self._length = 0  # tokens fully processed by every layer

    def __len__(self) -> int:
        return self._length

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Add this step's keys/values [B, nkv, T, hd]; return everything cached [B, nkv, S, hd]."""
        if self.keys[layer] is None:
            # k and v are strided views into the attention's q/k/v projection; copying them lets
            # that projection be freed, so the cache holds exactly its own bytes.
            self.keys[layer], self.values[layer] = k.contiguous(), v.contiguous()
        else:
            self.keys[layer] = torch.cat([self.keys[layer], k], dim=2)  # [B, nkv, S + T, hd]
            self.values[layer] = torch.cat([self.values[layer], v], dim=2)  # [B, nkv, S + T, hd]
        return self.keys[layer], self.values[layer]

    def advance(self, n_tokens: int) -> None:
        """Called by the model after all layers have appended ``n_tokens`` new positions."""
        self._length += n_tokens

    @property
    def nbytes(self) -> int:
        """Bytes held by all cached keys and values: 2 x n_layer x B x S x n_kv_head x head_dim x dtype bytes."""
        tensors = [t for t in self.keys + self.values if t is not None]
        return sum(t.numel() * t.element_size() for t in tensors)

    def shapes(self) -> list[tuple[int, ...]]:
        """The shape of each layer's key tensor, for printing."""
        return [tuple(k.shape) for k in self.keys if k is not None]
