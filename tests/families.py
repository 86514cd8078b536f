"""Shared by the model-family tests: a word-level tokenizer for tiny checkpoints, and the
check that ringkit's greedy decode gives transformers' tokens."""

import json

VOCAB = 128


def word_tokenizer(folder):
    """A word-level tokenizer over <0> ... <VOCAB-1>, eos <1>, saved as HF files."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({f"<{i}>": i for i in range(VOCAB)}, unk_token="<0>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<1>"}))


def assert_same_greedy(model, reference, prompt, new_tokens: int):
    """ringkit's greedy tokens (prefill + the sharded decode) equal transformers' ``generate``,
    both stopping at ringkit's stop tokens (a checkpoint's generation_config may name another
    eos, as Llama's default 2)."""
    import torch

    from ringkit.generate import generate_ids

    (mine,) = generate_ids(model, [list(prompt)], max_new_tokens=new_tokens)
    stops = list(model.tokenizer.eos_ids)
    with torch.no_grad():
        theirs = reference.generate(input_ids=torch.tensor([list(prompt)]),
                                    max_new_tokens=new_tokens, do_sample=False,
                                    eos_token_id=stops, pad_token_id=stops[0]
                                    )[0, len(prompt):].tolist()
    cut = [i for i, t in enumerate(theirs) if t in stops]
    assert mine == (theirs[:cut[0]] if cut else theirs)
