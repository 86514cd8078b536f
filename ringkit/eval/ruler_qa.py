"""The QA tasks' data: SQuAD (qa_1) and HotpotQA (qa_2) read from local files, the original JSON
releases or rows in the Hugging Face layouts, into questions over a shared pool of documents."""

from __future__ import annotations

import dataclasses
import json
import pathlib

from ringkit.errors import MissingDependencyError, SourceError


@dataclasses.dataclass(frozen=True)
class QaData:
    """Questions (each: ``question``, ``answers``, indices of its ``documents`` and of the
    ``related`` ones, the rest of its SQuAD article) over a shared pool of ``documents``."""

    name: str
    questions: list
    documents: list


def load_qa(dataset: str, path) -> QaData:
    """Read SQuAD or HotpotQA from a local file: the original JSON releases, or JSON/JSONL/
    Parquet rows in the Hugging Face layouts (``squad``/``squad_v2``; ``hotpot_qa``), read with
    ``datasets``. Unanswerable SQuAD questions are dropped."""
    path = pathlib.Path(path).expanduser()
    if not path.is_file():
        raise SourceError(f"{dataset} data {path}: no such file")
    rows = _rows(path)
    docs: dict[str, int] = {}
    questions = []

    def doc(text: str) -> int:
        return docs.setdefault(text.strip(), len(docs))

    try:
        if dataset == "squad":
            articles: dict = {}  # title -> its paragraphs' documents, in order
            for r in rows:
                d = doc(r["context"])
                title = r.get("title")
                if title is not None and d not in articles.setdefault(title, []):
                    articles[title].append(d)
            for r in rows:
                answers = sorted({a for a in r["answers"]["text"] if a})
                if answers:
                    d = doc(r["context"])
                    related = [x for x in articles.get(r.get("title"), []) if x != d]
                    questions.append(dict(question=r["question"], answers=answers,
                                          documents=[d], related=related))
        else:
            for r in rows:
                ctx = r["context"]
                pairs = (zip(ctx["title"], ctx["sentences"]) if isinstance(ctx, dict)
                         else ((t, s) for t, s in ctx))
                ids = [doc(f"{t}\n{''.join(s)}") for t, s in pairs]
                questions.append(dict(question=r["question"], answers=[r["answer"]],
                                      documents=ids))
    except (KeyError, TypeError, AttributeError) as e:
        raise SourceError(f"{path} does not look like {dataset} data (missing {e}): give the "
                          "original JSON release or rows in the Hugging Face layout") from e
    if not questions:
        raise SourceError(f"{path}: no answerable {dataset} questions")
    return QaData(dataset, questions, list(docs))


def _rows(path: pathlib.Path) -> list[dict]:
    if path.suffix == ".json":
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise SourceError(f"{path} is not valid JSON: {e}") from e
        if isinstance(raw, dict) and "data" in raw:  # SQuAD's release: articles > paragraphs
            return [dict(question=qa["question"], context=p["context"], title=art.get("title", n),
                         answers=dict(text=[a["text"] for a in qa.get("answers", [])]))
                    for n, art in enumerate(raw["data"]) for p in art["paragraphs"]
                    for qa in p["qas"]]
        if isinstance(raw, list):  # HotpotQA's release
            return raw
    try:
        import datasets
    except ImportError as e:
        raise MissingDependencyError("reading QA files needs datasets: pip install datasets") from e
    kind = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}.get(
        path.suffix)
    if kind is None:
        raise SourceError(f"{path}: give a .json, .jsonl, .parquet or .csv file")
    return list(datasets.load_dataset(kind, data_files=str(path), split="train"))
