"""The MobileVLM chat prompt and its tokenisation around the image.

An engine's manifest names its template (`model.template`); TEMPLATES holds each one the runtime
knows. MobileVLM V1 and V2 chat checkpoints both use the reference's conversation mode `v1`, whose
earlier turns (follow-up questions) end with "</s>": the EOS token in the ids, as the reference's
tokenizer splits it out of the text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

from .errors import PromptError
from .tokenizer import Tokenizer

SYSTEM_V1 = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
IMAGE_TOKEN = "<image>"
# Placeholder id the reference puts where the image embeddings go; never a real vocab id.
IMAGE_TOKEN_INDEX = -200
DEFAULT_CAPTION_QUESTION = "Describe the image briefly."
MAX_QUESTION_CHARS = 4000



@dataclass(frozen=True)
class Template:
    """A vicuna-style chat template (the reference's SeparatorStyle.TWO):
    `{system}{sep}{user} <image>\n{q1}{sep}{assistant} {a1}{sep2}{user} {q2}{sep}{assistant}`."""

    system: str
    user: str
    assistant: str
    sep: str = " "
    sep2: str = "</s>"

    def format(self, question: str, history: Sequence[Tuple[str, str]] = ()) -> str:
        """The prompt for `question` after the earlier turns `history` ((question, answer), oldest
        first). The image goes before the first question, on its own line; the prompt ends with the
        assistant's role (no trailing space), as the reference's `conv.get_prompt()`."""
        questions = [q for q, _ in history] + [question]
        questions[0] = f"{IMAGE_TOKEN}\n{questions[0]}"
        text = f"{self.system}{self.sep}"
        for i, q in enumerate(questions):
            text += f"{self.user} {q}{self.sep}{self.assistant}"
            if i < len(history):
                text += f" {history[i][1]}{self.sep2}"
        return text


TEMPLATES: Dict[str, Template] = {"v1": Template(SYSTEM_V1, "USER:", "ASSISTANT:")}
DEFAULT_TEMPLATE = "v1"
# Text that marks turns in a template: inside a question it would fake a turn of the conversation
# (the model then often answers with nothing), so it is refused.
TEMPLATE_MARKERS = (*dict.fromkeys(m for t in TEMPLATES.values() for m in (t.user, t.assistant)),
                    "</s>", "<s>")


def check_question(question: str) -> str:
    """The question, stripped; PromptError when it is empty, too long, or holds template text."""
    if not isinstance(question, str) or not question.strip():
        raise PromptError("the question is empty")
    question = question.strip()
    if len(question) > MAX_QUESTION_CHARS:
        raise PromptError(f"the question is {len(question)} characters; "
                          f"at most {MAX_QUESTION_CHARS} are accepted")
    if IMAGE_TOKEN in question:
        raise PromptError(f"the question must not contain {IMAGE_TOKEN}: the image goes in by itself")
    markers = [m for m in TEMPLATE_MARKERS if m in question]
    if markers:
        raise PromptError("the question must not contain the prompt template's markers "
                          f"({', '.join(markers)})")
    return question


def build_prompt(question: str, template: str = DEFAULT_TEMPLATE,
                 history: Sequence[Tuple[str, str]] = ()) -> str:
    """The full prompt text, `<image>` included, exactly as the reference `conv_templates[template]`
    builds it; `history`: the earlier turns of a conversation, (question, answer) each."""
    if template not in TEMPLATES:
        raise PromptError(f"unknown prompt template {template!r}; known: {', '.join(TEMPLATES)}")
    turns = []
    for q, a in history:
        if any(m in a for m in TEMPLATE_MARKERS):  # an answer that would fake a turn of its own
            raise PromptError("an earlier answer of the conversation holds the template's markers")
        turns.append((check_question(q), a.strip()))
    return TEMPLATES[template].format(check_question(question), turns)


def tokenize_prompt(tokenizer: Tokenizer, prompt: str) -> List[int]:
    """Token ids with IMAGE_TOKEN_INDEX where `<image>` stood, as the reference `tokenizer_image_token`.

    The reference tokenises each chunk between `<image>` markers separately, so every chunk gets
    its own dummy-prefix space (e.g. "\\nWhat" -> "▁", "<0x0A>", ...): encoding the whole prompt
    at once would give different ids. BOS is kept only once, at the very start. "</s>" (the end of an
    earlier turn) is the EOS id, and the text after it a chunk of its own, as the reference's
    (legacy) LLaMA tokenizer splits special tokens out before sentencepiece.
    """
    chunks = prompt.split(IMAGE_TOKEN)
    ids = [tokenizer.bos_id]
    for i, chunk in enumerate(chunks):
        if i > 0:
            ids.append(IMAGE_TOKEN_INDEX)
        for k, part in enumerate(chunk.split("</s>")):
            if k > 0:
                ids.append(tokenizer.eos_id)
            if part:
                ids.extend(tokenizer.encode(part, add_bos=False))
    return ids


def check_prompt_length(n_prompt_tokens: int, n_image_tokens: int, max_new_tokens: int,
                        context_length: int) -> None:
    """Raise PromptError when prompt + image + answer would not fit in the model's context.

    `n_prompt_tokens` counts text tokens only (IMAGE_TOKEN_INDEX markers excluded).
    """
    if min(n_prompt_tokens, n_image_tokens, max_new_tokens) < 0 or context_length <= 0:
        raise PromptError("token counts must be non-negative and the context length positive")
    needed = n_prompt_tokens + n_image_tokens + max_new_tokens
    if needed > context_length:
        raise PromptError(
            f"prompt too long: {n_prompt_tokens} text tokens + {n_image_tokens} image tokens + "
            f"{max_new_tokens} new tokens = {needed} > context length {context_length}; "
            f"shorten the question by at least {needed - context_length} tokens or lower max_new_tokens"
        )
