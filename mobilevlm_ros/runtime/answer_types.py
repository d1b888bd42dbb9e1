"""Typed answers: what a planner can branch on instead of prose.

An `AnswerType` says what the answer must be: a bool, one of given strings, an integer or a number
(optionally bounded), boxes, any JSON schema, or free text (the default). Each type is:
- checked when it is asked for (`check`: an empty choice list, contradicting bounds, a bad schema
  are errors before anything runs);
- a short-answer hint appended to the question (`question`: the model learned short answers from
  such words; which words, the engine's manifest says);
- a grammar (`lark`, llguidance's Lark dialect), which constraint.py turns into a mask over the
  decoder's logits, so the model can only write a valid answer;
- a parser of the finished text (`parse`) into the value.

Every grammar starts with one space: after "ASSISTANT:" the model's first token carries it ("▁Yes"),
and a grammar without it would force the unspaced pieces the model never wrote.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Optional, Tuple

from .errors import VLMError

KINDS = ("text", "bool", "choice", "integer", "number", "boxes", "json")
CLOSED_KINDS = ("bool", "choice", "integer")  # integer only with a small range: `alternatives()`
MAX_CHOICES = 256
MAX_CHOICE_CHARS = 200
# An integer range this small is a closed set: its confidence is exact over every value.
MAX_CLOSED_RANGE = 64
# Without bounds, integers get at most 15 digits and numbers 15 + 6: random weights otherwise write
# digits until max_new_tokens (seen: 200 of them).
DEFAULT_INTEGER_BOUND = 10**15 - 1
MAX_BOXES = 16
# The most tokens one box can take ("[0.000, 0.000, 0.000, 0.000], ": one per character at worst): a
# boxes grammar allows as many boxes as max_new_tokens holds, so that what it allows always ends.
BOX_TOKENS = 30
NUMBER_STEP = 1e-6  # bounded numbers: at most 6 decimals (else random weights write digits forever)
MAX_SCHEMA_CHARS = 20_000

# The hint a typed question gets, unless the engine's manifest names its own (`model.answer_hint`):
# LLaVA-1.5's short-answer prompt, which MobileVLM's training mix and evaluation use. The demo
# engine's manifest says "" (none): measured on it, any hint cost it 24-98 points (README).
DEFAULT_ANSWER_HINT = "Answer the question using a single word or phrase."


class AnswerTypeError(VLMError):
    """An answer type that cannot be asked for: the reason names the problem."""


def _finite(name: str, value) -> Optional[float]:
    if value is None:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise AnswerTypeError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(value):
        raise AnswerTypeError(f"{name} must be finite, got {value}")
    return value


@dataclass(frozen=True)
class AnswerType:
    """What an answer must be. `kind` is one of KINDS; `choices` for choice; `minimum`/`maximum`
    (inclusive, either may be None) for integer and number; `schema` (a JSON schema, as a dict or
    JSON text) for json."""

    kind: str = "text"
    choices: Tuple[str, ...] = ()
    minimum: Optional[float] = None
    maximum: Optional[float] = None
    schema: Any = None

    @property
    def typed(self) -> bool:
        return self.kind != "text"

    def check(self) -> "AnswerType":
        """This type, its fields normalised (schema parsed, bounds as numbers); AnswerTypeError names
        what is wrong. The grammar's own limits are checked when it is compiled (constraint.py)."""
        kind = (self.kind or "text").strip().lower()
        if kind not in KINDS:
            raise AnswerTypeError(f"unknown answer type {self.kind!r}; known: {', '.join(KINDS)}")
        choices = tuple(self.choices or ())
        if kind == "choice":
            if not choices:
                raise AnswerTypeError("answer type choice needs at least one choice")
            if len(choices) > MAX_CHOICES:
                raise AnswerTypeError(f"answer type choice takes at most {MAX_CHOICES} choices, "
                                      f"got {len(choices)}")
            for c in choices:
                if not isinstance(c, str) or not c.strip() or c != c.strip() or "\n" in c:
                    raise AnswerTypeError(f"choice {c!r}: each choice must be non-empty text on one line, "
                                          "without leading or trailing spaces")
                if len(c) > MAX_CHOICE_CHARS:
                    raise AnswerTypeError(f"choice {c[:40]!r}...: at most {MAX_CHOICE_CHARS} characters")
            repeated = sorted({c for c in choices if choices.count(c) > 1})
            if repeated:
                raise AnswerTypeError(f"choice {repeated[0]!r} is given more than once")
        elif choices:
            raise AnswerTypeError(f"choices are for answer type choice, not {kind}")
        minimum, maximum = _finite("minimum", self.minimum), _finite("maximum", self.maximum)
        if kind in ("integer", "number"):
            if minimum is not None and maximum is not None and minimum > maximum:
                raise AnswerTypeError(f"minimum {minimum:g} is above maximum {maximum:g}")
            if kind == "integer":
                lo = math.ceil(minimum) if minimum is not None else -DEFAULT_INTEGER_BOUND
                hi = math.floor(maximum) if maximum is not None else DEFAULT_INTEGER_BOUND
                if lo > hi:
                    raise AnswerTypeError(f"no integer lies in [{minimum:g}, {maximum:g}]")
        elif minimum is not None or maximum is not None:
            raise AnswerTypeError(f"minimum and maximum are for answer types integer and number, not {kind}")
        schema = self.schema
        if kind == "json":
            if isinstance(schema, str):
                if len(schema) > MAX_SCHEMA_CHARS:
                    raise AnswerTypeError(f"the JSON schema is {len(schema)} characters; at most "
                                          f"{MAX_SCHEMA_CHARS} are accepted")
                try:
                    schema = json.loads(schema) if schema.strip() else None
                except json.JSONDecodeError as e:
                    raise AnswerTypeError(f"the JSON schema is not JSON: {e}") from None
            if schema is None:
                raise AnswerTypeError("answer type json needs a JSON schema (e.g. {\"type\": \"object\"})")
            if not isinstance(schema, (dict, bool)):
                raise AnswerTypeError("the JSON schema must be an object (or true/false)")
        elif schema not in (None, "", {}):
            raise AnswerTypeError(f"a JSON schema is for answer type json, not {kind}")
        else:
            schema = None
        return AnswerType(kind, choices, minimum, maximum, schema)

    def integer_range(self) -> Tuple[int, int]:
        lo = math.ceil(self.minimum) if self.minimum is not None else -DEFAULT_INTEGER_BOUND
        hi = math.floor(self.maximum) if self.maximum is not None else DEFAULT_INTEGER_BOUND
        return lo, hi

    def alternatives(self) -> Optional[Tuple[str, ...]]:
        """Every answer text a closed type allows (bool, choice, an integer range of at most
        MAX_CLOSED_RANGE values): their probabilities are computed exactly. None for other types."""
        if self.kind == "bool":
            return ("Yes", "No")
        if self.kind == "choice":
            return self.choices
        if self.kind == "integer":
            lo, hi = self.integer_range()
            if hi - lo + 1 <= MAX_CLOSED_RANGE:
                return tuple(str(i) for i in range(lo, hi + 1))
        return None

    def question(self, question: str, hint: str = DEFAULT_ANSWER_HINT) -> str:
        """The question as the model sees it: with the short-answer `hint` for typed kinds but boxes
        (a grounding question is its own format)."""
        if not self.typed or self.kind == "boxes" or not hint:
            return question
        return f"{question} {hint}"

    def lark(self, max_new_tokens: int = 0) -> str:
        """The grammar of the answer text, in llguidance's Lark dialect ('' for free text), for an
        answer of at most `max_new_tokens` (boxes: as many as fit; 0: MAX_BOXES). Closed sets
        (`alternatives()`) are decoded over their canonical tokens instead (constraint.ClosedSet)."""
        if self.kind == "text":
            return ""
        if self.kind in ("bool", "choice"):
            literals = (json.dumps(a, ensure_ascii=False) for a in self.alternatives())
            return 'start: " " (' + " | ".join(literals) + ")"
        if self.kind == "integer":
            lo, hi = self.integer_range()
            return _json_rule({"type": "integer", "minimum": lo, "maximum": hi})
        if self.kind == "number":
            if self.minimum is None and self.maximum is None:
                return 'start: " " NUMBER\nNUMBER: /-?(0|[1-9][0-9]{0,14})(\\.[0-9]{1,6})?/'
            bounds = (("minimum", self.minimum), ("maximum", self.maximum))
            return _json_rule({"type": "number", "multipleOf": NUMBER_STEP,
                               **{k: v for k, v in bounds if v is not None}})
        if self.kind == "boxes":
            # The model's own grounding format: [x1, y1, x2, y2] in 0..1, two or three decimals.
            boxes = min(MAX_BOXES, max(1, max_new_tokens // BOX_TOKENS)) if max_new_tokens else MAX_BOXES
            return ('start: " " box (", " box){0,%d}\n' % (boxes - 1)
                    + 'box: "[" C ", " C ", " C ", " C "]"\n'
                    + 'C: /0\\.[0-9]{2,3}|1\\.0{2,3}/')
        schema = self.schema
        if isinstance(schema, dict):  # compact JSON: flexible whitespace lets a model pad with \n\t
            schema = {**schema, "x-guidance": {**schema.get("x-guidance", {}), "whitespace_flexible": False}}
        return _json_rule(schema)

    def parse(self, text: str) -> Any:
        """The value of a complete answer text (the grammar guarantees the form). Boxes are parsed by
        the caller (grounding.find_boxes, which knows the image); here they stay text."""
        text = text.strip()
        if self.kind == "bool":
            return text == "Yes"
        if self.kind == "integer":
            return int(text)
        if self.kind == "number":
            return float(text)
        if self.kind == "json":
            return json.loads(text)
        return text


def _json_rule(schema) -> str:
    """A grammar of one space and then JSON of `schema` (llguidance's %json, compact)."""
    return 'start: " " value\nvalue: %json ' + json.dumps(schema)


def value_json(answer_type: AnswerType, value: Any) -> str:
    """The value as JSON text, as the ROS result carries it ('' for free text)."""
    if not answer_type.typed:
        return ""
    return json.dumps(value, ensure_ascii=False)
