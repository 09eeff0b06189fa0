"""A page's language: a function-word vote for clear-cut prose, langdetect for everything else.

Why not langdetect alone: it runs seven random trials over 55 language profiles, 3-7 ms a page,
the largest single cost of judging a page. Prose in a common language is full of that language's
function words ("the", "of", "which"; "der", "und", "nicht" ...): when one language's words make
up a large share of the sample and no other language's come close, langdetect gives the same
answer, at a hundredth of the cost. Anything less clear-cut (short text, mixed languages,
languages without a word list here, lists of names) goes to langdetect as before.

Words that belong to more than one list ("de", "la", "in", "die", "was" ...) are dropped from
all of them, so every hit is evidence for one language only.
"""

from __future__ import annotations

import re
from collections import Counter

MIN_LANG_CHARS = 200  # shorter text is not judged: langdetect guesses wildly on a few words
MAX_LANG_CHARS = 600  # a paragraph is plenty, for the vote and for langdetect
MIN_VOTE_WORDS = 25  # a vote needs this many words in the sample ...
MIN_VOTE_SHARE = 0.25  # ... this share of them from the winning language's list ...
MIN_VOTE_MARGIN = 4.0  # ... and this many times the hits of the runner-up

_WORDS = re.compile(r"[^\W\d_]+", re.UNICODE)
_LISTS = {
    "en": "a i the and of to in is was that with for on are as by this be from at or which have it its"
    " were their his her they you we not but an has had been will would there into than them"
    " these those what who when also more can all one about after he she our your my if so no do"
    " does did up out other some such only over through where how then very just each because"
    " while before between under both most any same should could may might must",
    "de": "der die das und ist nicht ein eine einer eines einem einen den dem des mit von zu auf"
    " für sich auch es im sie er wir ich du ihr sind war wird werden wurde wurden hat haben"
    " hatte bei aus nach wie oder aber noch nur um am an dass als so über vor durch zum zur sein"
    " seine ihre diese dieser dieses kann können man schon wenn sehr unter zwischen gegen ohne"
    " bis dann hier immer wo was",
    "fr": "le la les de des du un une et est en que qui dans pour pas sur au aux avec ce cette ces"
    " il elle ils elles nous vous je se sont été être par plus ne mais ou son sa ses leur leurs"
    " on comme tout très aussi fait peut sans entre sous après avant où dont était avait lui y"
    " mon ma mes",
    "es": "el la los las de del y en que un una unos unas es por con para no se su sus al lo como"
    " más pero le ya o este esta estos estas ese esa fue era son está están ser ha han muy"
    " también entre sin sobre hasta desde cuando donde porque todo todos nos yo él ella ellos",
    "it": "il lo la i gli le di del della dei delle degli dello e è un una uno che in per con non"
    " da dal dalla al alla ai alle si sono come più ma o anche questo questa quello quella era"
    " essere stato ha hanno nel nella nei sul sulla tra fra molto suo sua loro ci ne se quando"
    " dove perché",
    "nl": "de het een en van in is dat op te zijn met voor niet die er aan ook als bij door maar om"
    " uit naar was werd worden wordt heeft hebben had wat deze dit nog wel kan zo dan hij zij we"
    " wij ik je jullie geen meer over tot onder tussen veel haar hun ons",
    "pt": "o a os as de do da dos das e é em no na nos nas um uma que para com não por pelo pela se"
    " mais mas como ao aos à seu sua seus suas foi era são está ser tem também muito entre sem"
    " sobre até quando onde porque ele ela eles isso este esta",
}


def _distinct(lists: dict[str, str]) -> dict[str, frozenset[str]]:
    """Each language's words minus every word another list also has."""
    sets = {lang: set(words.split()) for lang, words in lists.items()}
    counts = Counter(w for words in sets.values() for w in words)
    return {lang: frozenset(w for w in words if counts[w] == 1) for lang, words in sets.items()}


FUNCTION_WORDS = _distinct(_LISTS)
_LANG_OF = {w: lang for lang, words in FUNCTION_WORDS.items() for w in words}


def vote_language(text: str) -> str | None:
    """The language whose function words clearly dominate ``text``, or None if none does."""
    words = _WORDS.findall(text[:MAX_LANG_CHARS].lower())
    if len(words) < MIN_VOTE_WORDS:
        return None
    hits = Counter(lang for w in words if (lang := _LANG_OF.get(w)) is not None)
    ranked = hits.most_common(2) + [("", 0), ("", 0)]
    (best, n_best), (_, n_next) = ranked[0], ranked[1]
    if n_best < MIN_VOTE_SHARE * len(words) or n_best < MIN_VOTE_MARGIN * n_next:
        return None
    return best


def langdetect_language(text: str) -> str | None:
    """langdetect's answer for the sample (seeded: langdetect is random unless seeded)."""
    from langdetect import DetectorFactory, LangDetectException, detect

    DetectorFactory.seed = 0
    try:
        return str(detect(text[:MAX_LANG_CHARS]))
    except LangDetectException:
        return None


def detect_language(text: str) -> str | None:
    """ISO 639-1 code of the text's language; None when the text is too short to judge."""
    if len(text) < MIN_LANG_CHARS:
        return None
    return vote_language(text) or langdetect_language(text)
