"""A deterministic generator of small invented DocRED-style documents.

The project cannot ship benchmark data, but its main job and its demos need
labelled documents that exercise the whole path, including facts that only
follow from other facts: a person's country of citizenship is usually not
stated, but follows from their birthplace and the country that city lies in.
That is the kind of pair DocRE-II's inference module is for.
"""
from __future__ import annotations

import random

from .document import Document, Entity, Fact, Mention, RelationInventory

RELATIONS = {
    "P19": "place of birth",
    "P17": "country",
    "P27": "country of citizenship",
    "P108": "employer",
    "P159": "headquarters location",
}

_FIRST = "Alvar Brina Corin Dalia Emrik Fenna Galen Hedda Ivor Jorun Kasimir Liesel Mattis Nadia Oskar Petra".split()
_LAST = "Vantor Quelle Ashby Marrow Tolland Weiss Brandt Okafor Lindqvist Sarno Dufort Halloran Ruiz Kettle".split()
_CITIES = "Velmora Ostrand Carvale Duneport Ismere Kaltberg Lorvik Marisant Nodhaven Perrow Quillan Rastova".split()
_COUNTRIES = "Arvenia Borlund Castemar Dravia Elstoria Feyland".split()
_ORGS = ["Halcyon Dynamics", "Ostrand Mills", "Corvid Press", "Vesper Labs", "Tallow Foods", "Nimbus Rail"]


def _sentence(words: str) -> list[str]:
    return words.split()


class _Writer:
    """Builds one document sentence by sentence; entities are keyed so aliases join their entity."""

    def __init__(self) -> None:
        self.sents: list[list[str]] = []
        self.ents: list[Entity] = []
        self.index: dict[str, int] = {}
        self.facts: dict[tuple[int, int, str], Fact] = {}

    def say(self, template: str, slots: dict[str, tuple[str, str, str]]) -> dict[str, int]:
        """Append a sentence; slots map a name to (entity key, surface text, type); returns entity ids."""
        words: list[str] = []
        ids: dict[str, int] = {}
        for piece in _sentence(template):
            if not (piece.startswith("{") and piece.endswith("}")):
                words.append(piece)
                continue
            key, text, etype = slots[piece[1:-1]]
            if key not in self.index:
                self.index[key] = len(self.ents)
                self.ents.append(Entity([], etype))
            eid = self.index[key]
            self.ents[eid].mentions.append(Mention(len(self.sents), len(words), len(words) + len(text.split()), text))
            ids[piece[1:-1]] = eid
            words.extend(text.split())
        self.sents.append(words)
        return ids

    def fact(self, head: int, tail: int, relation: str) -> None:
        self.facts[(head, tail, relation)] = Fact(head, tail, relation)


def synthesize(n_docs: int, seed: int = 0, explicit_citizenship: float = 0.2) -> list[Document]:
    """`n_docs` documents about one or two people each: birthplace, its country, employer, its seat.

    Citizenship (P27) is labelled for every person but stated only with
    probability `explicit_citizenship`; otherwise it must be inferred from
    P19 (born in a city) and P17 (the city's country).
    """
    rng = random.Random(seed)
    city_country = {c: rng.choice(_COUNTRIES) for c in _CITIES}
    docs = []
    for i in range(n_docs):
        w = _Writer()
        for p in rng.sample(range(len(_FIRST)), rng.choice([1, 2])):
            surname = rng.choice(_LAST)
            person = (f"person{p}", f"{_FIRST[p]} {surname}", "PER")
            alias = (f"person{p}", surname, "PER")
            city = rng.choice(_CITIES)
            country = city_country[city]
            org, hq = rng.choice(_ORGS), rng.choice(_CITIES)
            loc = lambda name: (name, name, "LOC")  # noqa: E731
            ids = w.say(rng.choice(["{p} was born in {c} in 1950 .", "Born in {c} , {p} grew up near the river ."]),
                        {"p": person, "c": loc(city)})
            w.fact(ids["p"], ids["c"], "P19")
            c = w.say(rng.choice(["{c} is a city in {k} .", "The town of {c} lies in northern {k} ."]),
                      {"c": loc(city), "k": loc(country)})
            w.fact(c["c"], c["k"], "P17")
            if rng.random() < explicit_citizenship:
                w.say("{p} holds a passport of {k} .", {"p": alias, "k": loc(country)})
            w.fact(ids["p"], c["k"], "P27")  # stated, or inferable from P19 + P17
            e = w.say(rng.choice(["{p} later worked for {o} .", "{p} joined {o} as an engineer ."]),
                      {"p": alias, "o": (org, org, "ORG")})
            w.fact(e["p"], e["o"], "P108")
            h = w.say("{o} is based in {c} , a city of {k} .", {"o": (org, org, "ORG"), "c": loc(hq),
                                                               "k": loc(city_country[hq])})
            w.fact(h["o"], h["c"], "P159")
            w.fact(h["c"], h["k"], "P17")
        doc_id = f"synthetic-{seed}-{i:05d}"
        docs.append(Document(doc_id, w.sents, w.ents, list(w.facts.values()), title=doc_id))
    return docs


def inventory() -> RelationInventory:
    return RelationInventory(list(RELATIONS), dict(RELATIONS))
