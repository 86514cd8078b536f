"""The ``ringkit`` command's arguments: one subparser per command, the options they share, and
the small fixes argparse needs (``--mesh -1,1,1,1``). ``ringkit.cli`` runs what they parse.
"""

from __future__ import annotations

import argparse

_MESH_HELP = ("device mesh as LWM's 'dp,fsdp,tp,sp' sizes, one of them -1 for the remaining "
              "devices (default: every device on the sequence axis 'sp')")


_ROPE_HELP = ("stretch the model's context by RoPE scaling, e.g. 'yarn:4' (SmolLM2 at 32K); "
              "kinds: linear, ntk, yarn")


def rope_flag(text: str):
    from ringkit.model.rope import SCALING_KINDS

    kind, _, factor = text.partition(":")
    try:
        factor = float(factor)
    except ValueError:
        factor = -1
    if kind not in SCALING_KINDS or not factor >= 1:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give KIND:FACTOR with KIND one of {', '.join(SCALING_KINDS)} and "
            "FACTOR >= 1, e.g. yarn:4")
    return kind, factor


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ringkit", description="Ask questions of whole books, source trees and videos with "
        "a long-context model run by ring attention over a JAX device mesh.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(p):
        p.add_argument("source", nargs="+", metavar="SOURCE",
                       help="a book (.txt .md .html .epub), a directory or git checkout, a video "
                       "or image, or several of them")
        p.add_argument("--model", help="a .gguf file, an HF or LWM checkpoint directory, or an "
                       "HF hub id (default: the embedded SmolLM2-135M-Instruct)")
        p.add_argument("--mesh", help=_MESH_HELP)
        p.add_argument("--dtype", choices=["float32", "bfloat16"],
                       help="compute dtype (default: float32 on CPU, bfloat16 on accelerators)")
        p.add_argument("--rope-scaling", type=rope_flag, metavar="KIND:FACTOR",
                       help=_ROPE_HELP)
        p.add_argument("--vqgan", metavar="PATH",
                       help="LWM's VQGAN (<checkpoint>/vqgan), for a vision model to see frames")
        p.add_argument("--fps", type=float, default=1.0, help="video frames kept per second")
        p.add_argument("--ocr", action=argparse.BooleanOptionalAction, default="auto",
                       help="read the on-screen text of videos and images (Tesseract: "
                       "ringkit[ocr]); default: for text-only models, where it is installed")
        p.add_argument("--no-subtitles", dest="subtitles", action="store_false",
                       help="leave out videos' subtitles (streams and .srt/.vtt beside them)")
        p.add_argument("--include-secrets", action="store_true",
                       help="also read files that may hold secrets (.env, private keys, "
                       "credentials), which are skipped by default")
        p.add_argument("--max-file-bytes", type=int, metavar="N",
                       help="skip files of a source tree larger than this (default 1 MB)")
        p.add_argument("--fit", choices=["auto", "whole", "outline"], default="auto",
                       help="a source tree longer than the model's context: 'auto' (default) "
                       "reads its outline (paths and what each file holds) and says so, 'whole' "
                       "refuses, 'outline' always reads the outline")
        p.add_argument("--debug", action="store_true", help="show tracebacks of errors")

    ask = sub.add_parser("ask", help="answer a question about SOURCE",
                         description="Read SOURCE, prefill it, and print the answer to QUESTION "
                         "as it is generated (greedy).")
    common(ask)
    ask.add_argument("question", metavar="QUESTION", help="the question, quoted")
    ask.add_argument("--max-new-tokens", type=int, default=256,
                     help="at most this many answer tokens (default 256)")
    ask.add_argument("--temperature", type=float,
                     help="sampling temperature; 0 is greedy (default: what the model's authors "
                     "recommend, 0.2 for the embedded SmolLM2, else greedy)")
    ask.add_argument("--top-p", type=float, help="nucleus sampling's probability mass")
    ask.add_argument("--seed", type=int, default=0, help="seeds sampling (default 0)")
    ask.add_argument("--no-loop-guard", dest="loop_guard", action="store_false",
                     help="let an answer that repeats itself run to --max-new-tokens")
    info = sub.add_parser("info", help="what reading SOURCE would take",
                          description="Show what would be read from SOURCE, what was left out "
                          "and why, its tokens by modality, and the estimated memory per device.")
    common(info)
    needle = sub.add_parser(
        "needle", help="needle-in-a-haystack retrieval grid",
        description="Hide 'The special magic {city} number is: {7 digits}' at each depth of a "
        "haystack of each length, ask for it, and print the score per depth and length "
        "(ringkit.eval.needle). The default is LWM's eval_needle.py protocol.")
    needle.add_argument("--lengths", type=int, nargs="+", required=True, metavar="N",
                        help="context lengths in tokens (LWM's: haystack and needle fill N - "
                        "200; ringkit's styles: the exact prompt length)")
    needle.add_argument("--depths", type=float, nargs="+", default=[0, 0.25, 0.5, 0.75, 1],
                        metavar="D", help="needle depths in [0, 1] (default 0 .25 .5 .75 1)")
    needle.add_argument("--trials", type=int, default=3, help="trials per cell (default 3)")
    needle.add_argument("--needles", type=int, default=1, help="needles per prompt (default 1)")
    needle.add_argument("--retrieve", type=int, default=1,
                        help="how many of the needles the question asks for (default 1)")
    needle.add_argument("--haystack", default="shakespeare",
                        help="'shakespeare' (default), a text file, or a PG-19-style JSONL "
                        "file (LWM's haystack)")
    needle.add_argument("--style", choices=["lwm", "instructed", "plain"], default="lwm",
                        help="'lwm' (default): LWM's eval_needle.py prompt, character for "
                        "character; 'instructed': RULER's way, a line saying a number is "
                        "hidden, the answer started with the question's words; 'plain': "
                        "haystack, question")
    needle.add_argument("--template", choices=["base", "chat"],
                        help="'base': no chat template (with 'lwm', its default: LWM's prompt "
                        "verbatim); 'chat': the model's chat template (ringkit's styles' "
                        "default)")
    needle.add_argument("--no-keys", dest="keys", action="store_false",
                        help="one needle with no city, asked 'What is the special magic "
                        "number?' (not a published protocol)")
    needle.add_argument("--seed", type=int, default=0, help="fixes haystacks and needles")
    needle.add_argument("--out", help="a JSONL file: trials already in it are not run again, "
                        "new ones are appended")
    needle.add_argument("--plot", help="write the depth x length heatmap to this image file")
    evaluation(needle)
    ruler = sub.add_parser(
        "ruler", help="RULER's long-context tasks and the effective length",
        description="Build RULER's tasks offline at each length (prompt plus answer budget in "
        "the model's tokens), answer them greedily, and print the score (0-100) per task and "
        "length and the effective length: the longest length up to which the mean over tasks "
        "stays above 85.6 (ringkit.eval.ruler).")
    ruler.add_argument("--tasks", nargs="+", default=["all"], metavar="TASK",
                       help="niah_single_1..3, niah_multikey_1..3, niah_multivalue, "
                       "niah_multiquery, vt, cwe, fwe, qa_1, qa_2, or the groups 'all' (the 11 "
                       "synthetic tasks, default) and 'niah'")
    ruler.add_argument("--lengths", type=int, nargs="+", required=True, metavar="N",
                       help="lengths in tokens")
    ruler.add_argument("--samples", type=int, default=10, help="samples per task and length "
                       "(default 10)")
    ruler.add_argument("--squad", metavar="PATH", help="SQuAD data for qa_1 (a local file)")
    ruler.add_argument("--hotpotqa", metavar="PATH", help="HotpotQA data for qa_2 (a local file)")
    ruler.add_argument("--haystack", default="shakespeare",
                       help="the essay haystack: 'shakespeare' (default) or a path to a text "
                       "file (or RULER's PaulGrahamEssays.json)")
    ruler.add_argument("--template", choices=["chat", "base"], default="chat",
                       help="'chat' (default): the model's chat template; 'base': none, as "
                       "RULER runs base models")
    ruler.add_argument("--seed", type=int, default=0, help="fixes every sample")
    ruler.add_argument("--out", help="a JSONL file: samples already in it are not run again, "
                       "new ones are appended")
    ruler.add_argument("--plot", help="write the task x length heatmap to this image file")
    evaluation(ruler)
    bench = sub.add_parser(
        "bench", help="ring attention's or the model's speed on this machine",
        description="Time ring attention or the model here: medians after a warm-up run, with "
        "the same-run matmul rate (and for attention XLA's or cuDNN's attention on one device) "
        "as yardsticks (ringkit.bench).")
    kinds = bench.add_subparsers(dest="what", required=True, metavar="WHAT")
    att = kinds.add_parser("attention", help="ring attention, forward and backward",
                           description="Random q, k, v on the mesh; forward and forward+backward "
                           "TFLOP/s per sequence length (ringkit.bench.attention).")
    att.add_argument("--seqs", type=int, nargs="+", default=[8192], metavar="S",
                     help="sequence lengths (default 8192)")
    att.add_argument("--batch", type=int, default=1)
    att.add_argument("--heads", type=int, default=16, help="query heads (default 16)")
    att.add_argument("--kv-heads", type=int, help="KV heads (default: as many as query heads)")
    att.add_argument("--head-dim", type=int, default=128)
    att.add_argument("--dtype", choices=["float32", "bfloat16"], default="bfloat16")
    att.add_argument("--impl", choices=["auto", "xla", "pallas"], default="auto")
    att.add_argument("--layout", choices=["zigzag", "contiguous"], default="zigzag")
    att.add_argument("--no-causal", dest="causal", action="store_false")
    att.add_argument("--no-backward", dest="backward", action="store_false")
    att.add_argument("--no-baseline", dest="baseline", action="store_false",
                     help="skip the one-device jax.nn.dot_product_attention yardstick")
    mod = kinds.add_parser("model", help="prefill and decode tokens per second",
                           description="Random prompts of each length: prefill and decode "
                           "speed (ringkit.bench.model).")
    mod.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096], metavar="N",
                     help="prompt lengths in tokens (default 1024 4096)")
    mod.add_argument("--decode-tokens", type=int, default=32,
                     help="decode steps timed after each prompt (default 32)")
    mod.add_argument("--model", help="as for 'ask' (default: the embedded SmolLM2)")
    mod.add_argument("--dtype", choices=["float32", "bfloat16"], help="compute dtype")
    mod.add_argument("--rope-scaling", type=rope_flag, metavar="KIND:FACTOR", help=_ROPE_HELP)
    plan = sub.add_parser(
        "plan", help="memory, devices and time for N tokens of a model, from shapes alone",
        description="Bytes per device (weights, KV cache, activations, peak), whether it fits, "
        "prefill FLOPs and time, decode reads per token (ringkit.plan); no weights are read.")
    plan.add_argument("--model", required=True,
                      help="a preset (lwm-7b, llama-3.1-8b, qwen2.5-7b-1m, ...), an HF directory "
                      "or config.json, or a .gguf file")
    plan.add_argument("--tokens", required=True, help="e.g. 131072, 128K, 1M")
    plan.add_argument("--mesh", default="1,1,1,8", help="dp,fsdp,tp,sp sizes (default 1,1,1,8)")
    plan.add_argument("--device", help="h100, h200, tpu-v4, tpu-v5e, tpu-v5p or a memory size "
                      "in bytes")
    plan.add_argument("--dtype", choices=["float32", "bfloat16"], default="bfloat16")
    plan.add_argument("--new-tokens", type=int, default=0, help="tokens decoded after it")
    plan.add_argument("--feasible", type=int, metavar="N",
                      help="also list the meshes of N devices that fit --device, best first")
    plan.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    for p in (att, mod):
        p.add_argument("--repeats", type=int, default=5, help="timed runs (default 5)")
        p.add_argument("--mesh", help=_MESH_HELP)
        p.add_argument("--out", help="also write the settings and rows to this JSON file")
        p.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    return parser


def evaluation(parser: argparse.ArgumentParser) -> None:
    """Options every evaluation command shares."""
    parser.add_argument("--batch", type=int, default=4,
                        help="prompts of one length answered together (default 4)")
    parser.add_argument("--model", help="as for 'ask' (default: the embedded SmolLM2)")
    parser.add_argument("--mesh", help=_MESH_HELP)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], help="compute dtype")
    parser.add_argument("--rope-scaling", type=rope_flag, metavar="KIND:FACTOR", help=_ROPE_HELP)
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")


def dash_values(argv: list[str]) -> list[str]:
    """``--mesh -1,1,1,1`` as ``--mesh=-1,1,1,1``: argparse takes a value that starts with
    '-' for an option unless it is joined to its flag."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] == "--mesh" and i + 1 < len(argv) and argv[i + 1].startswith("-"):
            out.append(f"--mesh={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out
