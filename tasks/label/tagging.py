"""LLM tags per image (or per batch of images) and a one-line concept summary for the dataset.

Tags: 1-3 core subjects, style, art movement, medium, 5-8 keywords. The summary is what the
trigger word stands for; the evaluation prompts and the model card read it. Output must match a
JSON schema (the pydantic models below, sent to the endpoint as ``response_format``); an answer
that does not is asked again once per ``schema_retries`` with the validation error quoted, and
then the offline keyword tagger takes over for those images. Every counter goes to the stage's
metrics, so a run says how often the LLM was useful.

Providers are one callable, ``chat(messages, schema) -> text``: the OpenAI-compatible client
(``lora_factory.llm_client.ChatClient.chat``) or a local transformers model (``LocalChat``); both cached by
input hash.
"""

from __future__ import annotations

import json
import re
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from lora_factory.config import LabelConfig
from lora_factory.llm_client import ChatClient, Counters, EndpointError, ResponseCache, map_bounded

from .keywords import KeywordTagger

Chat = Callable[[list[dict[str, Any]], dict[str, Any] | None], str]
TAG_FIELDS = ("subject", "style", "movement", "medium", "keywords")


def _tag(value: str) -> str:
    """Lower case, no commas (they separate tags in captions), one line, at most 6 words."""
    t = " ".join(re.sub(r"[,\n\r\t\"]", " ", value).split()).lower().strip(" .;:")
    if not t:
        raise ValueError("a tag must not be empty")
    return " ".join(t.split()[:6])


Tag = Annotated[str, Field(max_length=80), AfterValidator(_tag)]


class ImageTags(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    subject: list[Tag] = Field(min_length=1, max_length=3)
    style: Tag
    movement: Tag  # "none" when no art movement applies (most photographs)
    medium: Tag
    keywords: list[Tag] = Field(min_length=5, max_length=8)


class TagBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    images: list[ImageTags] = Field(min_length=1)


def _one_line(value: str) -> str:
    return " ".join(value.split())


class ConceptSummary(BaseModel):
    model_config = ConfigDict(extra="forbid")

    summary: Annotated[str, Field(min_length=3, max_length=240), AfterValidator(_one_line)]
    traits: list[Tag] = Field(max_length=8)  # what every image shares (subject LoRAs leave these out)


SYSTEM = ("You tag images for a text-to-image LoRA training set. Reply with one JSON object and "
          "nothing else, matching this JSON schema:\n{schema}")
TAG_TASK = ("Tag each image below from its descriptions (they may be noisy; trust what several agree "
            "on). For each image give: id (exactly as given), subject (1-3 core subjects), style, "
            "movement (an art movement, or \"none\"), medium, and keywords (5-8). Lower case.\n\n{images}")
SUMMARY_TASK = ("These are the captions and tags of the {n} images of one training set (topics: "
                "{topics}). Write a one-line summary (under 25 words) of the concept a LoRA trained "
                "on them learns, and list the intrinsic traits every image shares (0-6 short "
                "phrases).\n\n{images}")


@dataclass
class TagInput:
    id: str
    topic: str | None
    texts: list[tuple[str, str]]  # (source, text): the caption candidates

    def describe(self) -> str:
        lines = "\n".join(f"  - {source}: {text}" for source, text in self.texts) or "  - (no text)"
        return f"id {self.id} (topic: {self.topic or 'unknown'}):\n{lines}"


@dataclass
class TagStats(Counters):
    calls: int = 0  # structured questions asked (a batch, or the summary)
    valid_first_try: int = 0
    retried: int = 0  # questions asked again with the validation error
    recovered: int = 0  # ... that then validated
    invalid: int = 0  # still invalid after the retries: fell back
    endpoint_errors: int = 0  # unreachable / refused: fell back
    fallback_images: int = 0  # images tagged by the fallback


class InvalidOutput(Exception):
    """The model kept answering outside the schema."""


def extract_json(text: str) -> str:
    """The JSON object in a reply: code fences and prose around it removed."""
    start, end = text.find("{"), text.rfind("}")
    return text[start : end + 1] if 0 <= start < end else text


def first_error(e: ValidationError | ValueError) -> str:
    if isinstance(e, ValidationError):
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        return f"{where}: {err['msg']} ({e.error_count()} problem(s))"
    return str(e)


def json_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema without the ``title`` keys (a third of its tokens, no meaning)."""
    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if not (k == "title" and isinstance(v, str))}
        return [strip(v) for v in node] if isinstance(node, list) else node

    return strip(model.model_json_schema())


def ask_json(chat: Chat, messages: list[dict[str, Any]], model: type[BaseModel], retries: int,
             stats: TagStats, check: Callable[[Any], str | None] | None = None) -> Any:
    """``model`` parsed from the reply; on a schema error ask again (quoting the reply and the
    error) up to ``retries`` times, then raise ``InvalidOutput``. ``check`` adds a rule the
    schema cannot say (e.g. every id answered)."""
    schema = json_schema(model)
    conversation = list(messages)
    stats.add(calls=1)
    for attempt in range(retries + 1):
        reply = chat(conversation, schema)
        try:
            parsed = model.model_validate_json(extract_json(reply))
            problem = check(parsed) if check else None
            if problem:
                raise ValueError(problem)
        except (ValidationError, ValueError) as e:
            error = first_error(e)
            if attempt == retries:
                stats.add(invalid=1)
                raise InvalidOutput(error) from None
            stats.add(retried=1)
            conversation = [*messages, {"role": "assistant", "content": reply[:4000]},
                            {"role": "user", "content": f"That reply does not match the JSON schema: {error}. "
                                                        "Reply again with only the corrected JSON object."}]
            continue
        stats.add(**({"valid_first_try": 1} if attempt == 0 else {"recovered": 1}))
        return parsed
    raise AssertionError("unreachable")


def _messages(task: str, schema_model: type[BaseModel]) -> list[dict[str, Any]]:
    schema = json.dumps(json_schema(schema_model), separators=(",", ":"))
    return [{"role": "system", "content": SYSTEM.format(schema=schema)}, {"role": "user", "content": task}]


def _answered_all(ids: list[str]) -> Callable[[TagBatch], str | None]:
    def check(batch: TagBatch) -> str | None:
        missing = [i for i in ids if i not in {t.id for t in batch.images}]
        return f"images.id: no tags for id(s) {missing}" if missing else None

    return check


def _tags(t: ImageTags | dict[str, Any], source: str) -> dict[str, Any]:
    get = t.get if isinstance(t, dict) else lambda k: getattr(t, k)
    return {"subject": list(get("subject")), "style": get("style"), "movement": get("movement"),
            "medium": get("medium"), "keywords": list(get("keywords")), "tag_source": source}


EMPTY_TAGS = {"subject": [], "style": None, "movement": None, "medium": None, "keywords": [], "tag_source": "none"}


def tag_items(entries: list[TagInput], chat: Chat | None, source: str, cfg: LabelConfig,
              fallback: KeywordTagger | None, workers: int) -> tuple[list[dict[str, Any]], TagStats]:
    """Tags for every entry (in order): from ``chat`` in batches of ``label.tag_batch_size``,
    the fallback for batches it could not answer, or none."""
    stats = TagStats()

    def fall_back(batch: list[TagInput]) -> list[dict[str, Any]]:
        if fallback is None:
            return [dict(EMPTY_TAGS) for _ in batch]
        stats.add(fallback_images=len(batch))
        return [_tags(t, "keywords") for t in fallback.tag_many([([t for _, t in e.texts], e.topic) for e in batch])]

    def run(batch: list[TagInput]) -> list[dict[str, Any]]:
        if chat is None:
            return fall_back(batch)
        ids = [e.id for e in batch]
        task = TAG_TASK.format(images="\n".join(e.describe() for e in batch))
        try:
            answer = ask_json(chat, _messages(task, TagBatch), TagBatch, cfg.llm.schema_retries, stats,
                              _answered_all(ids))
        except (InvalidOutput, EndpointError) as e:
            if isinstance(e, EndpointError):
                stats.add(endpoint_errors=1)
            return fall_back(batch)
        by_id = {t.id: t for t in answer.images}
        return [_tags(by_id[i], source) for i in ids]

    size = cfg.tag_batch_size
    batches = [entries[i : i + size] for i in range(0, len(entries), size)]
    results = map_bounded(run, batches, workers, "label: tags")
    return [tags for batch in results for tags in batch], stats


def summarise(entries: list[TagInput], captions: list[str], tags: list[dict[str, Any]], topics: list[str],
              chat: Chat | None, cfg: LabelConfig, stats: TagStats, sample: int = 24) -> tuple[str, list[str], str]:
    """(one-line concept summary, shared traits, where it came from) for the whole dataset."""
    if chat is not None and entries:
        lines = [f"- {cap} [tags: {', '.join(t['subject'] + t['keywords'])}]"
                 for cap, t in list(zip(captions, tags, strict=True))[:sample]]
        task = SUMMARY_TASK.format(n=len(entries), topics=", ".join(topics) or "unknown", images="\n".join(lines))
        try:
            answer = ask_json(chat, _messages(task, ConceptSummary), ConceptSummary, cfg.llm.schema_retries, stats)
            return answer.summary, list(answer.traits), "llm"
        except (InvalidOutput, EndpointError) as e:
            if isinstance(e, EndpointError):
                stats.add(endpoint_errors=1)
    return keyword_summary(tags, topics), [], "keywords"


def keyword_summary(tags: list[dict[str, Any]], topics: list[str]) -> str:
    """A summary from the tags alone: the commonest subjects, medium and style."""
    def top(name: str, n: int) -> list[str]:
        counts = Counter(v for t in tags for v in ([t[name]] if isinstance(t[name], str) else t[name] or []) if v)
        return [v for v, _ in counts.most_common(n)]

    subjects = top("subject", 3) or [t.lower() for t in topics]
    medium, style = top("medium", 1), top("style", 1)
    tail = ", ".join([*style, *medium])
    return f"{', '.join(subjects) or 'images'}" + (f" ({tail})" if tail else "")


class EndpointChat:
    """The OpenAI-compatible client as a ``Chat``, with its request counters."""

    def __init__(self, client: ChatClient) -> None:
        self.client = client

    def __call__(self, messages: list[dict[str, Any]], schema: dict[str, Any] | None) -> str:
        return self.client.chat(messages, schema)

    def counts(self) -> dict[str, int]:
        return {f"http_{k}": v for k, v in self.client.stats.as_dict().items()}


class LocalChat:
    """A local transformers chat model (``models.tagger``) as a ``Chat``, cached by input hash."""

    def __init__(self, tagger: Any, ref: str, max_new_tokens: int, cache: ResponseCache | None) -> None:
        self.tagger, self.ref, self.max_new_tokens, self.cache = tagger, ref, max_new_tokens, cache
        self._lock = threading.Lock()  # one generate at a time on one model
        self.cached = self.generated = 0

    def __call__(self, messages: list[dict[str, Any]], schema: dict[str, Any] | None) -> str:
        key = ResponseCache.key({"local": self.ref, "messages": messages, "max_new_tokens": self.max_new_tokens})
        if self.cache is not None and (hit := self.cache.get(key)) is not None:
            self.cached += 1
            return hit
        with self._lock:
            reply = self.tagger.chat(messages, max_new_tokens=self.max_new_tokens)
            self.generated += 1
        if self.cache is not None:
            self.cache.put(key, reply, self.ref)
        return reply

    def counts(self) -> dict[str, int]:
        return {"cached": self.cached, "generated": self.generated}
