"""A tiny generative model built on the spot, for tests and benches: nothing is downloaded.

A byte-level BPE tokenizer trained (with ``tokenizers``) on a few sentences, and a 2-layer GPT-2 with fixed-seed
random weights, saved together with ``save_pretrained`` and packed into one tar as ``maas model pack`` does. It
writes gibberish, deterministically, that depends on the whole context, which is what a test of the serving path
needs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "a model as a service serves many models on a few machines",
    "tokens flow to the caller as they are made",
    "continuous batching lets sequences join and leave between steps",
    "shortest remaining time first lets a short request overtake a long one",
]


def build(directory: Path, *, seed: int = 0, layers: int = 2, width: int = 32, context: int = 256) -> Path:
    """Write the model directory (config, safetensors weights, tokenizer); returns it."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(CORPUS, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    tokenizer.save_pretrained(directory)

    torch.manual_seed(seed)
    eos = tokenizer.eos_token_id
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=context,
        n_embd=width,
        n_layer=layers,
        n_head=2,
        bos_token_id=eos,
        eos_token_id=eos,
        # Ten times GPT-2's 0.02: at 0.02 a model this small repeats one token whatever came before (the residual
        # stream drowns what attention adds), so a test comparing two runs' tokens could not see a wrong KV cache
        # or position. At 0.2 the text varies and depends on the whole context.
        initializer_range=0.2,
    )
    model = GPT2LMHeadModel(config)
    # The end-of-text token is made unlikely, so greedy runs are long enough to test lengths and stops.
    with torch.no_grad():
        model.lm_head.weight[eos].zero_()
        model.transformer.wte.weight[eos].zero_()
    model.save_pretrained(directory, safe_serialization=True)
    return directory


def packed(directory: Path, out: Path, **kw: int) -> Path:
    """``build`` then pack into the tar ``out`` (one artifact, one sha256)."""
    from workers.runtimes.archive import pack

    return pack(build(directory, **kw), out)


@contextlib.contextmanager
def loaded(root: Path, context: int) -> Iterator[tuple[Path, Any]]:
    """The tiny model packed under ``root`` and an in-process ``causal_lm`` runtime of it: (artifact, runtime)."""
    from workers.runtimes import create

    artifact = packed(root / "tiny", root / "tiny.tar", context=context)
    runtime = create("causal_lm")
    runtime.load(artifact, use_gpu=False)
    try:
        yield artifact, runtime
    finally:
        runtime.unload()


def solo(runtime: Any, prompt: str, **params: Any) -> str:
    """What the runtime generates for ``prompt`` alone, in process: what the fleet must answer."""
    from app.generation import SamplingParams

    return "".join(runtime.generate(prompt, SamplingParams(**params)))
