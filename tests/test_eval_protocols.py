"""The evals' prompts against the originals' templates, typed in here as facts with the file each
comes from: LargeWorldModel/LWM scripts/eval_needle.py and eval_needle_multi.py; NVIDIA/RULER
scripts/data/synthetic/constants.py, scripts/data/template.py and the task scripts beside
constants.py. ringkit's own haystack (context) is cut out of each prompt; everything around it
must equal the original's text character for character."""

import collections
import dataclasses
import json
import re

import pytest

from ringkit.errors import ConfigError, ShapeError
from ringkit.eval import needle_prompt, ruler_prompt
from ringkit.eval.common import Template
from ringkit.eval.ruler import RulerResults, build_sample
from ringkit.eval.ruler_tasks import TASKS, Env

pd = pytest.importorskip("pandas")
HAY = " ".join(f"Line {i} tells of ships and harbours and the sea." for i in range(3000))

# LargeWorldModel/LWM scripts/eval_needle.py
LWM_TEMPLATE = ("You are a helpful assistant. USER: {context} {question} Don't give information "
                "outside the document or repeat your findings. Keep your response short and "
                "direct. ASSISTANT: ")
LWM_NEEDLE = "\nThe special magic {city} number is: {rnd_number}\n"
LWM_QUESTION = "What is the special magic {} number?"
LWM_BUFFER = 200  # final_context_length_buffer
LWM_CITIES_HEAD = ["Chicago", "Yangon", "Antananarivo", "Colombo", "Almaty", "Sydney", "Chicago",
                   "Mexico City"]
# LargeWorldModel/LWM scripts/eval_needle_multi.py
LWM_MULTI_TEMPLATE = ("You are a helpful assistant. USER: {context} {question} Don't give "
                      "information outside the document. ASSISTANT: ")
LWM_MULTI_QUESTION = "What are the special magic numbers for {}?"

# NVIDIA/RULER scripts/data/synthetic/constants.py: (template, answer_prefix)
RULER = {
    "niah": ("Some special magic {type_needle_v} are hidden within the following text. Make sure "
             "to memorize it. I will quiz you about the {type_needle_v} afterwards.\n{context}\n"
             "What are all the special magic {type_needle_v} for {query} mentioned in the "
             "provided text?",
             " The special magic {type_needle_v} for {query} mentioned in the provided text are"),
    "variable_tracking": (
        "Memorize and track the chain(s) of variable assignment hidden in the following text."
        "\n\n{context}\nQuestion: Find all variables that are assigned the value {query} in the "
        "text above.",
        " Answer: According to the chain(s) of variable assignment in the text above, {num_v} "
        "variables are assigned the value {query}, they are: "),
    "common_words_extraction": (
        "Below is a numbered list of words. In these words, some appear more often than others. "
        "Memorize the ones that appear most often.\n{context}\nQuestion: What are the 10 most "
        "common words in the above list?",
        " Answer: The top 10 words that appear most often in the list are:"),
    "freq_words_extraction": (
        "Read the following coded text and track the frequency of each coded word. Find the "
        "three most frequently appeared coded words. {context}\nQuestion: Do not provide any "
        "explanation. Please ignore the dots '....'. What are the three most frequently "
        "appeared words in the above coded text?",
        " Answer: According to the coded text above, the three most frequently appeared words "
        "are:"),
    "qa": ("Answer the question based on the given documents. Only give me the answer and do not "
           "output any other words.\n\nThe following are given documents.\n\n{context}\n\n"
           "Answer the question based on the given documents. Only give me the answer and do not "
           "output any other words.\n\nQuestion: {query}",
           " Answer:"),
}
# NVIDIA/RULER scripts/data/template.py
RULER_LWM_CHAT = "You are a helpful assistant. USER: {task_template} ASSISTANT: "
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."


@pytest.fixture(scope="module")
def tok(smollm2_tokenizer):
    return smollm2_tokenizer


def _between(text: str, before: str, after: str) -> str:
    start = text.index(before) + len(before)
    return text[start:text.rindex(after)]


@pytest.mark.parametrize("length, depth, trial, seed", [
    (1000, 0.0, 0, 1), (1500, 0.33, 2, 7), (2222, 0.61, 1, 3), (3000, 1.0, 4, 9)])
def test_lwm_needle_is_eval_needle_py(tok, length, depth, trial, seed):
    p = needle_prompt(tok, length, depth, trial=trial, seed=seed, haystack=HAY)
    assert p.protocol["comparable"] and p.protocol["template"] == "base"
    (number,) = p.answers
    city = re.search(r"\nThe special magic (.+) number is: \d{7}\n", p.text).group(1)
    question = LWM_QUESTION.format(city)
    context = _between(p.text, "USER: ", f" {question} Don't")
    assert p.text == LWM_TEMPLATE.format(context=context, question=question)
    needle = LWM_NEEDLE.format(city=city, rnd_number=number)
    assert context.count(needle) == 1 and number.isdigit() and len(number) == 7
    # The haystack and the needle fill length - 200 of the model's tokens; the needle sits at
    # ``depth`` of it, just after a '.', or at the very end for depth 1.
    assert abs(len(tok.encode(context, add_bos=False)) - (length - LWM_BUFFER)) <= 2
    at = context.index(needle)
    if depth == 1:
        assert context.endswith(needle)
    elif at > 0:
        assert context[at - 1] == "." and depth - 0.05 < at / len(context) <= depth + 0.01
    else:
        assert depth < 0.05
    assert p.ids == tok.encode(p.text)  # one encode of the text, as LWM tokenizes its prompt


def test_lwm_cities_and_reproducibility(tok):
    from ringkit.eval.lwm_needle import LWM_CITIES

    assert list(LWM_CITIES[:8]) == LWM_CITIES_HEAD and len(LWM_CITIES) == 100
    assert collections.Counter(LWM_CITIES)["Chicago"] == 4 and LWM_CITIES[-1] == "Jakarta"
    cities = set()
    for trial in range(40):
        p = needle_prompt(tok, 600, 0.5, trial=trial, haystack=HAY)
        cities.add(re.search(r"special magic (.+) number\?", p.text).group(1))
        assert p == needle_prompt(tok, 600, 0.5, trial=trial, haystack=HAY)
    assert cities <= set(LWM_CITIES) and len(cities) > 15
    # A trial's haystack is one of LWM's rounds: the same at every length and depth.
    a, b = (needle_prompt(tok, n, 1.0, trial=3, haystack=HAY).text for n in (700, 900))
    assert _between(b, "USER: ", "\nThe special")[:200] == _between(a, "USER: ", "\nThe")[:200]


def test_lwm_multi_needle_is_eval_needle_multi_py(tok):
    p = needle_prompt(tok, 2500, 0.4, trial=1, needles=4, retrieve=3, haystack=HAY)
    assert p.protocol["source"].endswith("eval_needle_multi.py")
    cities = re.findall(r"\nThe special magic (.+?) number is: (\d{7})\n", p.text)
    assert len(cities) == 4 and len({c for c, _ in cities}) == 4
    city_of = {n: c for c, n in cities}
    asked = [city_of[n] for n in p.answers]  # asked in the order of the answers
    question = LWM_MULTI_QUESTION.format(", ".join(asked[:-1]) + ", and " + asked[-1])
    assert len(asked) == 3 and f" {question} Don't" in p.text
    context = _between(p.text, "USER: ", f" {question} Don't")
    assert p.text == LWM_MULTI_TEMPLATE.format(context=context, question=question)
    one = needle_prompt(tok, 2500, 0.4, trial=1, needles=2, retrieve=1, haystack=HAY)
    assert re.search(r"What is the special magic number for .+\? Don't give information "
                     r"outside the document\. ASSISTANT: $", one.text)


def test_lwm_needle_in_a_chat_template_and_jsonl_rounds(tok, tmp_path):
    p = needle_prompt(tok, 1200, 0.5, trial=0, haystack=HAY)
    chat = needle_prompt(tok, 1200, 0.5, trial=0, haystack=HAY, template="chat")
    user = _between(p.text, "USER: ", " ASSISTANT: ")
    shell = Template.for_model(tok, "chat")
    assert chat.text == shell.before + user + shell.after and not chat.protocol["comparable"]
    # A PG-19-style JSONL haystack: trial t reads round t, documents from where round t - 1
    # stopped once it held the run's longest length (LWM's read_context_files).
    docs = [f"Book {b}. " + " ".join(f"Page {b}-{i} of the book." for i in range(60))
            for b in range(12)]
    path = tmp_path / "pg19.jsonl"
    path.write_text("\n".join(json.dumps({"text": d}) for d in docs))
    per_doc = len(tok.encode(docs[0], add_bos=False))
    first = needle_prompt(tok, 900, 1.0, trial=0, haystack=path, longest=900)
    second = needle_prompt(tok, 900, 1.0, trial=1, haystack=path, longest=900)
    rounds = -(-900 // per_doc)  # documents per round
    assert first.text.startswith("You are a helpful assistant. USER: Book 0. Page 0-0")
    assert second.text.startswith(f"You are a helpful assistant. USER: Book {rounds}. Page")
    assert "PG-19" not in " ".join(first.protocol["differences"])
    with pytest.raises(ShapeError, match="round"):
        needle_prompt(tok, 900, 0.5, trial=20, haystack=path)
    with pytest.raises(ShapeError, match="at least"):
        needle_prompt(tok, 230, 0.5, haystack=HAY)
    with pytest.raises(ConfigError, match="unknown template"):
        needle_prompt(tok, 900, 0.5, haystack=HAY, template="raw")


def _ruler(tok, task, length, index=0, seed=0, template="base", qa=None):
    env = Env(HAY.split(" "), length, qa or {}, tok)
    return build_sample(task, tok, Template.for_model(tok, template), env, index=index, seed=seed)


def _singular(text: str) -> str:  # RULER's niah.py, for one needle asked for one value
    return (text.replace("Some", "A").replace("are all", "is").replace("are", "is")
            .replace("answers", "answer"))


@pytest.mark.parametrize("task, length, index", [
    ("niah_single_1", 900, 0), ("niah_single_2", 1300, 3), ("niah_single_3", 1100, 1),
    ("niah_multikey_1", 1500, 2), ("niah_multikey_2", 1200, 4), ("niah_multikey_3", 1700, 0),
    ("niah_multivalue", 1400, 5), ("niah_multiquery", 1600, 6)])
def test_ruler_niah_base_prompts_are_ruler_templates(tok, task, length, index):
    b = _ruler(tok, task, length, index=index)
    spec = TASKS[task]
    template, prefix = RULER["niah"]
    kind = spec.values
    if spec.n_queries * spec.n_values == 1:
        template, prefix, kind = _singular(template), _singular(prefix), kind[:-1]
    head = template.split("{context}")[0].format(type_needle_v=kind)
    query = re.search(r"\nWhat (?:is|are all) the special magic \w+ for (.+) mentioned in the "
                      r"provided text\?", b["text"]).group(1)
    context = _between(b["text"], head, "\nWhat ")
    assert b["text"] == (template + prefix).format(type_needle_v=kind, context=context,
                                                   query=query)
    assert b["text"].endswith(prefix.format(type_needle_v=kind, query=query))
    assert prefix.startswith(" The special magic")
    keys = query.split(", and ") if spec.n_queries > 1 else [query]
    keys = [k for part in keys for k in part.split(", ")]
    assert len(keys) == spec.n_queries
    found = re.findall(rf"One of the special magic {spec.values} for (\S+) is: (\S+)\.", context)
    assert sorted(v for k, v in found if k in keys) == sorted(b["outputs"])
    if spec.haystack == "noise":
        assert set(context.split("\n")) - {NOISE} == {f"One of the special magic numbers for "
                                                      f"{keys[0]} is: {b['outputs'][0]}."}
    if spec.haystack == "essay":  # the essay's first words, as RULER reads them
        assert context.lstrip().startswith(("Line 0 tells", "One of the special magic"))


def test_ruler_vt_cwe_fwe_qa_base_prompts(tok, tmp_path):
    # vt: a worked example filling 500 tokens (three-letter names), then the task; positions of
    # a chain's lines are distinct.
    b = _ruler(tok, "vt", 2000, index=1)
    template, prefix = RULER["variable_tracking"]
    task_at = b["text"].rindex("Memorize and track")
    example, asked = b["text"][:task_at], b["text"][task_at:]
    value = re.search(r"assigned the value (\d+) in the text above\. Answer", asked).group(1)
    context = _between(asked, "following text.\n\n", "\nQuestion: Find")
    assert asked == (template + prefix).format(context=context, query=value, num_v=5)
    ex_value = re.search(r"the value (\d+) in the text", example).group(1)
    ex_context = _between(example, "following text.\n\n", "\nQuestion: Find")
    names = re.findall(r"VAR (\w+) = ", ex_context)
    assert all(len(n) == 3 for n in names) and len(names) == 5
    assert example == ((template + prefix).format(context=ex_context, query=ex_value, num_v=5)
                       + " " + " ".join(names) + "\n\n")
    assert 400 < len(tok.encode(example[:-2].rsplit(" ", 5)[0] + " ", add_bos=False)) <= 500
    lines = context.split("\n")
    steps = [i for i, line in enumerate(lines) if line.startswith("VAR ")]
    assert len(steps) == 5 and len(set(steps)) == 5 and b["outputs"] == [
        re.match(r"VAR (\w+)", lines[i]).group(1) for i in steps]
    assert all(lines[i].endswith(" ") for i in steps[1:])  # RULER's "VAR B = VAR A "
    # cwe: one worked example (template, prefix, its answer), a newline, the task.
    b = _ruler(tok, "cwe", 3000, index=2)
    template, prefix = RULER["common_words_extraction"]
    example, asked = b["text"].split("\nBelow is a numbered list")
    asked = "Below is a numbered list" + asked
    assert asked == (template + prefix).format(
        context=_between(asked, "most often.\n", "\nQuestion:"))
    ex_context = _between(example, "most often.\n", "\nQuestion:")
    answer = re.search(r"are: (1\. .*)$", example).group(1)
    assert example == template.format(context=ex_context) + prefix + " " + answer
    # fwe.
    b = _ruler(tok, "fwe", 1500, index=0)
    template, prefix = RULER["freq_words_extraction"]
    context = _between(b["text"], "coded words. ", "\nQuestion: Do not")
    assert b["text"] == (template + prefix).format(context=context)
    # qa_1: the question's own paragraph, then its article's other paragraphs as distractors.
    squad = dict(data=[dict(title=f"Article {a}", paragraphs=[
        dict(context=f"Article {a} paragraph {i}: the harbour of town {a}-{i} opened in "
                     f"{1500 + 40 * a + i}.",
             qas=[dict(question=f"When did the harbour of town {a}-{i} open?",
                       answers=[dict(text=str(1500 + 40 * a + i))])])
        for i in range(40)]) for a in range(3)])
    (tmp_path / "squad.json").write_text(json.dumps(squad))
    p = ruler_prompt("qa_1", tok, 700, index=45, template="base",
                     qa_files={"qa_1": tmp_path / "squad.json"})
    template, prefix = RULER["qa"]
    context = _between(p.text, "given documents.\n\n", "\n\nAnswer the question")
    assert p.text == (template + prefix).format(context=context,
                                                query="When did the harbour of town 1-5 open?")
    assert p.answers == ("1545",)  # sample i asks the file's question i
    docs = re.findall(r"Document \d+:\nArticle (\d+) paragraph", context)
    assert 5 < len(docs) < 39 and set(docs) == {"1"}  # same-article distractors only
    big = ruler_prompt("qa_1", tok, 3500, index=45, template="base",
                       qa_files={"qa_1": tmp_path / "squad.json"})
    docs = re.findall(r"Document \d+:\nArticle (\d+) paragraph", big.text)
    assert collections.Counter(docs)["1"] == 40 and len(docs) > 45  # the whole article first


def test_ruler_chat_templates(tok):
    chat = ruler_prompt("niah_single_1", tok, 900, template="chat")
    base = ruler_prompt("niah_single_1", tok, 900, template="base")
    shell = Template.for_model(tok, "chat")
    assert chat.text.startswith(shell.before) and chat.answers == base.answers
    # RULER's model_template.format(task_template=...) + answer_prefix: the prefix with its
    # leading space right after the assistant's header.
    assert re.search(re.escape(shell.after) + r" The special magic number for \S+ mentioned in "
                     r"the provided text is$", chat.text)
    bare = dataclasses.replace(tok, chat_template=None)  # a checkpoint with no chat template
    lwm = ruler_prompt("fwe", bare, 900, template="chat")
    task = _between(lwm.text, "USER: ", " ASSISTANT: ")
    assert lwm.text == RULER_LWM_CHAT.format(task_template=task) + RULER[
        "freq_words_extraction"][1]
    assert chat.ids == tok.encode(chat.text)


def test_ruler_limits_and_summary(tok, monkeypatch):
    import ringkit.eval.ruler_tasks as tasks

    words = tasks._list_words()[:150]
    monkeypatch.setattr(tasks, "_list_words", lambda: words)
    with pytest.raises(ShapeError, match="cwe cannot fill 6,000 tokens.*english_words.json"):
        _ruler(tok, "cwe", 6000)
    with pytest.raises(ConfigError, match="one task"):
        ruler_prompt("niah", tok, 900)
    # The summary as RULER publishes it: all 13 tasks, their mean, effective length vs 85.6.
    rows = [dict(task=t, length=n, sample=i, score=100.0 if (i + len(t)) % 9 else 0.0)
            for t in TASKS for n in (4096, 8192) for i in range(40)]
    protocol = dict(name="ruler", comparable=True)
    full = RulerResults(pd.DataFrame(rows), dict(model="m", seed=0, protocol=protocol))
    assert full.comparable and not full.missing() and full.interval().max() < 5
    assert "comparable to RULER's tables, with 40 samples per task (RULER: 500" in repr(full)
    assert full.effective_length() == 8192 and full.averages().round(1).tolist() == [89.0] * 2
    part = RulerResults(pd.DataFrame([r for r in rows if not r["task"].startswith("qa")]),
                        dict(model="m", seed=0, protocol=protocol))
    assert not part.comparable and part.missing() == ["qa_1", "qa_2"]
    assert "not comparable to RULER's tables: 11 of RULER's 13 tasks (missing qa_1, qa_2; " \
           "the QA tasks need qa_files)" in repr(part)


def test_prompt_helpers_bad_input(tok, tmp_path):
    for bad in (dict(depth=1.5), dict(length=-3), dict(length="long"), dict(trial=-1),
                dict(needles=1, retrieve=2), dict(style="chatty")):
        with pytest.raises(ConfigError):
            needle_prompt(tok, **{"length": 900, "depth": 0.5, "haystack": HAY, **bad})
    with pytest.raises(ConfigError, match="qa_1 needs squad data"):
        ruler_prompt("qa_1", tok, 900)
    with pytest.raises(ConfigError, match="unknown RULER task"):
        ruler_prompt("nah", tok, 900)
    with pytest.raises(ConfigError, match="need a ringkit tokenizer or model"):
        ruler_prompt("vt", "SmolLM2", 900)
    with pytest.raises(ShapeError, match="no room for a vt prompt"):
        ruler_prompt("vt", tok, 400)
