"""Creates the tiny local model real-engine tests serve: a random 2-layer Llama and a byte-level BPE tokenizer.

`--slow` makes a wider and deeper one on the same tokenizer (hidden 1024, 4 layers, about 270 MB) for the checks
that must look inside running streams: on the tiny model vLLM's engine core outruns its own API server on a
2-core machine, whose backlog then holds every HTTP answer (metrics, first chunks) until the streams are done.
Nothing is downloaded; the same script gives the same files. Run it with the real-engine venv's python
(`$(hack/real-engine-env.sh)/bin/python hack/tiny-model.py`); it prints the model folder on stdout.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

# Bump a recipe's name when it changes: the folder name carries it, so a new recipe never reuses an old model.
# name -> (hidden size, layers, attention heads, KV heads)
RECIPES = {"tiny-llama-v1": (128, 2, 4, 2), "slow-llama-v1": (1024, 4, 16, 4)}
SEED = 20240613
VOCAB = 2048
MAX_POSITIONS = 2048
BOS, EOS, PAD = "<|begin_of_text|>", "<|end_of_text|>", "<|pad|>"
# A plain role-tagged template: enough for /v1/chat/completions to render a conversation.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
TEXT = """\
The tide goes out and the boats rest on the sand until the water comes back in the evening.
An elastic cluster grows when requests queue and shrinks when the queue is empty for a while.
Every replica answers completions, streams tokens and reports how busy it is on its metrics page.
A scale-in takes a replica out of routing first, lets its requests finish and only then stops it.
"""


def log(message: str) -> None:
    print(f"[tiny-model] {message}", file=sys.stderr, flush=True)


def default_dir(recipe: str) -> Path:
    base = os.environ.get("EBBTIDE_CACHE") or str(
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ebbtide"
    )
    return Path(base) / "real-engine" / "models" / recipe


def corpus(lines: int = 4000) -> Iterator[str]:
    """The built-in text, then seeded pseudo-words: enough distinct pairs for the trainer to fill the vocabulary."""
    yield from TEXT.splitlines()
    rng = random.Random(SEED)
    syllables = [c + v for c in "bcdfghjklmnprstvwz" for v in ("a", "e", "i", "o", "u", "ai", "ou")]
    words = ["".join(rng.choices(syllables, k=rng.randint(1, 4))) for _ in range(3000)]
    for _ in range(lines):
        yield " ".join(rng.choices(words, k=rng.randint(4, 14))) + rng.choice([".", ",", "?", "!", ""])


def build_tokenizer(out: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=[BOS, EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    if tok.get_vocab_size() != VOCAB:
        raise SystemExit(f"the tokenizer learnt {tok.get_vocab_size()} tokens, not {VOCAB}: lengthen the corpus")
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, model_max_length=MAX_POSITIONS
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(out))


def build_model(out: Path, recipe: str) -> None:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM
    from transformers import PreTrainedTokenizerFast as Fast

    tok = Fast.from_pretrained(str(out))
    hidden, layers, heads, kv_heads = RECIPES[recipe]
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=MAX_POSITIONS,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
        dtype="float32",
    )
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(config)
    model.save_pretrained(str(out), safe_serialization=True)
    GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id).save_pretrained(str(out))


def digest(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=None, help="model folder (default: in the Ebbtide cache)")
    parser.add_argument("--force", action="store_true", help="rebuild even if the folder is complete")
    parser.add_argument("--slow", action="store_true", help="the wider, deeper model (slow-llama-v1)")
    args = parser.parse_args()
    recipe = "slow-llama-v1" if args.slow else "tiny-llama-v1"
    out: Path = args.out or default_dir(recipe)
    stamp = out / ".ebbtide-ready"
    if stamp.exists() and not args.force:
        print(out)
        return
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    log(f"training a {VOCAB}-token byte-level BPE tokenizer")
    build_tokenizer(tmp)
    hidden, layers, _, _ = RECIPES[recipe]
    log(f"creating a random {layers}-layer Llama (hidden {hidden}, vocab {VOCAB}, seed {SEED})")
    build_model(tmp, recipe)
    (tmp / ".ebbtide-ready").write_text(json.dumps({"recipe": recipe, "sha256": digest(tmp)}) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    log(f"model ready: {json.loads(stamp.read_text())['sha256']}")
    print(out)


if __name__ == "__main__":
    main()
