"""The ``ringkit`` command: ask a question of a source, or see what reading it would take.

    ringkit ask book.txt "Who is the narrator?"
    ringkit ask ./repo "Which file implements ring attention?" --max-new-tokens 64
    ringkit ask talk.mp4 "What is announced?"     # subtitles and on-screen text for text models
    ringkit info talk.mp4 --no-ocr --mesh 1,1,1,8
    ringkit needle --lengths 1024 2048 4096 --depths 0 0.5 1 --trials 3 --out needle.jsonl
    ringkit ruler --tasks niah vt --lengths 4096 8192 --samples 10 --out ruler.jsonl
    ringkit bench attention --seqs 8192 32768 --mesh 1,1,1,8
    ringkit bench model --lengths 2048 8192

A ``RingkitError`` (a missing file, an empty question, a source too long for the model or for
memory, a mesh that does not fit the devices) prints one line and exits with status 2; ``--debug``
shows the traceback instead. Its advice names this command's flags (``--rope-scaling yarn:4``,
``--include-secrets``), not Python arguments (``ringkit.errors.advice``).
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

# ringkit's own modules are imported inside the commands, not here: ``ringkit --help`` and a
# mistyped flag answer at once instead of after JAX's ~1 s import.

_MESH_HELP = ("device mesh as LWM's 'dp,fsdp,tp,sp' sizes, one of them -1 for the remaining "
              "devices (default: every device on the sequence axis 'sp')")


_ROPE_HELP = ("stretch the model's context by RoPE scaling, e.g. 'yarn:4' (SmolLM2 at 32K); "
              "kinds: linear, ntk, yarn")


def _rope(text: str):
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


def _parser() -> argparse.ArgumentParser:
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
        p.add_argument("--rope-scaling", type=_rope, metavar="KIND:FACTOR",
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
    mod.add_argument("--rope-scaling", type=_rope, metavar="KIND:FACTOR", help=_ROPE_HELP)
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


def _bench(args) -> None:
    import json
    import pathlib

    import ringkit as rk
    from ringkit import bench

    if args.what == "attention":
        mesh = rk.make_mesh(args.mesh) if args.mesh else None
        df = bench.attention(
            seqs=args.seqs, batch=args.batch, heads=args.heads, kv_heads=args.kv_heads,
            head_dim=args.head_dim, dtype=args.dtype, causal=args.causal, layout=args.layout,
            impl=args.impl, mesh=mesh, backward=args.backward, baseline=args.baseline,
            repeats=args.repeats)
        print(df.iloc[0]["kernel"])
        df = df.drop(columns="kernel")
    else:
        df = bench.model(_model(args), lengths=args.lengths, decode_tokens=args.decode_tokens,
                         repeats=args.repeats)
    print(", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in df.attrs.items()))
    print(df.to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(
            dict(settings=df.attrs, rows=df.to_dict(orient="records")), indent=1) + "\n")


def evaluation(parser) -> None:
    """Options every evaluation command shares."""
    parser.add_argument("--batch", type=int, default=4,
                        help="prompts of one length answered together (default 4)")
    parser.add_argument("--model", help="as for 'ask' (default: the embedded SmolLM2)")
    parser.add_argument("--mesh", help=_MESH_HELP)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], help="compute dtype")
    parser.add_argument("--rope-scaling", type=_rope, metavar="KIND:FACTOR", help=_ROPE_HELP)
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")


def _model(args, *, quick: bool = False):
    """The model the flags name. ``quick`` (ask, info): the embedded model computes in bfloat16
    where the CPU has native bf16, as ``ringkit.ask`` does; evaluations and benchmarks keep
    ``load_model``'s default (float32 on CPU) unless ``--dtype`` says otherwise."""
    import ringkit as rk

    mesh = rk.make_mesh(args.mesh) if args.mesh else None
    if args.model is None and args.rope_scaling is None:
        from ringkit.context import resolve_model

        return resolve_model(None, mesh, args.dtype, quick=quick)
    scaling = rk.model.RopeScaling(*args.rope_scaling) if args.rope_scaling else None
    return rk.load_model(args.model, mesh=mesh, dtype=args.dtype, rope_scaling=scaling)


def _check_output(path, flag: str, *, overwrite: bool) -> None:
    """Refuse an output path before any work: a missing folder, or (unless ``overwrite``) a
    file that is already there."""
    import pathlib

    from ringkit.errors import ConfigError

    if path is None:
        return
    path = pathlib.Path(path)
    if not path.parent.is_dir():
        raise ConfigError(f"{flag} {path}: the folder {path.parent} does not exist")
    if path.is_dir() or (path.exists() and not overwrite):
        raise ConfigError(f"{flag} {path} already exists; remove it or choose another name")


def _run(args) -> None:
    import ringkit as rk
    from ringkit.errors import SourceError

    _check_output(getattr(args, "plot", None), "--plot", overwrite=True)
    if args.command == "bench":
        _check_output(args.out, "--out", overwrite=False)
        _bench(args)
        return
    if args.command == "plan":
        p = rk.plan(args.model, args.tokens, args.mesh, dtype=args.dtype, device=args.device,
                    new_tokens=args.new_tokens)
        print(p)
        if args.feasible:
            print("\n" + p.describe_meshes(args.feasible))
        return
    if args.command in ("needle", "ruler"):
        if args.command == "needle":
            results = rk.eval.needle(
                _model(args), lengths=args.lengths, depths=args.depths, trials=args.trials,
                needles=args.needles, retrieve=args.retrieve, haystack=args.haystack,
                seed=args.seed, resume=args.out, batch=args.batch, style=args.style,
                template=args.template, keys=args.keys)
        else:
            qa = {k: v for k, v in (("qa_1", args.squad), ("qa_2", args.hotpotqa)) if v}
            results = rk.eval.ruler(
                _model(args), tasks=args.tasks, length=args.lengths, samples=args.samples,
                seed=args.seed, haystack=args.haystack, qa_files=qa, resume=args.out,
                batch=args.batch, template=args.template)
        print(results)
        if args.plot:
            import matplotlib

            matplotlib.use("Agg")
            results.plot().figure.savefig(args.plot, bbox_inches="tight", dpi=120)
        return
    if args.command == "ask" and not args.question.strip():
        raise SourceError("the question is empty; ask something")
    # A typo fails before a model loads (what to read of a video depends on the model); in a
    # list, ingest skips a missing source and says so, as long as one is there.
    missing = [s for s in args.source if not os.path.lexists(s)]
    if len(missing) == len(args.source):
        raise SourceError(f"no such file or directory: {', '.join(missing)}")
    model = _model(args, quick=True)
    vqgan = None
    if args.vqgan:
        from ringkit.tokenize.vqgan import VQGAN

        vqgan = VQGAN.load(args.vqgan)
    ocr = (False if model.config.has_vision else "auto") if args.ocr == "auto" else args.ocr
    sources = args.source if len(args.source) > 1 else args.source[0]
    options = dict(fps=args.fps, ocr=ocr, subtitles=args.subtitles,
                   include_secrets=args.include_secrets)
    if args.max_file_bytes is not None:
        options["max_file_bytes"] = args.max_file_bytes
    doc = rk.ingest(sources, **options)
    if args.command == "ask":
        rk.ask(doc, args.question, model=model, max_new_tokens=args.max_new_tokens, stream=True,
               fit=args.fit, vqgan=vqgan, temperature=args.temperature, top_p=args.top_p,
               seed=args.seed, loop_guard=args.loop_guard)
        return
    from ringkit.budget import fit_prompt
    from ringkit.context import DEFAULT_ROOM
    from ringkit.inputs.ocr import describe
    from ringkit.tokenize.prompts import context_prompt

    prompt = context_prompt(doc, model, vqgan=vqgan)
    whole = prompt.prefix
    _, prompt, note = fit_prompt(doc, prompt, model, DEFAULT_ROOM, args.fit, vqgan, None)
    tokens = prompt.prefix
    print(doc)
    for skipped in doc.skipped[:20]:
        print(f"  skipped {skipped.path}: {skipped.reason}")
    if len(doc.skipped) > 20:
        print(f"  ... and {len(doc.skipped) - 20} more skipped")
    if not model.config.has_vision:
        for text in doc.video_text:
            print(describe(text))
    print(tokens.summary(model))
    if note:
        print(f"{len(whole):,} tokens read whole; {note}")


def _dash_values(argv: list[str]) -> list[str]:
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


def main(argv=None) -> int:
    argv = _dash_values(list(sys.argv[1:] if argv is None else argv))
    args = _parser().parse_args(argv)
    from ringkit.errors import FitWarning, RingkitError, cli_audience

    try:
        with warnings.catch_warnings(), cli_audience():
            show = warnings.showwarning

            def note(message, category, *rest, **kw):
                if not issubclass(category, FitWarning):
                    return show(message, category, *rest, **kw)
                text = str(message).removeprefix("ringkit.read: ")
                print(f"ringkit: note: {text}", file=sys.stderr, flush=True)

            warnings.showwarning = note
            _run(args)
    except RingkitError as err:
        if args.debug:
            raise
        print(f"ringkit: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
