"""Continuous batching for causal language models: sequences join and leave the running batch between token steps.

One :class:`Engine` per loaded generative model. Each :meth:`Engine.step` does, in order:

1. drops the sequences cancelled since the last step (their KV cache goes with them);
2. admits waiting sequences, fewest remaining tokens first (SRTF by tokens), while there is a free slot
   (``max_sequences``) and the KV-cache bytes they could grow to fit in ``max_kv_bytes``; each admitted
   sequence is prefilled on its own (its prompt in one forward pass), which gives its first token;
3. runs one decode pass for every other running sequence together: their KV caches, of different lengths, are
   left-padded to the longest into one batch, with an attention mask hiding the padding and each sequence's
   own position ids, so every sequence sees exactly what it would see alone;
4. turns the new tokens into text, applies stop strings, end of sequence and ``max_tokens``, and retires the
   sequences that finished: a slot and its KV cache are free for the next step.

Each sequence keeps its own cache (a list of per-layer key and value tensors), so joining and leaving costs
nothing for the others. The price is the copy into the padded batch at every step, which is small next to the
forward pass for the models one worker serves on a CPU, and is what a paged KV cache would remove.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from app.errors import InvalidInput
from app.generation import SamplingParams

KV = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class Sequence:
    """One generation request inside the engine."""

    id: str
    prompt_ids: list[int]
    params: SamplingParams
    generated: list[int] = field(default_factory=list)
    text: str = ""  # text released so far (stop strings and undecodable tails held back)
    finish_reason: str | None = None
    kv: KV | None = None
    generator: torch.Generator | None = None
    enqueued_at: float = field(default_factory=time.monotonic)
    first_token_at: float | None = None
    admitted: bool = False

    @property
    def remaining(self) -> int:
        return self.params.max_tokens - len(self.generated)

    @property
    def kv_len(self) -> int:
        return 0 if self.kv is None else int(self.kv[0][0].shape[2])


@dataclass(frozen=True)
class Event:
    """What one step did to one sequence: ``text`` is the new text (maybe empty); ``finished`` its reason."""

    sequence: Sequence
    text: str
    finished: str | None


class Engine:
    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        device: str,
        *,
        max_sequences: int = 8,
        max_kv_bytes: int = 256 * 1024**2,
        max_context: int | None = None,
    ) -> None:
        self.model, self.tokenizer, self.device = model, tokenizer, device
        self.max_sequences = max(1, max_sequences)
        self.max_kv_bytes = max_kv_bytes
        config: Any = model.config
        context: Any = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", 1024)
        self.max_context = max_context or int(context)
        layers = int(getattr(config, "num_hidden_layers", None) or config.n_layer)
        hidden = int(getattr(config, "hidden_size", None) or config.n_embd)
        heads = int(getattr(config, "num_attention_heads", None) or config.n_head)
        kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
        element = torch.empty((), dtype=model.dtype).element_size()
        #: Key and value, every layer, for one token.
        self.bytes_per_token = 2 * layers * kv_heads * (hidden // heads) * element
        self.eos = tokenizer.eos_token_id
        self.waiting: list[Sequence] = []
        self.running: list[Sequence] = []
        self._cancelled: set[str] = set()

    # --- membership -------------------------------------------------------------------------------------------
    def add(self, seq_id: str, prompt: str, params: SamplingParams) -> Sequence:
        ids = list(self.tokenizer(prompt)["input_ids"])
        if not ids:
            raise InvalidInput("the prompt has no tokens")
        if len(ids) + params.max_tokens > self.max_context:
            raise InvalidInput(
                f"prompt of {len(ids)} tokens + max_tokens {params.max_tokens} exceeds the context ({self.max_context})"
            )
        seq = Sequence(seq_id, ids, params)
        if self._reserve(seq) > self.max_kv_bytes:
            raise InvalidInput(
                f"this request could need {self._reserve(seq)} bytes of KV cache, over the engine's {self.max_kv_bytes}"
            )
        if not params.greedy:
            seq.generator = torch.Generator(device="cpu").manual_seed(int(params.seed or 0))
        self.waiting.append(seq)
        return seq

    def cancel(self, seq_id: str) -> None:
        """Mark a sequence cancelled; it leaves (and frees its KV cache) at the next step boundary."""
        self._cancelled.add(seq_id)

    @property
    def busy(self) -> bool:
        return bool(self.waiting or self.running)

    @property
    def kv_bytes(self) -> int:
        """Bytes the running sequences' KV caches hold now."""
        return sum(k.nbytes + v.nbytes for s in self.running if s.kv for k, v in s.kv)

    def _reserve(self, seq: Sequence) -> int:
        return (len(seq.prompt_ids) + seq.params.max_tokens) * self.bytes_per_token

    # --- one token step ---------------------------------------------------------------------------------------
    def step(self) -> list[Event]:
        events = self._drop_cancelled()
        new = self._admit()
        with torch.inference_mode():
            for seq in new:
                logits = self._prefill(seq)
                events.append(self._advance(seq, logits))
            old = [s for s in self.running if s not in new and s.finish_reason is None]
            if old:
                for seq, logits in zip(old, self._decode(old), strict=True):
                    events.append(self._advance(seq, logits))
        self.running = [s for s in self.running if s.finish_reason is None]
        return events

    def run(self, on_event: Callable[[Event], None] | None = None) -> None:
        """Step until every sequence finished (for one caller with all its sequences added up front)."""
        while self.busy:
            for event in self.step():
                if on_event is not None:
                    on_event(event)

    def _drop_cancelled(self) -> list[Event]:
        if not self._cancelled:
            return []
        gone = [s for s in self.waiting + self.running if s.id in self._cancelled]
        self.waiting = [s for s in self.waiting if s.id not in self._cancelled]
        self.running = [s for s in self.running if s.id not in self._cancelled]
        self._cancelled.clear()
        events = []
        for seq in gone:
            seq.kv, seq.finish_reason = None, "cancelled"
            events.append(Event(seq, "", "cancelled"))
        return events

    def _admit(self) -> list[Sequence]:
        admitted: list[Sequence] = []
        reserved = sum(self._reserve(s) for s in self.running)
        # Shortest remaining first; arrival order among equals (sort is stable).
        for seq in sorted(self.waiting, key=lambda s: s.remaining):
            if len(self.running) >= self.max_sequences:
                break
            need = self._reserve(seq)
            if reserved + need > self.max_kv_bytes:
                continue  # a shorter one behind it may still fit
            reserved += need
            seq.admitted = True
            self.running.append(seq)
            admitted.append(seq)
        self.waiting = [s for s in self.waiting if not s.admitted]
        return admitted

    def _prefill(self, seq: Sequence) -> torch.Tensor:
        ids = torch.tensor([seq.prompt_ids], device=self.device)
        out = self.model(input_ids=ids, use_cache=True)
        seq.kv = [(layer.keys, layer.values) for layer in out.past_key_values.layers]
        logits: torch.Tensor = out.logits[0, -1]
        return logits

    def _decode(self, seqs: list[Sequence]) -> list[torch.Tensor]:
        """One forward pass for ``seqs``, each fed its last token; returns each one's next-token logits."""
        from transformers import DynamicCache

        lengths = [s.kv_len for s in seqs]
        longest = max(lengths)
        batch = len(seqs)
        assert all(s.kv is not None for s in seqs)
        layers: KV = []
        for layer in range(len(seqs[0].kv or [])):
            k0, v0 = (seqs[0].kv or [])[layer]
            if batch == 1:
                layers.append((k0, v0))
                continue
            keys = k0.new_zeros((batch, k0.shape[1], longest, k0.shape[3]))
            values = v0.new_zeros((batch, v0.shape[1], longest, v0.shape[3]))
            for i, seq in enumerate(seqs):
                k, v = (seq.kv or [])[layer]
                keys[i, :, longest - lengths[i] :] = k[0]
                values[i, :, longest - lengths[i] :] = v[0]
            layers.append((keys, values))
        mask = torch.zeros((batch, longest + 1), dtype=torch.long, device=self.device)
        for i, n in enumerate(lengths):
            mask[i, longest - n :] = 1
        out = self.model(
            input_ids=torch.tensor([[s.generated[-1]] for s in seqs], device=self.device),
            attention_mask=mask,
            position_ids=torch.tensor([[n] for n in lengths], device=self.device),
            cache=DynamicCache(layers),
            use_cache=True,
        )
        grown = [(layer.keys, layer.values) for layer in out.past_key_values.layers]
        for i, seq in enumerate(seqs):
            if batch == 1:
                seq.kv = grown
            else:
                start = longest - lengths[i]
                # A copy, not a view: a view would keep the whole padded batch alive.
                seq.kv = [(k[i : i + 1, :, start:].clone(), v[i : i + 1, :, start:].clone()) for k, v in grown]
        return [out.logits[i, -1] for i in range(batch)]

    # --- tokens to text ---------------------------------------------------------------------------------------
    def _advance(self, seq: Sequence, logits: torch.Tensor) -> Event:
        token = _pick(logits, seq.params, seq.generator)
        if seq.first_token_at is None:
            seq.first_token_at = time.monotonic()
        if self.eos is not None and token == self.eos:
            return self._finish(seq, "stop", self._decoded(seq))
        seq.generated.append(token)
        full = self._decoded(seq)
        for stop in seq.params.stop:
            at = full.find(stop)
            if at >= 0:
                return self._finish(seq, "stop", full[:at])
        if seq.remaining <= 0:
            return self._finish(seq, "length", full)
        # Hold back what may still change: the replacement character an unfinished UTF-8 character decodes to
        # (only the last one can be completed by the next bytes; earlier ones are invalid bytes for good), and
        # anything that may be the start of a stop string.
        keep = len(full) - 1 if full.endswith("\ufffd") else len(full)
        for stop in seq.params.stop:
            for n in range(min(len(stop) - 1, keep), 0, -1):
                if full[:keep].endswith(stop[:n]):
                    keep = min(keep, len(full[:keep]) - n)
                    break
        return self._release(seq, full[: max(keep, len(seq.text))], None)

    def _decoded(self, seq: Sequence) -> str:
        text: str = self.tokenizer.decode(seq.generated, skip_special_tokens=True)
        return text

    def _finish(self, seq: Sequence, reason: str, text: str) -> Event:
        seq.finish_reason, seq.kv = reason, None
        return self._release(seq, text, reason)

    def _release(self, seq: Sequence, text: str, finished: str | None) -> Event:
        delta = text[len(seq.text) :] if text.startswith(seq.text) else ""
        seq.text = seq.text + delta
        return Event(seq, delta, finished)


def _pick(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """Greedy, or temperature and nucleus (top-p) sampling with the sequence's own seeded generator."""
    if params.greedy:
        return int(torch.argmax(logits).item())
    probs = torch.softmax(logits.float().cpu() / params.temperature, dim=-1)
    if params.top_p < 1.0:
        ordered, order = torch.sort(probs, descending=True)
        before = torch.cumsum(ordered, dim=-1) - ordered  # probability mass ahead of each token
        ordered[before >= params.top_p] = 0.0  # the top token always stays (nothing is ahead of it)
        probs = torch.zeros_like(probs).scatter_(0, order, ordered)
    return int(torch.multinomial(probs / probs.sum(), 1, generator=generator).item())
