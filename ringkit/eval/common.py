"""What every evaluation shares: the chat shell around a prompt, resumable JSONL runs, and the
batched greedy loop that answers a list of prompts cell by cell."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
import time
import warnings
from typing import Callable, Hashable, Sequence

import numpy as np

from ringkit.errors import ConfigError, FormatError, MissingDependencyError, advice, is_whole
from ringkit.generate import generate_ids
from ringkit.progress import bar
from ringkit.tokenize.prompts import chat_shell

SYSTEM = "You are a helpful assistant."


def pandas():
    try:
        import pandas
    except ImportError as e:
        raise MissingDependencyError("evaluation results are pandas DataFrames: "
                                     "pip install 'ringkit[eval]' (pandas, matplotlib)") from e
    return pandas


@dataclasses.dataclass(frozen=True)
class Prompter:
    """Token ids around a user message: the chat template's head (with BOS) and what follows the
    message up to where the assistant's answer starts."""

    head: list[int]
    after_question: str

    @classmethod
    def for_model(cls, tok, template: str = "chat") -> "Prompter":
        """``template``: ``"chat"`` (the model's chat template, or LWM's prompt for a model
        with none) or ``"base"`` (no wrapper: the tokenizer's own BOS, then the text)."""
        if template == "base":
            return cls(tok.encode(""), "")
        if template != "chat":
            raise ConfigError(f"unknown template {template!r}: choose 'base' or 'chat'")
        shell = chat_shell(tok, True) if tok.chat_template is not None else None
        if shell is None:  # LWM's plain prompt
            return cls(tok.encode(f"{SYSTEM} USER:", add_bos=True), " ASSISTANT:")
        before, after = shell
        return cls(tok.encode(before, add_bos=True), after)

    def _answer(self, answer_prefix: str) -> str:
        if answer_prefix and (not self.after_question or self.after_question.endswith(":")):
            return f"{self.after_question} {answer_prefix}"  # LWM's "ASSISTANT:", or no shell
        return self.after_question + answer_prefix

    def tail(self, tok, question: str, answer_prefix: str = "") -> list[int]:
        """The question after a blank line, then the answer started with ``answer_prefix``."""
        return tok.encode(f"\n\n{question}{self._answer(answer_prefix)}", add_bos=False)


# RULER's 'lwm-chat' template (scripts/data/template.py), which is LWM's own prompt: the "chat"
# template of a checkpoint that carries none.
LWM_CHAT = ("You are a helpful assistant. USER: ", " ASSISTANT: ")


@dataclasses.dataclass(frozen=True)
class Template:
    """The text around a task's prompt, as RULER's ``model_template_type`` puts it: ``base``
    (none) or ``chat`` (the model's chat template; RULER's ``lwm-chat`` for a checkpoint with
    none). ``text(message, answer_prefix)`` is ``before + message + after + answer_prefix``,
    RULER's ``model_template.format(task_template=...) + answer_prefix``."""

    name: str     # "base", "chat" or "lwm-chat"
    before: str
    after: str

    @classmethod
    def for_model(cls, tok, name: str = "chat") -> "Template":
        if name == "base":
            return cls("base", "", "")
        if name != "chat":
            raise ConfigError(f"unknown template {name!r}: choose 'base' (the prompt alone, as "
                              "for a base model) or 'chat' (the model's chat template)")
        if tok.chat_template is None:
            return cls("lwm-chat", *LWM_CHAT)
        shell = chat_shell(tok, True)
        if shell is None:
            raise ConfigError("this model's chat template alters the user's text, so a prompt "
                              "cannot be placed in it verbatim: use template='base'")
        return cls("chat", *shell)

    def text(self, message: str, answer_prefix: str = "") -> str:
        return self.before + message + self.after + answer_prefix

    def encode(self, tok, message: str, answer_prefix: str = "") -> list[int]:
        """The prompt's ids in one encode (the tokenizer's own BOS rule, as the originals'
        Hugging Face tokenizers apply it); special-token strings in ``message`` stay text."""
        at = len(self.before)
        return tok.encode(self.text(message, answer_prefix), literal=[(at, at + len(message))])


@dataclasses.dataclass(frozen=True)
class CellPrompt:
    """One evaluation cell's prompt, built without running a model: ``text`` as the model reads
    it (special tokens spelled out), its ``ids``, and the ``answers`` a correct reply contains."""

    text: str
    ids: list
    answers: tuple
    protocol: dict

    def __repr__(self) -> str:
        return (f"CellPrompt({len(self.ids):,} tokens, answers {list(self.answers)}, "
                f"{self.protocol['name']}):\n{self.text[:300]}\n...\n{self.text[-300:]}")


def tokenizer_of(tokenizer):
    """A ringkit tokenizer from a tokenizer, a model, or None (the embedded SmolLM2's, read
    from its GGUF's metadata without loading the weights)."""
    if tokenizer is None:
        from ringkit.model.load import embedded_model_path
        from ringkit.model.weights.gguf import read_metadata
        from ringkit.tokenize.text import Tokenizer

        return Tokenizer.from_gguf_fields(read_metadata(embedded_model_path()))
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
    if not hasattr(tokenizer, "encode") or not hasattr(tokenizer, "chat_template"):
        raise ConfigError(f"need a ringkit tokenizer or model (model.tokenizer), got "
                          f"{type(tokenizer).__name__}")
    return tokenizer


def jsonable(row: dict) -> dict:
    return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in row.items()}


def grid_values(values, kind: type, name: str) -> list:
    """A list of numbers (one number is a list of one) as ``kind``, or a ``ConfigError``."""
    values = [values] if isinstance(values, (int, float, np.number)) else values
    try:
        if isinstance(values, (str, bytes)):
            raise TypeError(name)
        out = [kind(v) for v in values]
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a list of numbers, got {values!r:.80}") from None
    if kind is int and any(o != v for o, v in zip(out, values)):
        raise ConfigError(f"{name} must be whole numbers, got {values!r:.80}")
    return out


def check_counts(**counts) -> None:
    """Whole-number options: ``seed``, ``trial`` and ``index`` >= 0, every other one >= 1."""
    for name, value in counts.items():
        low = 0 if name in ("seed", "trial", "index") else 1
        if not is_whole(value, low):
            raise ConfigError(f"{name} must be a whole number >= {low}, got {value!r}")


def run_key(config: dict) -> str:
    """What makes two runs the same: their settings, less the ``protocol`` record derived from
    them (its wording may change without changing a single prompt)."""
    settings = {k: v for k, v in config.items() if k != "protocol"}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def load_done(resume, config: dict, cell_of: Callable[[dict], Hashable]) -> dict:
    """Rows of ``resume`` (a JSONL path, may not exist) written by a run with ``config``.

    A last line cut short (a run killed mid-write) is dropped from the file, with a warning, so
    that the rows appended next start on a line of their own; any other line that is not a
    row of ours raises a ``FormatError`` naming it.
    """
    done: dict = {}
    if resume is None:
        return done
    path = pathlib.Path(resume)
    if path.is_dir():
        raise FormatError(f"{advice('resume=', '--out ')}{str(resume)!r} is a directory; give a "
                          ".jsonl file")
    if not path.parent.is_dir():
        raise FormatError(f"{advice('resume=', '--out ')}{str(resume)!r}: its folder "
                          f"{str(path.parent)!r} does not exist")
    if not path.exists():
        return done
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        kept = data[:data.rfind(b"\n") + 1]
        warnings.warn(f"{resume}: dropping its last line, cut short by an interrupted run "
                      f"({len(data) - len(kept)} bytes)", stacklevel=3)
        path.write_bytes(kept)
        data = kept
    key = run_key(config)
    for number, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            run = row.pop("run")
            mine = run_key(run) == key
            cell = cell_of(row) if mine else None
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise FormatError(
                f"line {number} of {resume} is not a result row ringkit wrote ({e!r:.80}); "
                "remove that line, or pass another resume file") from None
        if mine:
            done[cell] = row
    return done


def jsonl_line(row: dict, config: dict) -> str:
    """One result row with its run's settings (what ``load_done`` reads back)."""
    return json.dumps(jsonable({**row, "run": config}), sort_keys=True) + "\n"


def write_jsonl(path, rows: Sequence[dict], config: dict) -> None:
    with open(path, "w") as f:
        f.writelines(jsonl_line(row, config) for row in rows)


def answer_cells(model, cells: Sequence[tuple], *, group: Callable[[tuple], Hashable],
                 build: Callable[[tuple], dict], score: Callable[[tuple, dict, str], dict],
                 max_new_tokens: Callable[[tuple], int], config: dict, done: dict, resume,
                 batch: int, label: str, vision: bool = False) -> dict:
    """Answer every cell not in ``done`` greedily, ``batch`` prompts of one group at a time.

    ``build(cell)`` returns a dict with the prompt ``ids`` (and, with ``vision``, their
    ``vision`` mask); ``score(cell, built, answer)`` the row to keep. Each new row is appended
    to ``resume`` (JSONL, with ``config``) as it finishes, so an interrupted run loses at most
    one batch. Returns ``done`` with the new rows.
    """
    todo = [c for c in cells if c not in done]
    groups: dict = {}
    for c in todo:
        groups.setdefault(group(c), []).append(c)
    out = open(resume, "a") if resume is not None else None
    try:
        with bar(len(todo), label, "prompt", threshold=1) as progress:
            for mine in groups.values():
                for start in range(0, len(mine), batch):
                    chunk = mine[start:start + batch]
                    built = [build(c) for c in chunk]
                    t0 = time.perf_counter()
                    answers = generate_ids(
                        model, [b["ids"] for b in built], max_new_tokens=max_new_tokens(chunk[0]),
                        vision_rows=[b["vision"] for b in built] if vision else None)
                    seconds = (time.perf_counter() - t0) / len(chunk)
                    for c, b, ids in zip(chunk, built, answers):
                        row = {**score(c, b, model.tokenizer.decode(ids)), "seconds": seconds}
                        done[c] = row
                        if out is not None:
                            out.write(jsonl_line(row, config))
                            out.flush()
                    progress.update(len(chunk))
    finally:
        if out is not None:
            out.close()
    return done


def html_table(summary: str, table, *, vmax: float, digits: int) -> str:
    """A results object's notebook view: its summary over its score table, coloured."""
    import html

    return (f"<p>{html.escape(summary)}</p>" + table.style.format(f"{{:.{digits}f}}")
            .background_gradient(cmap="RdYlGn", vmin=0, vmax=vmax).to_html())


def heatmap(table, ax=None, *, vmax: float, title: str, xlabel: str, ylabel: str,
            row_label=str):
    """``table`` (a DataFrame of scores in [0, vmax]) as a red-to-green heatmap; returns the
    axes. Columns are lengths in tokens."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(1.6 + 0.9 * table.shape[1], 0.8 + 0.45 * table.shape[0]))
    image = ax.imshow(table.values, vmin=0, vmax=vmax, cmap="RdYlGn", aspect="auto")
    ax.set_xticks(range(table.shape[1]), [f"{c:,}" for c in table.columns])
    ax.set_yticks(range(table.shape[0]), [row_label(r) for r in table.index])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    for (r, c), v in np.ndenumerate(table.values):
        ax.text(c, r, f"{v:.2f}" if vmax <= 1 else f"{v:.0f}", ha="center", va="center",
                fontsize=8)
    ax.set_title(title)
    ax.figure.colorbar(image, ax=ax, fraction=0.05)
    return ax
