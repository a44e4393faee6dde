"""SDXL's two CLIP text encoders: tokenizing, the prompt cache and truncation once, in `TextEncoders`;
the encoders themselves in PyTorch here (every backend but OpenVINO), or compiled
(engines/backends/openvino_engine.py).
"""

from __future__ import annotations

import copy
import threading
from collections import OrderedDict
from typing import Any, Sequence

import torch

from engines.core.modules import TextEncoderModule
from engines.core.sdxl import MAX_TOKENS

DEFAULT_PROMPT_CACHE_SIZE = 128  # entries of ~0.6 MB (77 x 2048 float32) each


class TextEncoders:
    """Both encoders: penultimate hidden states side by side, pooled output of the second. A
    subclass runs the encoders (`_run`)."""

    def __init__(
        self,
        tokenizer: Any,
        tokenizer_2: Any,
        device: torch.device | str = "cpu",
        split_batch: bool = False,
        cache_size: int = DEFAULT_PROMPT_CACHE_SIZE,
    ) -> None:
        self.tokenizers = (tokenizer, tokenizer_2)
        self.device = torch.device(device)
        self.split_batch = split_batch  # one prompt at a time: see engines.backends.torch_runners.per_item
        # A fast tokenizer keeps its padding/truncation settings as state: counting tokens on other
        # threads while `encode` runs on the engine's thread needs its own copy (and a lock).
        self._counting_tokenizer = copy.deepcopy(tokenizer)
        self._counting_lock = threading.Lock()
        # Prompt -> (hidden states, pooled): the same prompt with a new seed skips both encoders.
        self.cache_size = cache_size
        self._cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()

    def is_truncated(self, prompt: str) -> bool:
        # Both tokenizers split text the same way; the first one's count decides.
        with self._counting_lock:
            return len(self._counting_tokenizer(prompt, truncation=False).input_ids) > MAX_TOKENS

    @torch.inference_mode()
    def encode(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.split_batch and not self.cache_size:
            return self._encode(prompts)
        # One prompt at a time: a cached embedding must equal a freshly computed one, bit for bit.
        parts = [self._encode_one(prompt) for prompt in prompts]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def disable_cache(self) -> None:
        """Every call runs both encoders from now on (benchmarks time them, not the cache)."""
        self.cache_size = 0
        self._cache.clear()

    def _encode_one(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Called on the engine's thread only: the LRU needs no lock."""
        cached = self._cache.get(prompt)
        if cached is not None:
            self._cache.move_to_end(prompt)
            return cached
        encoded = self._encode([prompt])
        if self.cache_size:
            self._cache[prompt] = encoded
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return encoded

    def _encode(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = [
            tokenizer(list(prompts), padding="max_length", max_length=MAX_TOKENS, truncation=True, return_tensors="pt").input_ids.to(self.device)
            for tokenizer in self.tokenizers
        ]
        hidden, hidden_2, pooled = self._run(*ids)
        return torch.cat([hidden, hidden_2], dim=-1).float(), pooled.float()

    def _run(self, ids: torch.Tensor, ids_2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Token ids of each encoder -> (first's penultimate hidden states, second's, second's pooled output)."""
        raise NotImplementedError


class TorchTextEncoders(TextEncoders):
    """Both encoders as torch modules (or callables with their signature)."""

    def __init__(
        self,
        tokenizer: Any,
        tokenizer_2: Any,
        text_encoder: torch.nn.Module,
        text_encoder_2: torch.nn.Module,
        device: torch.device | str = "cpu",
        split_batch: bool = False,
        cache_size: int = DEFAULT_PROMPT_CACHE_SIZE,
    ) -> None:
        super().__init__(tokenizer, tokenizer_2, device, split_batch, cache_size)
        # The second encoder's (projected) pooled output is the one SDXL reads.
        self.encoders = (TextEncoderModule(text_encoder, pooled=False), TextEncoderModule(text_encoder_2, pooled=True))

    def _run(self, ids: torch.Tensor, ids_2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        hidden_2, pooled = self.encoders[1](ids_2)
        return self.encoders[0](ids), hidden_2, pooled
