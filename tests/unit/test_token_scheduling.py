"""Scheduling by tokens inside the continuous-batching engine: SRTF preemption, aging, and the KV reserve."""

from __future__ import annotations

import pytest

from app.generation import (
    SamplingParams,
    SequenceFacts,
    kv_reserve_bytes,
    remaining_tokens,
    sequence_rank,
)
from app.policies import AGED_LEVEL, Policy, PolicyParams
from harness import tiny_lm

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

PARAMS = PolicyParams.around(0.3)


# --- the pure core ----------------------------------------------------------------------------------------------
def test_remaining_tokens_count_what_is_left_to_prefill():
    assert remaining_tokens(10, 50, 0, prefilled=False) == 60
    assert remaining_tokens(10, 50, 20, prefilled=True) == 30
    assert remaining_tokens(10, 50, 20, prefilled=False) == 60  # its cache dropped: prompt and tokens recomputed
    assert remaining_tokens(10, 50, 60, prefilled=True) == 0
    assert remaining_tokens(100, 50, 0, prefilled=False, prefill_weight=0.1) == 60  # prefill measured cheaper


def test_srtf_ranks_by_remaining_tokens_and_fifo_does_not_preempt():
    short, long = SequenceFacts(5, 0.0, 1.0), SequenceFacts(500, 0.0, 0.0)
    assert sequence_rank(Policy.SRTF, short, 0.01, PARAMS) < sequence_rank(Policy.SRTF, long, 0.01, PARAMS)
    assert sequence_rank(Policy.FIFO, short, 0.01, PARAMS) == (0, 5.0)


def test_aging_lifts_a_long_wait_to_the_aged_level_served_in_arrival_order():
    fresh_short = SequenceFacts(5, 0.0, 100.0)
    old_long = SequenceFacts(500, PARAMS.max_climb_s() + 1.0, 1.0)
    older_long = SequenceFacts(800, PARAMS.max_climb_s() + 2.0, 0.0)
    assert sequence_rank(Policy.AGING, old_long, 0.01, PARAMS)[0] == AGED_LEVEL
    assert sequence_rank(Policy.AGING, old_long, 0.01, PARAMS) < sequence_rank(Policy.AGING, fresh_short, 0.01, PARAMS)
    # Among aged ones, arrival order, whatever their size.
    assert sequence_rank(Policy.AGING, older_long, 0.01, PARAMS) < sequence_rank(Policy.AGING, old_long, 0.01, PARAMS)
    # The backlog stretches the clock as at admission: the same wait behind a long FIFO wait is not yet aged.
    stretched = SequenceFacts(500, PARAMS.max_climb_s() + 1.0, 1.0, backlog_s=100.0)
    assert sequence_rank(Policy.AGING, stretched, 0.01, PARAMS)[0] > AGED_LEVEL


def test_kv_reserve_is_the_full_contexts_or_the_budget():
    assert kv_reserve_bytes(1000, 4, 256, 10**9) == 1000 * 4 * 256
    assert kv_reserve_bytes(1000, 4, 256, 500_000) == 500_000


# --- the engine -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory):
    with tiny_lm.loaded(tmp_path_factory.mktemp("lm"), context=512) as (_, rt):
        yield rt


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def drive(engine, arrivals: dict[int, list[tuple[str, str, SamplingParams]]], clock=None, tick_s: float = 0.0):
    """Step the engine, adding each arrival at its step; returns (finish order, texts by id)."""
    done: list[str] = []
    texts: dict[str, str] = {}
    step = 0
    while engine.busy or any(k >= step for k in arrivals):
        for seq_id, prompt, params in arrivals.get(step, []):
            submitted = None if clock is None else clock.now
            engine.add(seq_id, prompt, params, submitted_at=submitted)
            texts[seq_id] = ""
        for event in engine.step():
            texts[event.sequence.id] += event.text
            if event.finished:
                done.append(event.sequence.id)
        if clock is not None:
            clock.now += tick_s
        step += 1
    return done, texts


def test_measured_kv_bytes_per_token_match_the_configuration(runtime):
    config = runtime._model.config
    assert runtime.kv_bytes_per_token == 2 * config.n_layer * config.n_embd * 4  # fp32 keys and values
    assert runtime.kv_reserve_bytes(4, 10**12) == runtime.kv_bytes_per_token * 4 * 512


@pytest.mark.parametrize("policy", [Policy.SRTF, Policy.AGING])
def test_a_short_request_preempts_the_longest_and_every_text_is_its_solo_text(runtime, policy):
    greedy_long = SamplingParams(max_tokens=60)
    sampled_long = SamplingParams(max_tokens=50, temperature=0.9, top_p=0.9, seed=11)
    short = SamplingParams(max_tokens=4)
    engine = runtime.engine(max_sequences=2, policy=policy)
    arrivals = {
        0: [("long-a", "the quick brown", greedy_long), ("long-b", "tokens flow", sampled_long)],
        5: [("short-1", "a model as a service", short)],
        20: [("short-2", "continuous batching lets", short)],
    }
    done, texts = drive(engine, arrivals)
    assert done.index("short-1") < done.index("long-a") and done.index("short-2") < done.index("long-a")
    assert engine.preemptions >= 2
    for seq_id, prompt, params in [x for xs in arrivals.values() for x in xs]:
        assert texts[seq_id] == tiny_lm.solo(runtime, prompt, **params.to_json()), seq_id
    assert engine.kv_bytes == 0


def test_fifo_never_preempts(runtime):
    engine = runtime.engine(max_sequences=1, policy=Policy.FIFO)
    done, _ = drive(
        engine,
        {
            0: [("long", "the quick brown", SamplingParams(max_tokens=30))],
            3: [("short", "tokens flow", SamplingParams(max_tokens=3))],
        },
    )
    assert done == ["long", "short"] and engine.preemptions == 0


def test_preemption_frees_kv_bytes_for_the_short_one(runtime):
    """With the KV-byte budget, not the slots, as the limit, the short request still gets in."""
    probe = runtime.engine()
    long_need = (len(probe.tokenizer("the quick brown")["input_ids"]) + 80) * probe.bytes_per_token
    engine = runtime.engine(max_sequences=8, max_kv_bytes=long_need, policy=Policy.SRTF)
    done, texts = drive(
        engine,
        {
            0: [("long", "the quick brown", SamplingParams(max_tokens=80))],
            4: [("short", "tokens flow", SamplingParams(max_tokens=5))],
        },
    )
    assert done == ["short", "long"]
    assert texts["long"] == tiny_lm.solo(runtime, "the quick brown", max_tokens=80)


def test_aging_bounds_the_wait_of_a_long_request_that_srtf_starves(runtime):
    """A stream of short requests keeps the one slot under SRTF; under aging the long one, once its wait passes the
    aging clock, takes the slot and is not preempted again."""
    params = PolicyParams.around(0.05)  # aging starts after 0.25 s of (fake) waiting, one level per 0.1 s
    finished_at = {}
    for policy in (Policy.SRTF, Policy.AGING):
        clock = Clock()
        engine = runtime.engine(max_sequences=1, policy=policy, policy_params=params)
        engine.clock = clock
        arrivals = {0: [("long", "the quick brown", SamplingParams(max_tokens=40))]}
        for step in range(1, 300, 2):  # a short one every 2 steps, each 2 tokens long: the slot is never free
            arrivals[step] = [(f"s{step}", "tokens flow", SamplingParams(max_tokens=2))]
        done, _ = drive(engine, arrivals, clock=clock, tick_s=0.01)
        finished_at[policy] = done.index("long")
    assert finished_at[Policy.SRTF] == len(done) - 1  # starved until the stream ended
    assert finished_at[Policy.AGING] < len(done) // 2


def test_a_generative_footprint_reserves_its_kv_cache(runtime):
    """Weights plus the KV cache it may grow to: max sequences x context x measured bytes per token, or the
    configured KV budget when that is less; nothing for a model that does not generate."""
    from app.settings import Settings
    from workers.lifecycle import generative_reserve_bytes

    full = runtime.kv_bytes_per_token * 3 * 512
    roomy = Settings.from_env({"MAAS_GEN_MAX_SEQUENCES": "3", "MAAS_GEN_KV_CACHE_BYTES": str(10 * full)})
    assert generative_reserve_bytes(runtime, roomy) == full
    tight = Settings.from_env({"MAAS_GEN_MAX_SEQUENCES": "3", "MAAS_GEN_KV_CACHE_BYTES": str(full // 2)})
    assert generative_reserve_bytes(runtime, tight) == full // 2
    assert generative_reserve_bytes(object(), roomy) == 0


def test_sequences_whose_reserves_exactly_fit_are_admitted_in_one_step_without_preempting(runtime):
    """Two short arrivals whose reserves, with the running long one's, exactly fill the KV budget: both join at the
    next step and the long one keeps running (a sequence admitted earlier in the same pass is charged once)."""
    probe = runtime.engine()

    def reserve(prompt: str, max_tokens: int) -> int:
        return (len(probe.tokenizer(prompt)["input_ids"]) + max_tokens) * probe.bytes_per_token

    budget = reserve("the quick brown", 80) + 2 * reserve("tokens flow", 5)
    engine = runtime.engine(max_sequences=8, max_kv_bytes=budget, policy=Policy.SRTF)
    engine.add("long", "the quick brown", SamplingParams(max_tokens=80))
    engine.step()
    engine.add("short-1", "tokens flow", SamplingParams(max_tokens=5))
    engine.add("short-2", "tokens flow", SamplingParams(max_tokens=5))
    engine.step()
    assert {s.id for s in engine.running} == {"long", "short-1", "short-2"}
    assert engine.preemptions == 0


def test_a_deadline_and_a_cancel_in_the_same_step_report_the_deadline(runtime):
    """The worker ends sequences past their deadline before it reads its callers' cancels: the deadline stands."""
    engine = runtime.engine(max_sequences=1)
    engine.add("late", "tokens flow", SamplingParams(max_tokens=20))
    engine.step()
    engine.cancel("late", "deadline")
    engine.cancel("late")  # its caller cancelled too, read after
    (event,) = engine.step()
    assert event.finished == "deadline"


def test_a_sequence_s_run_time_leaves_out_its_time_preempted(runtime):
    """The service time a sequence reports is the forward passes it took part in: the long one, preempted while the
    short one ran alone in the only slot, did not run then, so the two never count the same second twice."""
    import time

    engine = runtime.engine(max_sequences=1, policy=Policy.SRTF)
    long = engine.add("long", "the quick brown", SamplingParams(max_tokens=120))
    started = time.monotonic()
    for _ in range(3):
        engine.step()
    short = engine.add("short", "tokens flow", SamplingParams(max_tokens=100))
    engine.run()
    elapsed = time.monotonic() - started
    assert long.preemptions == 1 and short.finish_reason and long.finish_reason
    assert long.run_s > 0 and short.run_s > 0
    assert long.run_s + short.run_s <= elapsed
