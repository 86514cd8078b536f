"""What every evaluation shares: the chat shell around a prompt, resumable JSONL runs, and the
batched greedy loop that answers a list of prompts cell by cell."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
import time
from typing import Callable, Hashable, Sequence

import numpy as np

from ringkit.errors import MissingDependencyError
from ringkit.progress import bar

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
    def for_model(cls, tok) -> "Prompter":
        from ringkit.tokenize.prompts import _chat_shell

        shell = _chat_shell(tok, True) if tok.chat_template is not None else None
        if shell is None:  # LWM's plain prompt
            return cls(tok.encode(f"{SYSTEM} USER:", add_bos=True), " ASSISTANT:")
        before, after = shell
        return cls(tok.encode(before, add_bos=True), after)

    def _answer(self, answer_prefix: str) -> str:
        if answer_prefix and self.after_question.endswith(":"):  # LWM's "ASSISTANT:"
            return f"{self.after_question} {answer_prefix}"
        return self.after_question + answer_prefix

    def tail(self, tok, question: str, answer_prefix: str = "") -> list[int]:
        """The question after a blank line, then the answer started with ``answer_prefix``."""
        return tok.encode(f"\n\n{question}{self._answer(answer_prefix)}", add_bos=False)

    def wrap(self, tok, message: str, answer_prefix: str = "") -> list[int]:
        """The whole prompt: ``message`` as the user's turn, the answer started with
        ``answer_prefix`` (RULER's way of steering a short answer)."""
        return (self.head + tok.encode(message, add_bos=False)
                + tok.encode(self._answer(answer_prefix), add_bos=False))


def resolve_model(model, mesh):
    """``model``, or the embedded SmolLM2 on ``mesh`` when it is None (not both)."""
    from ringkit.context import default_model
    from ringkit.errors import ConfigError

    if model is None:
        return default_model(mesh)
    if mesh is not None:
        raise ConfigError("pass either model= (already on its mesh) or mesh= (for the default "
                          "model), not both")
    return model


def jsonable(row: dict) -> dict:
    return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in row.items()}


def run_key(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def load_done(resume, config: dict, cell_of: Callable[[dict], Hashable]) -> dict:
    """Rows of ``resume`` (a JSONL path, may not exist) written by a run with ``config``."""
    done: dict = {}
    if resume is not None and pathlib.Path(resume).exists():
        key = run_key(config)
        for line in pathlib.Path(resume).read_text().splitlines():
            row = json.loads(line)
            if run_key(row.pop("run")) == key:
                done[cell_of(row)] = row
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
    from ringkit.generate import generate_ids

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
