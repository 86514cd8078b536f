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

import os
import sys
import warnings

from ringkit.cli_parser import build_parser as _parser
from ringkit.cli_parser import dash_values


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
        if args.feasible is not None:
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


def main(argv=None) -> int:
    argv = dash_values(list(sys.argv[1:] if argv is None else argv))
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
