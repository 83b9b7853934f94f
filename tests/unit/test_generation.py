"""The generative runtime and the continuous-batching engine, on a tiny GPT-2 built here (nothing downloaded)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from app import errors
from app.generation import SamplingParams, parse_params
from harness import tiny_lm

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

PROMPTS = ["the quick brown", "tokens flow", "a model as a service", "shortest", "continuous batching lets"]


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lm")
    return tiny_lm.packed(root / "tiny", root / "tiny.tar")


@pytest.fixture(scope="module")
def runtime(artifact: Path):
    from workers.runtimes import create

    rt = create("causal_lm")
    rt.load(artifact, use_gpu=False)
    yield rt
    rt.unload()


def alone(runtime, prompt: str, **params) -> str:
    return "".join(runtime.generate(prompt, SamplingParams(**params)))


def test_greedy_matches_transformers_generate(runtime):
    """The engine's KV-cache loop gives the tokens transformers' own greedy generate gives."""
    import torch

    model, tokenizer = runtime._model, runtime._tokenizer
    for prompt in PROMPTS[:3]:
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        with torch.inference_mode():
            ref = model.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.eos_token_id)
        expected = tokenizer.decode(ref[0, ids.shape[1] :], skip_special_tokens=True)
        assert alone(runtime, prompt, max_tokens=12) == expected


def test_the_tiny_model_s_text_depends_on_the_whole_context(runtime):
    """What makes the comparisons below able to fail: the same last words continue differently after different
    beginnings, and the text is not one token repeated. A cache row or position gone wrong changes the tokens."""
    after_fox = alone(runtime, "the quick brown fox jumps over the lazy dog and", max_tokens=16)
    after_model = alone(runtime, "a model as a service serves many and", max_tokens=16)
    assert after_fox != after_model
    tokens = runtime._tokenizer(after_fox)["input_ids"]
    assert len(set(tokens)) >= 4


def test_max_tokens_counts_tokens(runtime):
    engine = runtime.engine()
    seq = engine.add("s", "the quick brown", SamplingParams(max_tokens=7))
    engine.run()
    assert seq.finish_reason == "length" and len(seq.generated) == 7


def test_sampling_is_reproducible_with_a_seed(runtime):
    first = alone(runtime, "tokens flow", max_tokens=16, temperature=1.0, top_p=0.9, seed=7)
    assert first == alone(runtime, "tokens flow", max_tokens=16, temperature=1.0, top_p=0.9, seed=7)
    assert first != alone(runtime, "tokens flow", max_tokens=16, temperature=1.0, top_p=0.9, seed=8)
    assert first != alone(runtime, "tokens flow", max_tokens=16)


def test_a_tiny_top_p_is_greedy(runtime):
    greedy = alone(runtime, "tokens flow", max_tokens=10)
    assert alone(runtime, "tokens flow", max_tokens=10, temperature=1.0, top_p=1e-6, seed=3) == greedy


def test_stop_strings_end_the_text_before_them(runtime):
    full = alone(runtime, "the quick brown", max_tokens=24)
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    assert stop and stop in full
    chunks = list(runtime.generate("the quick brown", SamplingParams(max_tokens=24, stop=(stop,))))
    text = "".join(chunks)
    assert text == full[: full.find(stop)]
    assert stop not in text


def test_cancellation_raises_after_the_tokens_made(runtime):
    made: list[str] = []
    with pytest.raises(errors.Cancelled):
        for chunk in runtime.generate("tokens flow", SamplingParams(max_tokens=50), cancelled=lambda: len(made) >= 3):
            made.append(chunk)
    assert len(made) == 3


def test_infer_path_serves_prompts_as_a_bytes_tensor(runtime):
    out = runtime.infer({"prompt": np.array([b"the quick brown", b"tokens flow"], dtype=object)})
    assert [t.decode() for t in out["text"]] == [alone(runtime, p) for p in ("the quick brown", "tokens flow")]


def test_continuous_batching_gives_each_sequence_its_solo_tokens(runtime):
    """Sequences join at different steps and leave when done; each gets exactly the tokens it gets alone."""
    lengths = [20, 5, 12, 3, 9]
    expected = {p: alone(runtime, p, max_tokens=n) for p, n in zip(PROMPTS, lengths, strict=True)}
    engine = runtime.engine(max_sequences=3)
    texts: dict[str, str] = {p: "" for p in PROMPTS}
    pending = list(zip(PROMPTS, lengths, strict=True))
    steps, most = 0, 0
    while pending or engine.busy:
        if pending and steps % 2 == 0:  # one joins every other step, while others run
            prompt, n = pending.pop(0)
            engine.add(prompt, prompt, SamplingParams(max_tokens=n))
        for event in engine.step():
            texts[event.sequence.id] += event.text
        most = max(most, len(engine.running))
        steps += 1
    assert texts == expected
    assert most == 3  # it did batch, and never over its limit
    assert engine.kv_bytes == 0


def test_the_running_batch_is_kept_while_its_members_stay_and_rebuilt_when_they_change(runtime):
    """The batched cache is the step's only copy: steps with the same members grow the same batch in place of
    rebuilding it; a finished sequence leaves it at the next step, and the last one takes it away."""
    engine = runtime.engine(max_sequences=4)
    engine.add("short", "tokens flow", SamplingParams(max_tokens=3))
    engine.add("long", "the quick brown", SamplingParams(max_tokens=8))
    engine.step()  # both prefilled: no batch yet
    engine.step()
    batch = engine._batch
    assert batch is not None and [s.id for s in batch.rows] == ["short", "long"]
    width = batch.width
    engine.step()  # "short" makes its third and last token here
    assert engine._batch is batch and batch.width == width + 1
    engine.step()
    assert engine._batch is not batch and [s.id for s in engine._batch.rows] == ["long"]
    engine.run()
    assert engine._batch is None and engine.kv_bytes == 0


def test_a_row_whose_cache_was_dropped_and_recomputed_is_not_decoded_from_the_old_batch(runtime):
    """Two rows of a batch are preempted; one loses its cache (as ``_make_room`` drops it for bytes) and is
    prefilled again while the other still waits with its row kept. When both run again, the batch must be rebuilt
    from the fresh cache, not reused because its members look the same. The engine gets here under ``aging`` when
    ranks move while sequences wait; the steps are driven by hand to make it certain."""
    engine = runtime.engine(max_sequences=2)
    first = engine.add("first", "the quick brown", SamplingParams(max_tokens=12))
    second = engine.add("second", "tokens flow", SamplingParams(max_tokens=12))
    texts = {"first": "", "second": ""}

    def step() -> None:
        for event in engine.step():
            texts[event.sequence.id] += event.text

    step()
    step()
    step()  # both decode as rows of one batch
    engine._preempt(first)
    engine._preempt(second)
    first.kv = None  # its cache dropped for bytes: recomputed when it resumes
    engine.waiting.remove(second)
    step()  # "first" alone is re-admitted and prefilled: no decode pass this step
    stale = engine._batch
    engine.waiting.append(second)
    step()
    # Rebuilt, and every row's cache is as long as its sequence's (and the texts below would show a stale row).
    assert engine._batch is not stale
    assert all(s.cached_tokens <= engine._batch.width for s in engine._batch.rows)
    assert [s.cached_tokens for s in engine._batch.rows] == [
        len(s.prompt_ids) + len(s.generated) - 1 for s in engine._batch.rows
    ]
    while engine.busy:
        step()
    assert texts == {
        "first": alone(runtime, "the quick brown", max_tokens=12),
        "second": alone(runtime, "tokens flow", max_tokens=12),
    }
    assert engine.kv_bytes == 0


def test_sampled_sequences_in_a_batch_match_alone(runtime):
    params = [SamplingParams(max_tokens=10, temperature=0.8, top_p=0.95, seed=s) for s in range(3)]
    expected = ["".join(runtime.generate("tokens flow", p)) for p in params]
    engine = runtime.engine(max_sequences=4)
    seqs = [engine.add(str(i), "tokens flow", p) for i, p in enumerate(params)]
    engine.run()
    assert [s.text for s in seqs] == expected


def test_cancelling_frees_the_slot_and_kv_cache(runtime):
    engine = runtime.engine(max_sequences=1)
    engine.add("long", "the quick brown", SamplingParams(max_tokens=100))
    engine.step()
    waiting = engine.add("next", "tokens flow", SamplingParams(max_tokens=4))
    engine.step()
    assert [s.id for s in engine.running] == ["long"] and engine.kv_bytes > 0
    held = engine.kv_bytes
    engine.cancel("long")
    events = engine.step()
    assert [(e.sequence.id, e.finished) for e in events if e.finished] == [("long", "cancelled")]
    assert [s.id for s in engine.running] == ["next"]
    assert 0 < engine.kv_bytes < held
    engine.run()
    assert waiting.text == alone(runtime, "tokens flow", max_tokens=4)
    assert engine.kv_bytes == 0


def test_kv_budget_limits_the_running_batch(runtime):
    probe = runtime.engine()
    per_seq = (len(probe.tokenizer("tokens flow")["input_ids"]) + 6) * probe.bytes_per_token
    engine = runtime.engine(max_sequences=8, max_kv_bytes=per_seq)
    for i in range(3):
        engine.add(str(i), "tokens flow", SamplingParams(max_tokens=6))
    most = 0
    while engine.busy:
        engine.step()
        most = max(most, len(engine.running))
        assert engine.kv_bytes <= per_seq
    assert most == 1
    with pytest.raises(errors.InvalidInput, match="KV cache"):
        engine.add("big", "tokens flow", SamplingParams(max_tokens=100))


def test_short_request_overtakes_a_waiting_long_one(runtime):
    """SRTF by remaining tokens at step boundaries: the short one is admitted before a long one that came first."""
    engine = runtime.engine(max_sequences=1)
    engine.add("long-1", "the quick brown", SamplingParams(max_tokens=30))
    engine.step()
    engine.add("long-2", "the quick brown", SamplingParams(max_tokens=30))
    engine.add("short", "tokens flow", SamplingParams(max_tokens=3))
    done: list[str] = []
    while engine.busy:
        done += [e.sequence.id for e in engine.step() if e.finished]
    assert done == ["long-1", "short", "long-2"]


def test_registration_reads_the_fixed_signature(artifact, tmp_path):
    from app.runtime_signatures import signature_for
    from workers.runtimes import archive

    inputs, outputs = signature_for("causal_lm", artifact, None, None)
    assert inputs == [{"name": "prompt", "datatype": "BYTES", "shape": [-1]}]
    assert outputs == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    directory = tiny_lm.build(tmp_path / "custom")
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoModel": "evil.Model"}}))
    with pytest.raises(errors.CorruptArtifact, match="custom model code"):
        signature_for("causal_lm", archive.pack(directory, tmp_path / "custom.tar"), None, None)


@pytest.mark.parametrize(
    "raw",
    [
        {"max_tokens": 0},
        {"max_tokens": True},
        {"temperature": -1},
        {"top_p": 0},
        {"seed": -3},
        {"stop": [""]},
        {"stop": ["a", "b", "c", "d", "e"]},
        {"max_token": 3},
    ],
)
def test_bad_parameters_are_refused(raw):
    with pytest.raises(errors.InvalidInput):
        parse_params(raw)


def test_parameters_round_trip_and_sampled_requests_get_a_seed():
    params = parse_params({"max_tokens": 5, "temperature": 0.7, "stop": "\n"})
    assert parse_params(params.to_json()) == params
    assert params.seeded("abc").seed is not None and params.seeded("abc") == params.seeded("abc")
    assert SamplingParams().seeded("abc").seed is None  # greedy needs none


def test_invalid_bytes_do_not_hold_the_stream_back(runtime, monkeypatch):
    """A lone UTF-8 continuation byte never becomes a character: its replacement character is released at once
    (only a trailing one, which the next bytes may still complete, waits)."""
    from workers import generation

    # Byte-level BPE spells byte 0x80 (not printable) as the character 256 + its rank among unprintable bytes.
    unprintable = [b for b in range(256) if not (33 <= b <= 126 or 161 <= b <= 172 or 174 <= b <= 255)]
    lone = runtime._tokenizer.convert_tokens_to_ids(chr(256 + unprintable.index(0x80)))
    assert runtime._tokenizer.decode([lone]) == "\ufffd"
    monkeypatch.setattr(generation, "_pick", lambda logits, params, generator: lone)
    engine = runtime.engine()
    engine.add("s", "tokens flow", SamplingParams(max_tokens=6))
    released = [len(e.text) for e in engine.step() + engine.step() + engine.step()]
    assert sum(released) == len(runtime._tokenizer.decode([lone] * 3)) - 1 == 2  # all but the last one
