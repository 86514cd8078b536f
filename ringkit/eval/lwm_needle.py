"""LWM's needle in a haystack, as LargeWorldModel/LWM's ``scripts/eval_needle.py`` (one needle) and
``eval_needle_multi.py`` (several) build it: its strings typed in as facts, its trimming and
insertion done in the model's tokens where LWM uses tiktoken's."""

from __future__ import annotations

import numpy as np

from ringkit.errors import ShapeError
from ringkit.eval.common import LWM_CHAT, Template
from ringkit.eval.haystack import Haystack

# scripts/eval_needle.py (LLMNeedleHaystackTester)
LWM_SOURCE = "LargeWorldModel/LWM scripts/eval_needle.py"
LWM_MULTI_SOURCE = "LargeWorldModel/LWM scripts/eval_needle_multi.py"
LWM_CITIES = (
    "Chicago", "Yangon", "Antananarivo", "Colombo", "Almaty", "Sydney", "Chicago", "Mexico City",
    "Seattle", "Lagos", "Amsterdam", "Belgrade", "Cairo", "Baghdad", "Damascus", "Kigali",
    "Dakar", "Dakar", "Sofia", "Kigali", "Victoria", "Tashkent", "Mumbai", "Barcelona", "Almaty",
    "Amman", "Toronto", "Bratislava", "Johannesburg", "Thimphu", "Bangkok", "Santiago", "Cairo",
    "San Francisco", "Lagos", "Amsterdam", "Paris", "Rabat", "Santiago", "Copenhagen", "Madrid",
    "Kigali", "Ho Chi Minh City", "Sarajevo", "Delhi", "Istanbul", "Ho Chi Minh City",
    "Khartoum", "Helsinki", "Doha", "Istanbul", "Kuala Lumpur", "Budapest", "Shanghai",
    "Moscow", "Los Angeles", "Oslo", "Johannesburg", "Berlin", "Bangalore", "Tokyo",
    "Melbourne", "Barcelona", "Chicago", "Port Louis", "Lisbon", "Nairobi", "Kampala", "Lima",
    "Maputo", "Vancouver", "Dubai", "Khartoum", "Jakarta", "Madrid", "Yerevan", "Beirut",
    "Athens", "Chicago", "Paris", "Bucharest", "Copenhagen", "Brussels", "Damascus", "Seattle",
    "Los Angeles", "Yerevan", "Victoria", "Tunis", "Astana", "Seoul", "Buenos Aires", "Bangkok",
    "Colombo", "Brussels", "Khartoum", "Doha", "San Francisco", "Vienna", "Jakarta")
LWM_NEEDLE = "\nThe special magic {city} number is: {number}\n"
LWM_NEEDLE_UNKEYED = "\nThe special magic number is: {number}\n"  # ringkit's, not LWM's
LWM_INSTRUCTION = ("Don't give information outside the document or repeat your findings. Keep "
                   "your response short and direct.")
LWM_MULTI_INSTRUCTION = "Don't give information outside the document."  # eval_needle_multi.py
LWM_BUFFER = 200  # final_context_length_buffer: "system message, the user question, and response"


def lwm_question(cities: list[str | None], needles: int) -> str:
    """LWM's question: eval_needle.py's for one needle, eval_needle_multi.py's for several."""
    if cities == [None]:
        return "What is the special magic number?"
    if needles == 1:
        return f"What is the special magic {cities[0]} number?"
    if len(cities) == 1:
        return f"What is the special magic number for {cities[0]}?"
    return ("What are the special magic numbers for " + ", ".join(cities[:-1]) + ", and "
            + cities[-1] + "?")


def _lwm_cities(rng, needles: int) -> list[str]:
    """Cities drawn from LWM's list as ``random.choice`` draws them (its duplicates make some
    likelier); several needles get distinct ones."""
    cities: list[str] = []
    while len(cities) < needles:
        city = LWM_CITIES[int(rng.integers(len(LWM_CITIES)))]
        if city not in cities:
            cities.append(city)
    return cities


def build_lwm_trial(tok, template: Template, hay: Haystack, *, length: int, depth: float,
                    trial: int, seed: int, needles: int, retrieve: int, keys: bool = True,
                    longest: int | None = None) -> dict:
    """One trial of LWM's eval_needle.py: the prompt ``text`` and its ``ids`` (``length - 200``
    tokens of haystack and needles, plus the template and question), and what it hides."""
    rng = np.random.default_rng([seed, length, int(round(depth * 10_000)), trial])
    cities = _lwm_cities(rng, needles)
    if not keys:
        cities = [None] * needles
    numbers = [int(n) for n in rng.integers(1_000_000, 10_000_000, needles)]
    asked = sorted(int(i) for i in rng.choice(needles, retrieve, replace=False))
    if 0 not in asked:  # the needle at ``depth`` is always one of those asked for
        asked = sorted([0] + asked[1:])
    depths = [depth] + [float(d) for d in rng.uniform(0, 1, needles - 1)]
    text = LWM_NEEDLE if keys else LWM_NEEDLE_UNKEYED
    needle_ids = [tok.encode(text.format(city=c, number=n), add_bos=False, literal=True)
                  for c, n in zip(cities, numbers)]
    room = length - LWM_BUFFER  # the haystack and needles, in the model's tokens
    if room - sum(map(len, needle_ids)) < 16:
        raise ShapeError(f"length {length} leaves no room for a haystack: LWM's protocol keeps "
                         f"{LWM_BUFFER} tokens for the prompt and answer, so use a length of at "
                         f"least {LWM_BUFFER + sum(map(len, needle_ids)) + 64}")
    ids = hay.round_ids(trial, seed, length, max(longest or length, length))
    # LWM trims the haystack to room - len(needle) before each insertion; trimming once for all
    # the needles is the same for one needle, and for several it keeps a needle inserted near
    # the end from being cut off by the next one's trim.
    ids = ids[:room - sum(map(len, needle_ids))]
    period = set(tok.encode(".", add_bos=False, literal=True))
    for needle, d in zip(needle_ids, depths):  # insert_needle, one needle at a time
        if d == 1:
            ids = ids + needle
            continue
        at = int(len(ids) * d)
        while at > 0 and ids[at - 1] not in period:  # back to just after a '.'
            at -= 1
        ids = ids[:at] + needle + ids[at:]
    question = lwm_question([cities[i] for i in asked], needles)
    instruction = LWM_INSTRUCTION if needles == 1 else LWM_MULTI_INSTRUCTION
    message = f"{tok.decode(ids)} {question} {instruction}"
    return dict(ids=template.encode(tok, message), text=template.text(message),
                cities=[cities[k] for k in asked], numbers=[numbers[k] for k in asked],
                question=question)


def lwm_template(tok, template: str) -> Template:
    """LWM's prompt is its own chat format: ``base`` keeps it verbatim, whatever the model;
    ``chat`` puts its user part in the model's chat template."""
    if template == "base":
        return Template("lwm", *LWM_CHAT)
    return Template.for_model(tok, template)
