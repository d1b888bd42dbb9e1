"""Typed answers (runtime/answer_types.py, runtime/constraint.py): the grammar's mask makes random
weights write valid values, confidences are probabilities, rows of a batch are constrained each by
its own matcher, and the demo engine answers typed questions at least as well as in free text."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from mobilevlm_ros.demo import scenes as S
from mobilevlm_ros.runtime.answer_types import MAX_CLOSED_RANGE, AnswerType, AnswerTypeError
from mobilevlm_ros.runtime.generation import GenerationParams
from mobilevlm_ros.runtime.grounding import find_boxes
from mobilevlm_ros.runtime.vlm import VLM

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "engines", "demo")
SCHEMA = {"type": "object", "additionalProperties": False, "required": ["open", "count", "what"],
          "properties": {"open": {"type": "boolean"},
                         "count": {"type": "integer", "minimum": 0, "maximum": 9},
                         "what": {"enum": ["cup", "door", "person"]}}}
TYPES = {
    "bool": AnswerType("bool"),
    "choice": AnswerType("choice", choices=("red car", "red truck", "blue")),
    "integer (closed range)": AnswerType("integer", minimum=0, maximum=20),
    "integer (wide range)": AnswerType("integer", minimum=-5, maximum=300),
    "integer (unbounded)": AnswerType("integer"),
    "number": AnswerType("number"),
    "number (bounded)": AnswerType("number", minimum=0.0, maximum=1.0),
    "boxes": AnswerType("boxes"),
    "json": AnswerType("json", schema=SCHEMA),
}


def valid(answer_type: AnswerType, answer, image) -> bool:
    """Whether `answer` holds a value of its type (checked from its text, not from the code's parse)."""
    text, value = answer.text.strip(), answer.value
    kind = answer_type.kind
    if kind == "bool":
        return text in ("Yes", "No") and value is (text == "Yes")
    if kind == "choice":
        return text in answer_type.choices and value == text
    if kind == "integer":
        lo, hi = answer_type.integer_range()
        return text.lstrip("-").isdigit() and lo <= int(text) <= hi and value == int(text)
    if kind == "number":
        number = float(text)
        lo = -np.inf if answer_type.minimum is None else answer_type.minimum
        hi = np.inf if answer_type.maximum is None else answer_type.maximum
        return lo <= number <= hi and value == number
    if kind == "boxes":
        boxes = find_boxes(text, image.shape[1], image.shape[0])
        return (text.startswith("[") and text.count("[") == text.count("]") >= 1
                and [b["normalized"] for b in value] == [b.normalized for b in boxes])
    if kind == "json":
        data = json.loads(text)
        return (set(data) == {"open", "count", "what"} and isinstance(data["open"], bool)
                and data["count"] in range(10) and data["what"] in ("cup", "door", "person")
                and value == data)
    raise AssertionError(kind)


@pytest.fixture(scope="module", params=["fp32", "int4"])
def tiny(request, engines):
    return VLM(engines("tiny", request.param), backend="cpu", threads=1, max_batch=4)


@pytest.mark.parametrize("name", list(TYPES))
def test_random_weights_give_a_valid_value_of_every_type_under_the_mask(tiny, name):
    """50 random images and questions each, greedy and sampled: random logits write garbage unless
    the mask holds them to the grammar."""
    answer_type, rng = TYPES[name], np.random.default_rng(7)
    for i in range(50):
        image = rng.integers(0, 256, (48 + i, 64, 3), dtype=np.uint8)
        params = GenerationParams(max_new_tokens=200, temperature=0.0 if i % 2 else 1.5, seed=i)
        answer = tiny.describe(image, f"What is thing {rng.integers(1000)}?", params, answer_type=answer_type)
        assert not answer.error, (name, answer.text, answer.error)
        assert valid(answer_type, answer, image), (name, answer.text, answer.value)
        assert 0.0 <= answer.confidence <= 1.0
        assert answer.value_json and json.loads(answer.value_json) == answer.value


def test_free_text_on_random_weights_is_not_valid_of_any_type(tiny):
    """The control of the test above: without the mask the same model writes none of these forms."""
    rng = np.random.default_rng(7)
    image = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    answer = tiny.describe(image, "What is thing 1?", GenerationParams(max_new_tokens=40))
    assert answer.text.strip() not in ("Yes", "No") and not answer.text.strip().isdigit()
    assert answer.confidence == -1.0 and answer.value is None and answer.answer_type == "text"


@pytest.mark.parametrize("name", ["bool", "choice", "integer (closed range)"])
def test_closed_sets_have_a_probability_for_each_value_summing_to_one(tiny, name):
    answer_type = TYPES[name]
    rng = np.random.default_rng(3)
    for i in range(10):
        image = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
        answer = tiny.describe(image, f"Question {i}?", GenerationParams(max_new_tokens=16),
                               answer_type=answer_type)
        probabilities = answer.alternatives
        assert sorted(probabilities) == sorted(answer_type.alternatives())
        assert all(0.0 <= p <= 1.0 for p in probabilities.values())
        assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-6)
        assert answer.confidence == probabilities[answer.text.strip()]
        # Greedy follows the most probable first token of the answers: the chosen value is the
        # most probable one wherever the answers differ in their first token.
        if len({tiny.grammars.tokenizer.encode(" " + a)[0] for a in answer_type.alternatives()}) \
                == len(answer_type.alternatives()):
            assert answer.confidence == max(probabilities.values())


def test_a_closed_set_probability_matches_the_decoder_run_by_hand(tiny):
    """"red car" and "red truck" share their first token: their split is the softmax, over the two
    next tokens, of the decoder's logits after it; computed here by hand from the engine."""
    image = np.random.default_rng(5).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    question = "Which one?"
    answer = tiny.describe(image, question, GenerationParams(max_new_tokens=16), answer_type=TYPES["choice"])
    encode, eos = tiny.grammars.tokenizer.encode, tiny.tokenizer.eos_id
    paths = {c: encode(" " + c) + [eos] for c in TYPES["choice"].choices}
    # The prompt the typed question had: with the engine's short-answer hint.
    generator = tiny.generator(image, TYPES["choice"].question(question, tiny.answer_hint),
                               GenerationParams(max_new_tokens=16))
    first = generator.logits.astype(np.float64)

    def share(logits, tokens, token):
        z = logits[tokens] - logits[tokens].max()
        return float(np.exp(z[tokens.index(token)]) / np.exp(z).sum())

    heads = sorted({p[0] for p in paths.values()})
    expected = {}
    for choice, path in paths.items():
        p = share(first, heads, path[0])
        siblings = sorted({q[1] for q in paths.values() if q[0] == path[0]})
        if len(siblings) > 1:
            tiny.decoder.rewind(generator.start_length)
            after = tiny.decoder.run(tiny.table[[path[0]]].astype(np.float32)).astype(np.float64)
            p *= share(after, siblings, path[1])
        expected[choice] = p
    assert answer.alternatives == pytest.approx(expected, rel=1e-4)


def test_batched_constrained_rows_equal_the_same_answers_alone(tiny):
    rng = np.random.default_rng(11)
    asks = [(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8), f"Question {i}?", TYPES[name])
            for i, name in enumerate(["json", "boxes", "integer (wide range)", "choice"])]
    params = GenerationParams(max_new_tokens=120)
    alone = [tiny.describe(image, q, params, answer_type=t) for image, q, t in asks]
    batch = tiny.batch()
    sequences = [batch.add(image, q, params, answer_type=t) for image, q, t in asks]
    while batch.sequences:
        batch.step()
    for seq, want in zip(sequences, alone):
        assert seq.answer.text == want.text and seq.answer.value == want.value
        assert seq.answer.confidence == pytest.approx(want.confidence, rel=1e-3, abs=1e-9)


def test_forced_stretches_run_in_one_call(tiny):
    """Boxes and JSON have long forced stretches ('", "' inside a box, '":' after a key): each is fed
    with the chosen token before it, so decoder steps are fewer than tokens."""
    image = np.random.default_rng(2).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    calls = []
    run = tiny.decoder.run
    tiny.decoder.run = lambda embeds, row=0: calls.append(len(embeds)) or run(embeds, row)
    try:
        answer = tiny.describe(image, "Where?", GenerationParams(max_new_tokens=120),
                               answer_type=TYPES["json"])
    finally:
        del tiny.decoder.run
    assert answer.timings.forced_tokens > 0 and not answer.error
    steps = calls[calls.index(max(calls)) + 1:]  # after the prefill's calls
    assert len(steps) < len(answer.token_ids) and max(steps) > 1


def test_an_answer_cut_by_max_new_tokens_is_an_error_not_a_value(tiny):
    image = np.random.default_rng(1).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    answer = tiny.describe(image, "What?", GenerationParams(max_new_tokens=4), answer_type=TYPES["json"])
    assert answer.finish_reason == "length" and answer.value is None and answer.value_json == ""
    assert "cut at max_new_tokens (4) before it was complete" in answer.error


@pytest.mark.parametrize("answer_type, message", [
    (AnswerType("colour"), "unknown answer type 'colour'"),
    (AnswerType("choice"), "needs at least one choice"),
    (AnswerType("choice", choices=("a", "b", "a")), "'a' is given more than once"),
    (AnswerType("choice", choices=("a", " b")), "without leading or trailing spaces"),
    (AnswerType("integer", minimum=5, maximum=2), "minimum 5 is above maximum 2"),
    (AnswerType("integer", minimum=2.2, maximum=2.8), "no integer lies in"),
    (AnswerType("number", minimum=float("nan")), "minimum must be finite"),
    (AnswerType("bool", minimum=1), "minimum and maximum are for answer types integer and number"),
    (AnswerType("json"), "needs a JSON schema"),
    (AnswerType("json", schema="{not json"), "the JSON schema is not JSON"),
    (AnswerType("json", schema={"type": "objectx"}), "objectx"),
    (AnswerType("json", schema={"enum": [f"v{i}" for i in range(150_000)]}), "too big"),  # past LIMITS
    (AnswerType("json", schema=json.dumps({"enum": list(range(5000))})), "28900 characters; at most 20000"),
])
def test_bad_answer_types_are_refused_before_anything_runs(tiny, answer_type, message):
    prefills = tiny.decoder.lengths[0]
    with pytest.raises(AnswerTypeError, match=message.replace("(", r"\(")):
        tiny.generator(np.zeros((48, 64, 3), np.uint8), "What?", GenerationParams(max_new_tokens=16),
                       answer_type=answer_type)
    assert tiny.decoder.lengths[0] == prefills  # nothing ran


def test_demo_engine_typed_counting_and_yes_no_against_the_truth():
    """Held-out scenes: typed counting matches the truth at least as often as free text; typed yes/no
    (an object present, one absent: chance is 0.5) scores well above chance."""
    vlm = VLM(DEMO, backend="cpu", threads=2)
    params = GenerationParams(max_new_tokens=16)
    counting = AnswerType("integer", minimum=0, maximum=S.MAX_OBJECTS)
    assert len(counting.alternatives()) <= MAX_CLOSED_RANGE
    free = typed = yes_no = asked = 0
    for i in range(60):
        scene = S.sample_scene(10_000_000 + 7000 + i)
        truth = len(scene.objects)
        free += vlm.describe(scene.image, S.count_question(), params).text == str(truth)
        typed += vlm.describe(scene.image, S.count_question(), params, answer_type=counting).value == truth
        absent = [(c, s) for c in S.COLOURS for s in S.SHAPES if (c, s) not in S.scene_multiset(scene)]
        for (colour, shape), want in (((scene.objects[0].colour, scene.objects[0].shape), True),
                                      (absent[i % len(absent)], False)):
            answer = vlm.describe(scene.image, S.yesno_question(colour, shape), params,
                                  answer_type=AnswerType("bool"))
            yes_no += answer.value is want
            asked += 1
    assert typed >= free, (typed, free)
    assert yes_no / asked >= 0.8, yes_no / asked
