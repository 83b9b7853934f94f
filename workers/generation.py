"""Continuous batching for causal language models: sequences join and leave the running batch between token steps.

One :class:`Engine` per loaded generative model. Each :meth:`Engine.step` does, in order:

1. drops the sequences cancelled since the last step (their KV cache goes with them);
2. admits waiting sequences in the order of :func:`app.generation.sequence_rank` while there is a free slot
   (``max_sequences``) and the KV-cache bytes they could grow to fit in ``max_kv_bytes``. Under ``srtf`` and
   ``aging`` a waiting sequence that finds no room takes the place of running sequences that rank after it (the
   most remaining tokens first): a short request overtakes a long one at the next token step. Each admitted
   sequence is prefilled on its own (its prompt in one forward pass), which gives its next token;
3. runs one decode pass for every other running sequence together: their KV caches, of different lengths, are
   left-padded to the longest into one batch, with an attention mask hiding the padding and each sequence's
   own position ids, so every sequence sees exactly what it would see alone;
4. turns the new tokens into text, applies stop strings, end of sequence and ``max_tokens``, and retires the
   sequences that finished: a slot and its KV cache are free for the next step.

The running sequences' caches live together in one padded batch (per layer, keys and values of shape batch x
heads x longest x head size, each row left-padded), kept from step to step: a decode pass grows it by one
position for everyone, and nothing else is copied while the batch's members stay the same. The batch is rebuilt
only when its members change: a sequence that joins brings its own cache (made by its prefill), one that leaves
takes a copy of its row if it keeps its cache (preempted), and the rest are copied into a batch padded to the new
longest. Rebuilding at every step instead (as an earlier version did: gather into the batch, then copy each row
back out) cost a fifth of a 16-sequence step on a CPU (cProfile; ``python -m bench.generate --part engine``: 3.3-3.6x
then, 5.3x now); a paged KV cache would remove the rebuild too.

A preempted sequence keeps its tokens, its sampling generator's state and, while the KV budget allows, its KV cache:
it goes back to the waiting sequences and, admitted again, simply decodes on from where it stopped. When the bytes
are needed (the budget, not the slots, is what is short), the caches of sequences that rank after the newcomer are
dropped, those already waiting first; such a sequence is recomputed when it resumes: its prompt and the tokens it
made are prefilled in one forward pass, which gives the logits of its next token as the decode step would have.
Keeping is the default because recomputing costs a prefill of everything the sequence holds at every preemption, and
under SRTF a long sequence may be preempted by each short arrival (a quick ``bench.generate`` run of an earlier
draft that always dropped them gave SRTF 1.3-2.6x FIFO's mean completion on the trace). Dropping is the fallback
because the budget is what placement counts for the replica: a kept cache never makes the engine exceed it, as each
one stays charged its full reservation. The remaining work of a sequence whose cache was dropped counts that prefill
again (see :func:`app.generation.remaining_tokens`), so it never ranks ahead of what preempted it, and two sequences
cannot take each other's place back and forth.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from app import generation as gen
from app.errors import InvalidInput
from app.generation import SamplingParams, SequenceFacts
from app.policies import DEFAULT_PARAMS, Policy, PolicyParams, RequestClass

KV = list[tuple[torch.Tensor, torch.Tensor]]

#: The ``kv`` of a sequence whose cache is a row of the engine's running batch (compared by identity, never
#: read): it has a cache, of ``cached_tokens`` positions, but no tensors of its own.
IN_BATCH: KV = []


@dataclass(eq=False)  # identity: two sequences are never "equal" (and tensors do not compare to a bool)
class Sequence:
    """One generation request inside the engine."""

    id: str
    prompt_ids: list[int]
    params: SamplingParams
    generated: list[int] = field(default_factory=list)
    text: str = ""  # text released so far (stop strings and undecodable tails held back)
    finish_reason: str | None = None
    kv: KV | None = None
    cached_tokens: int = 0  # positions in its cache (meaningful while ``kv`` is not None)
    generator: torch.Generator | None = None
    enqueued_at: float = field(default_factory=time.monotonic)
    first_token_at: float | None = None
    admitted: bool = False
    submitted_at: float = field(default_factory=time.time)  # wall clock, as the message's header says
    request_class: str = RequestClass.INTERACTIVE
    backlog_s: float = 0.0
    preemptions: int = 0
    #: Seconds of the engine's forward passes this sequence took part in (its prefills, and each decode pass it was
    #: batched in): its service time, without the time it waited, not admitted yet or preempted.
    run_s: float = 0.0

    @property
    def remaining(self) -> int:
        """Tokens it may still generate."""
        return self.params.max_tokens - len(self.generated)

    def remaining_tokens(self, prefill_weight: float = 1.0) -> float:
        """Its remaining work: tokens to generate, plus what must be prefilled while it holds no KV cache."""
        return gen.remaining_tokens(
            len(self.prompt_ids), self.params.max_tokens, len(self.generated), self.kv is not None, prefill_weight
        )

    @property
    def kv_len(self) -> int:
        return 0 if self.kv is None else self.cached_tokens


@dataclass
class _Batch:
    """The running sequences' caches, one row each, left-padded to the longest (see the module's docstring)."""

    rows: list[Sequence]
    kv: KV

    @property
    def width(self) -> int:
        return int(self.kv[0][0].shape[2])

    def row_cache(self, index: int) -> KV:
        """A copy of row ``index``'s cache, without its padding (a view would keep the whole batch alive)."""
        start = self.width - self.rows[index].cached_tokens
        return [(k[index : index + 1, :, start:].clone(), v[index : index + 1, :, start:].clone()) for k, v in self.kv]

    def bytes_per_position(self) -> int:
        return sum(k[0, :, 0].nbytes + v[0, :, 0].nbytes for k, v in self.kv)


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
        bytes_per_token: int | None = None,
        policy: Policy = Policy.FIFO,
        policy_params: PolicyParams = DEFAULT_PARAMS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.model, self.tokenizer, self.device = model, tokenizer, device
        self.max_sequences = max(1, max_sequences)
        self.max_kv_bytes = max_kv_bytes
        self.policy, self.policy_params, self.clock = policy, policy_params, clock
        #: Measured: a moving average of the wall time of one decode pass, i.e. of one token of each running
        #: sequence. It turns remaining tokens into the seconds the policies' bands and aging clock are written in.
        self.seconds_per_token = 0.01
        #: Measured: a moving average of a prefill's wall time per token it computes (see ``prefill_weight``).
        self.prefill_seconds_per_token: float | None = None
        self.preemptions = 0
        config: Any = model.config
        context: Any = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", 1024)
        self.max_context = max_context or int(context)
        layers = int(getattr(config, "num_hidden_layers", None) or config.n_layer)
        hidden = int(getattr(config, "hidden_size", None) or config.n_embd)
        heads = int(getattr(config, "num_attention_heads", None) or config.n_head)
        kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
        element = torch.empty((), dtype=model.dtype).element_size()
        #: Key and value, every layer, for one token: measured by the runtime at load when it could, else from
        #: the configuration.
        self.bytes_per_token = bytes_per_token or 2 * layers * kv_heads * (hidden // heads) * element
        self.eos = tokenizer.eos_token_id
        self.waiting: list[Sequence] = []
        self.running: list[Sequence] = []
        self._cancelled: dict[str, str] = {}
        self._batch: _Batch | None = None

    # --- membership -------------------------------------------------------------------------------------------
    def add(
        self,
        seq_id: str,
        prompt: str,
        params: SamplingParams,
        *,
        submitted_at: float | None = None,
        request_class: str = RequestClass.INTERACTIVE,
        backlog_s: float = 0.0,
    ) -> Sequence:
        ids = list(self.tokenizer(prompt)["input_ids"])
        if not ids:
            raise InvalidInput("the prompt has no tokens")
        if len(ids) + params.max_tokens > self.max_context:
            raise InvalidInput(
                f"prompt of {len(ids)} tokens + max_tokens {params.max_tokens} exceeds the context ({self.max_context})"
            )
        seq = Sequence(seq_id, ids, params, request_class=request_class, backlog_s=backlog_s)
        if submitted_at is not None:
            seq.submitted_at = submitted_at
        if self._reserve(seq) > self.max_kv_bytes:
            raise InvalidInput(
                f"this request could need {self._reserve(seq)} bytes of KV cache, over the engine's {self.max_kv_bytes}"
            )
        if not params.greedy:
            seq.generator = torch.Generator(device="cpu").manual_seed(int(params.seed or 0))
        self.waiting.append(seq)
        return seq

    def cancel(self, seq_id: str, reason: str = "cancelled") -> None:
        """Mark a sequence cancelled; it leaves (and frees its KV cache) at the next step boundary, its event
        finished with ``reason`` (the worker ends a sequence past its deadline this way too). The first reason
        given before that step stands: the worker ends the sequences past their deadline before it reads its callers'
        cancels, so one whose deadline passed is reported DEADLINE_EXCEEDED even if its caller also cancelled it."""
        self._cancelled.setdefault(seq_id, reason)

    @property
    def busy(self) -> bool:
        return bool(self.waiting or self.running)

    @property
    def kv_bytes(self) -> int:
        """Bytes the sequences' KV caches hold now (running ones, and preempted ones that kept theirs): their
        positions. Not counted: the batch's padding, and the rows of sequences that finished or lost their cache
        since the batch's members last changed; both are freed at the next rebuild (or when no row is left)."""
        own = sum(k.nbytes + v.nbytes for s in self.running + self.waiting if s.kv for k, v in s.kv)
        if self._batch is None:
            return own
        rows = sum(s.cached_tokens for s in self._batch.rows if s.kv is IN_BATCH)
        return own + rows * self._batch.bytes_per_position()

    def _reserve(self, seq: Sequence) -> int:
        return (len(seq.prompt_ids) + seq.params.max_tokens) * self.bytes_per_token

    # --- order ------------------------------------------------------------------------------------------------
    @property
    def preemptive(self) -> bool:
        return self.policy in gen.PREEMPTIVE

    @property
    def prefill_weight(self) -> float:
        """A prefilled token's cost against a generated one's, as measured here (1 until both were measured)."""
        if self.prefill_seconds_per_token is None:
            return 1.0
        return min(1.0, self.prefill_seconds_per_token / max(self.seconds_per_token, 1e-9))

    def _rank(self, seq: Sequence, now: float) -> tuple[int, float]:
        # FIFO and SJF keep the admission order they had: fewest tokens still to generate first.
        remaining = seq.remaining_tokens(self.prefill_weight) if self.preemptive else seq.remaining
        facts = SequenceFacts(
            remaining, max(0.0, now - seq.submitted_at), seq.submitted_at, seq.request_class, seq.backlog_s
        )
        return gen.sequence_rank(self.policy, facts, self.seconds_per_token, self.policy_params)

    def place_threshold(self) -> tuple[int, float] | None:
        """The rank a request not yet added must beat to preempt a running sequence at the next step (None when
        none would be preempted): the worst running rank once those already waiting here took their places. The
        worker asks once per busy step, then compares each request at the queue's head with :meth:`rank_new`."""
        if not self.preemptive or not self.running:
            return None
        now = self.clock()
        placed = sorted((self._rank(s, now) for s in self.running), reverse=True)
        for rank in sorted(self._rank(s, now) for s in self.waiting):
            if placed and rank < placed[0]:
                placed.pop(0)
        return placed[0] if placed else None

    def rank_new(
        self, prompt_tokens: int, max_tokens: int, submitted_at: float, request_class: str, backlog_s: float
    ) -> tuple[int, float]:
        """The rank a request would have here if it were added now."""
        now = self.clock()
        facts = SequenceFacts(
            gen.remaining_tokens(prompt_tokens, max_tokens, 0, False, self.prefill_weight),
            max(0.0, now - submitted_at),
            submitted_at,
            request_class,
            backlog_s,
        )
        return gen.sequence_rank(self.policy, facts, self.seconds_per_token, self.policy_params)

    # --- one token step ---------------------------------------------------------------------------------------
    def step(self) -> list[Event]:
        events = self._drop_cancelled()
        # A resumed sequence that kept its KV cache simply decodes with the others; the rest are prefilled.
        new = [s for s in self._admit() if s.kv is None]
        with torch.inference_mode():
            for seq in new:
                started = time.monotonic()
                logits = self._prefill(seq)
                elapsed = time.monotonic() - started
                seq.run_s += elapsed
                per_token = elapsed / seq.kv_len
                last = self.prefill_seconds_per_token
                self.prefill_seconds_per_token = per_token if last is None else 0.8 * last + 0.2 * per_token
                events.append(self._advance(seq, logits))
            old = [s for s in self.running if s not in new and s.finish_reason is None]
            if old:
                started = time.monotonic()
                logits_of = self._decode(old)
                elapsed = time.monotonic() - started
                self.seconds_per_token = 0.8 * self.seconds_per_token + 0.2 * elapsed
                for seq in old:
                    seq.run_s += elapsed  # the pass made one token of each: each ran for all of it
                for seq, logits in zip(old, logits_of, strict=True):
                    events.append(self._advance(seq, logits))
        self.running = [s for s in self.running if s.finish_reason is None]
        if self._batch is not None and not any(s.kv is IN_BATCH for s in self._batch.rows):
            self._batch = None  # every row finished or was dropped: free the tensors now, not at the next join
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
        events = []
        for seq in gone:
            seq.kv, seq.finish_reason = None, self._cancelled[seq.id]
            events.append(Event(seq, "", seq.finish_reason))
        self._cancelled.clear()
        return events

    def _charge(self, seq: Sequence) -> int:
        """KV bytes held against the budget for ``seq``: the most its cache may grow to while it runs or keeps a
        cache (preempted), nothing otherwise."""
        return self._reserve(seq) if seq.admitted or seq.kv is not None else 0

    def _admit(self) -> list[Sequence]:
        now = self.clock()
        admitted: list[Sequence] = []
        # Best rank first; arrival order among equals (sort is stable).
        for seq in sorted(self.waiting, key=lambda s: self._rank(s, now)):
            # Those admitted earlier in this pass are in ``running`` and still in ``waiting`` until the loop ends:
            # charge them once, or two sequences that exactly fit would be admitted one per step (and, under SRTF,
            # the second would needlessly preempt a running one).
            charged = sum(self._charge(s) for s in self.running + [s for s in self.waiting if not s.admitted])
            need = 0 if seq.kv is not None else self._reserve(seq)  # a kept cache is charged already
            if len(self.running) >= self.max_sequences or charged + need > self.max_kv_bytes:
                if not self.preemptive:
                    if len(self.running) >= self.max_sequences:
                        break
                    continue  # a shorter one behind it may still fit
                if not self._make_room(seq, need, charged, now, admitted):
                    continue  # no room even in the places of all it outranks; one behind it may fit
            seq.admitted = True
            self.running.append(seq)
            admitted.append(seq)
        self.waiting = [s for s in self.waiting if not s.admitted]
        return admitted

    def _make_room(self, seq: Sequence, need: int, charged: int, now: float, admitted: list[Sequence]) -> bool:
        """Preempt running sequences that rank after ``seq`` (worst first) for a slot, and drop kept caches of
        sequences that rank after it for KV bytes; False (nothing changed) when even all of them would not do."""
        mine = self._rank(seq, now)

        def after(pool: list[Sequence]) -> list[Sequence]:
            ranked = [(self._rank(s, now), s) for s in pool if s is not seq and s not in admitted]
            return [s for rank, s in sorted(ranked, key=lambda rs: rs[0], reverse=True) if mine < rank]

        running = after(self.running)
        kept = after([s for s in self.waiting if s.kv is not None])
        slots = len(self.running) + 1 - self.max_sequences
        if slots > len(running):
            return False
        victims = running[: max(0, slots)]
        # Caches to drop for bytes: those already waiting first, then the victims', then more running ones.
        drops, excess = [], charged + need - self.max_kv_bytes
        for candidate in kept + victims + running[len(victims) :]:
            if excess <= 0:
                break
            drops.append(candidate)
            excess -= self._reserve(candidate)
        if excess > 0:
            return False
        for victim in victims + [s for s in drops if s.admitted and s not in victims]:
            self._preempt(victim)
        for dropped in drops:
            dropped.kv = None  # recomputed from its tokens when it resumes
        return True

    def _preempt(self, seq: Sequence) -> None:
        """Back to waiting with its tokens, its generator and (unless the budget takes it) its KV cache."""
        self.running.remove(seq)
        self.waiting.append(seq)
        seq.admitted = False
        seq.preemptions += 1
        self.preemptions += 1

    def _prefill(self, seq: Sequence) -> torch.Tensor:
        """The prompt in one forward pass; for a preempted sequence, its prompt and every token it made (its next
        token's logits come from the last one, as a decode step feeding that token would give them)."""
        ids = torch.tensor([seq.prompt_ids + seq.generated], device=self.device)
        out = self.model(input_ids=ids, use_cache=True)
        seq.kv = [(layer.keys, layer.values) for layer in out.past_key_values.layers]
        seq.cached_tokens = int(ids.shape[1])
        logits: torch.Tensor = out.logits[0, -1]
        return logits

    def _decode(self, seqs: list[Sequence]) -> list[torch.Tensor]:
        """One forward pass for ``seqs``, each fed its last token; returns each one's next-token logits."""
        from transformers import DynamicCache

        batch = self._batch_of(seqs)
        width = batch.width
        lengths = [s.cached_tokens for s in seqs]
        mask = torch.zeros((len(seqs), width + 1), dtype=torch.long, device=self.device)
        for i, n in enumerate(lengths):
            mask[i, width - n :] = 1
        out = self.model(
            input_ids=torch.tensor([[s.generated[-1]] for s in seqs], device=self.device),
            attention_mask=mask,
            position_ids=torch.tensor([[n] for n in lengths], device=self.device),
            cache=DynamicCache([(k, v) for k, v in batch.kv]),
            use_cache=True,
        )
        batch.kv = [(layer.keys, layer.values) for layer in out.past_key_values.layers]
        for seq in seqs:
            seq.cached_tokens += 1
        return [out.logits[i, -1] for i in range(len(seqs))]

    def _batch_of(self, seqs: list[Sequence]) -> _Batch:
        """The running batch with exactly ``seqs`` as its rows, in that order: the kept one when its members are
        the same, else a new one (rows that leave and keep their cache take a copy of it first)."""
        old = self._batch
        # The same members is not enough: a row whose cache was dropped and recomputed since (preempted for
        # bytes, then prefilled again) is the same sequence with a cache of its own now, and its row is stale.
        if (
            old is not None
            and len(old.rows) == len(seqs)
            and all(a is b and b.kv is IN_BATCH for a, b in zip(old.rows, seqs, strict=True))
        ):
            return old
        if old is not None:
            for i, seq in enumerate(old.rows):
                if seq.kv is IN_BATCH and not any(seq is s for s in seqs):
                    seq.kv = old.row_cache(i)  # preempted with its cache kept: it takes its row along
        row_of = {id(seq): i for i, seq in enumerate(old.rows)} if old is not None else {}
        width = max(s.cached_tokens for s in seqs)
        layers: KV = []
        for layer, (like_k, like_v) in enumerate(self._any_cache(seqs, old)):
            keys = like_k.new_zeros((len(seqs), like_k.shape[1], width, like_k.shape[3]))
            values = like_v.new_zeros((len(seqs), like_v.shape[1], width, like_v.shape[3]))
            for i, seq in enumerate(seqs):
                n = seq.cached_tokens
                if seq.kv is IN_BATCH:
                    assert old is not None
                    j, old_width = row_of[id(seq)], old.width
                    keys[i, :, width - n :] = old.kv[layer][0][j, :, old_width - n :]
                    values[i, :, width - n :] = old.kv[layer][1][j, :, old_width - n :]
                else:
                    k, v = (seq.kv or [])[layer]
                    keys[i, :, width - n :] = k[0]
                    values[i, :, width - n :] = v[0]
            layers.append((keys, values))
        for seq in seqs:
            seq.kv = IN_BATCH
        self._batch = _Batch(list(seqs), layers)
        return self._batch

    @staticmethod
    def _any_cache(seqs: list[Sequence], old: _Batch | None) -> KV:
        """Some cache among ``seqs`` to take the layer count, shapes and dtype from."""
        for seq in seqs:
            if seq.kv is not None and seq.kv is not IN_BATCH:
                return seq.kv
        assert old is not None  # every one is a row of the old batch
        return old.kv

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
