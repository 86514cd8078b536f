"""Re-run some trials of a needle grid (its JSONL) through transformers: are the misses the model's?

    python benchmarks/needle_vs_transformers.py benchmarks/results/needle-lwm-<stamp>.jsonl 2048

Rebuilds each trial of that length with ``ringkit.eval.needle_prompt`` (the JSONL's seed, style,
template and haystack; single-needle runs) and runs transformers' LlamaForCausalLM from the
embedded GGUF, fp32, greedy. Prints, per trial: depth, trial, ringkit correct, transformers
correct, same first 50 characters.
"""

import json
import sys

import torch
import transformers

from ringkit.eval import needle_prompt
from ringkit.eval.lwm_needle import LWM_NEEDLE_UNKEYED
from ringkit.eval.needle import NEEDLE_UNKEYED
from ringkit.model.load import _resolve
from ringkit.model.weights.gguf import read_gguf
from ringkit.tokenize.text import Tokenizer

path, length = sys.argv[1], int(sys.argv[2])
count = int(sys.argv[3]) if len(sys.argv) > 3 else 6
torch.set_num_threads(2)
gguf = _resolve(None)[1]
tok = Tokenizer.from_gguf_fields(read_gguf(gguf)[2])
hf = transformers.AutoModelForCausalLM.from_pretrained(
    str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32).eval()
rows = [json.loads(line) for line in open(path)]
for r in [r for r in rows if r["length"] == length][:count]:
    run = r["run"]
    p = needle_prompt(tok, length, r["depth"], trial=r["trial"], seed=run["seed"],
                      style=run.get("style", "plain"), template=run.get("template"),
                      haystack=run["haystack"], longest=run.get("longest"),
                      keys=run["needle"] not in (NEEDLE_UNKEYED, LWM_NEEDLE_UNKEYED))
    assert [int(n) for n in p.answers] == r["numbers"], "the trial did not rebuild the same needle"
    with torch.no_grad():
        out = hf.generate(torch.tensor([p.ids]), max_new_tokens=run["max_new_tokens"],
                          do_sample=False, pad_token_id=0)
    answer = tok.decode(out[0, len(p.ids):].tolist())
    print(r["depth"], r["trial"], r["correct"], str(r["numbers"][0]) in answer,
          answer[:50] == r["answer"][:50], repr(answer[:60]))
