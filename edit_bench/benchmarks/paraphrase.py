"""Paraphrase and typo groups made by rule from a case's own prompts (a benchmark option, recorded in its protocol).

An erasure that holds only for the words it was given is not an erasure (ESD §5.6 draws the Eiffel Tower from five
paraphrases). Each rule rewrites the prompts that name the edited concept (TIMED's efficacy prompt, a concept
table's erased rows) into group ``paraphrase:<rule>``, with the labels of the prompt it came from, so every metric
scores it as it scores the prompt itself:

- ``synonyms``: each concept word (a word of the request's source that its target lacks; without one, each word of
  the source: the edited subject) replaced by each of its
  synonyms in the word lists (``datasets/paraphrase/words.json``), the article fixed ("an airplane" -> "a jet");
- ``translations``: each concept word replaced by its translation in every language of the word lists;
- ``typos``: each concept word of 4+ letters misspelt three ways at its middle: two letters swapped, one dropped,
  one doubled ("Pell" -> "Plel", "Pel", "Pelll");
- ``word_order``: a trailing phrase fronted ("a circle by Pell" -> "by Pell, a circle"; connectors ``in the style
  of``, ``by``, ``on``, ``with``), else the modifiers before the last word reversed ("a big red car" -> "a red big
  car");
- ``toy_grammar``: the toy world's own paraphrases (``edit_bench.models.toy.world.paraphrases``: the other ways of
  naming an artist, each framing prefix, the modifiers reversed).

A rule that has nothing to rewrite in a prompt makes nothing from it; a paraphrase equal to one of the case's own
prompts is dropped.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re

from ..errors import UsageError
from ..types import EditRequest
from ..io import resolve_path

RULES = ("synonyms", "translations", "typos", "word_order", "toy_grammar")
STOPWORDS = {"a", "an", "the", "of", "by", "in", "on", "with", "and", "style", "photo", "picture", "image", "drawing",
             "painting", "portrait", "to", "at", "for"}
CONNECTORS = (" in the style of ", " by ", " on ", " with ")


@functools.lru_cache(maxsize=8)
def _words(path: str) -> dict:
    p = resolve_path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UsageError(f"{p} is not valid JSON ({e}): give a word-list file like datasets/paraphrase/words.json") from None
    if not isinstance(data.get("synonyms", {}), dict) or not isinstance(data.get("translations", {}), dict):
        raise UsageError(f"{p}: expected {{'synonyms': {{word: [..]}}, 'translations': {{language: {{word: ..}}}}}}")
    return data


def check_rules(rules) -> list[str]:
    rules = list(rules or [])
    bad = [r for r in rules if r not in RULES]
    if bad:
        raise UsageError(f"unknown paraphrase rule(s) {bad}: use any of {list(RULES)}")
    return list(dict.fromkeys(rules))


def concept_words(request: EditRequest) -> list[str]:
    """The words of the request's source that its target lacks (an erasure: "a circle by Pell" -> "a circle" names
    Pell), else every word of the source (an added attribute: "a circle" -> "a blue circle" edits the circle), stopwords
    left out."""
    target = set(re.findall(r"[\w'-]+", request.target.lower()))
    source = [w for w in dict.fromkeys(re.findall(r"[\w'-]+", request.source.lower())) if w not in STOPWORDS]
    return [w for w in source if w not in target] or source


def _replace(prompt: str, word: str, new: str) -> str | None:
    """``prompt`` with the whole word/phrase ``word`` replaced by ``new`` (and a preceding a/an fixed)."""
    m = re.search(rf"(?i)(\b(?:a|an)\s+)?\b{re.escape(word)}\b", prompt)
    if m is None:
        return None
    article = m.group(1)
    if article:
        a = "an" if new[:1].lower() in "aeiou" else "a"
        article = (a.capitalize() if article[0].isupper() else a) + " "
    return prompt[:m.start()] + (article or "") + new + prompt[m.end():]


def typos(word: str) -> list[str]:
    """Three misspellings at the middle of ``word``: two letters swapped, one dropped, one doubled."""
    if len(word) < 4:
        return []
    i = len(word) // 2
    out = [word[:i - 1] + word[i] + word[i - 1] + word[i + 1:], word[:i] + word[i + 1:], word[:i] + word[i] + word[i:]]
    return [w for w in dict.fromkeys(out) if w != word]


def word_order(prompt: str) -> list[str]:
    low = prompt.lower()
    for c in CONNECTORS:
        i = low.find(c)
        if i > 0:
            return [f"{c.strip()} {prompt[i + len(c):]}, {prompt[:i]}"]
    w = prompt.split()
    if len(w) >= 4 and w[0].lower() in ("a", "an") and not STOPWORDS & {x.lower() for x in w[1:-1]}:
        mods = w[1:-1][::-1]
        return [" ".join([("an" if mods[0][0].lower() in "aeiou" else "a"), *mods, w[-1]])]
    return []


def rewrite(prompt: str, request: EditRequest, rule: str, words_path: str) -> list[str]:
    """Every paraphrase ``rule`` makes of ``prompt`` (see the module docstring)."""
    if rule == "word_order":
        return word_order(prompt)
    if rule == "toy_grammar":
        from ..models.toy.world import paraphrases

        return paraphrases(prompt)
    concepts = concept_words(request)
    data = _words(words_path) if rule in ("synonyms", "translations") else {}
    lists = {k.lower(): v for k, v in data.get("synonyms", {}).items()}
    phrases = [k for k in lists if " " in k and k in request.source.lower() and k not in request.target.lower()]
    covered = {x for ph in phrases for x in ph.split()}  # a word of a matched phrase is not rewritten alone
    out = []
    for w in phrases + [c for c in concepts if c not in covered]:
        if rule == "synonyms":
            news = lists.get(w, [])
        elif rule == "translations":
            news = [t[w] for t in (v for _, v in sorted(data.get("translations", {}).items())) if w in t]
        else:  # typos: in the word's own capitalisation
            m = re.search(rf"(?i)\b{re.escape(w)}\b", prompt)
            news = typos(m.group(0)) if m else []
        out += [p for n in news if (p := _replace(prompt, w, n)) is not None]
    return out


def paraphrase_groups(pairs, request: EditRequest, rules: list[str], words_path: str, own: set[str]) -> dict:
    """``{"paraphrase:<rule>": (PromptPair, ...)}``: each rule's paraphrases of ``pairs``' prompts, with their labels
    (``own``: the case's prompts, lower case; never repeated)."""
    out = {}
    for rule in rules:
        made, seen = [], set(own)
        for pair in pairs:
            for p in rewrite(pair.prompt, request, rule, words_path):
                if p.lower() not in seen:
                    seen.add(p.lower())
                    made.append(dataclasses.replace(pair, prompt=p))
        if made:
            out[f"paraphrase:{rule}"] = tuple(made)
    return out
