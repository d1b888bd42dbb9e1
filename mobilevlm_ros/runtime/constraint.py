"""Constrained decoding with llguidance: one grammar matcher per answer, a mask over the logits
before the sampler, forced stretches handed to the decoder in one call, and the confidence of a
closed set of answers.

llguidance (the library onnxruntime-genai, llama.cpp and vLLM use; a Rust wheel with no
dependencies, no torch) needs the vocabulary as bytes and a tokenizer that encodes exactly the bytes
it is given. Sentencepiece adds LLaMA's dummy prefix space ("{" -> "▁{"), which would make
llguidance force a lone "▁": so `GrammarTokenizer` encodes with a second processor, loaded from
the same model with the dummy prefix (and whitespace folding) off.
"""

from __future__ import annotations

import collections
import threading
from typing import Callable, Dict, List, Sequence, Tuple

import llguidance
import llguidance.numpy as llnp
import numpy as np
import sentencepiece as spm

from .answer_types import AnswerType, AnswerTypeError

# Tighter than llguidance's defaults (a server's): a robot's grammar is small, and a mask step must
# stay a small share of a decode step. Past them a grammar is refused when it is asked for.
LIMITS = dict(max_grammar_size=100_000, max_items_in_row=2_000, step_lexer_fuel=200_000,
              step_max_items=50_000, max_lexer_states=50_000)
COMPILED_CACHE = 32  # grammars kept compiled (the watches' and recent questions'); least recent goes


class GrammarTokenizer:
    """Our sentencepiece vocabulary as llguidance sees it."""

    def __init__(self, sp: spm.SentencePieceProcessor, model_path: str):
        from sentencepiece import sentencepiece_model_pb2  # needs protobuf (onnxruntime's dependency)

        proto = sentencepiece_model_pb2.ModelProto()
        with open(model_path, "rb") as f:
            proto.ParseFromString(f.read())
        proto.normalizer_spec.add_dummy_prefix = False
        proto.normalizer_spec.remove_extra_whitespaces = False
        self.exact = spm.SentencePieceProcessor(model_proto=proto.SerializeToString())
        self.tokens: List[bytes] = []
        for i in range(sp.get_piece_size()):
            piece = sp.id_to_piece(i)
            # llguidance marks special tokens with a leading 0xFF byte (never in UTF-8 text); the
            # byte piece <0xFF> would read as that marker, and no valid answer holds it: special too.
            if sp.is_control(i) or sp.is_unknown(i) or piece == "<0xFF>":
                self.tokens.append(b"\xff" + piece.encode("utf-8"))
            elif sp.is_byte(i):  # <0x0A>
                self.tokens.append(bytes([int(piece[3:-1], 16)]))
            else:
                self.tokens.append(piece.replace("\u2581", " ").encode("utf-8"))
        self.eos_token_id, self.bos_token_id = sp.eos_id(), sp.bos_id()
        self.special_token_ids = [i for i, t in enumerate(self.tokens) if t.startswith(b"\xff")]
        self.ll = llguidance.LLTokenizer(llguidance.TokenizerWrapper(self))
        self.vocab_size = sp.get_piece_size()

    def __call__(self, data: bytes) -> List[int]:
        return self.exact.encode(data.decode("utf-8", errors="replace"))

    def encode(self, text: str) -> List[int]:
        """`text` as ids, exactly (no prefix space added)."""
        return self.exact.encode(text)


class Grammars:
    """Compiled grammars of answer types, for one tokenizer: `matcher(answer_type)` is a fresh matcher
    (a copy of a cached one). Thread-safe; at most COMPILED_CACHE kept."""

    def __init__(self, tokenizer: GrammarTokenizer):
        self.tokenizer = tokenizer
        self._cache: "collections.OrderedDict[str, llguidance.LLMatcher]" = collections.OrderedDict()
        self._lock = threading.Lock()
        self.limits = llguidance.LLParserLimits(**LIMITS)

    def matcher(self, answer_type: AnswerType, max_new_tokens: int = 0) -> "llguidance.LLMatcher":
        """A matcher at the start of `answer_type`'s grammar (for answers of `max_new_tokens`);
        AnswerTypeError (with llguidance's reason) when the grammar is invalid or past LIMITS."""
        grammar = llguidance.LLMatcher.grammar_from_lark(answer_type.lark(max_new_tokens))
        with self._lock:
            cached = self._cache.get(grammar)
            if cached is not None:
                self._cache.move_to_end(grammar)
                return cached.deep_copy()
        error = llguidance.LLMatcher.validate_grammar(grammar, self.tokenizer.ll, limits=self.limits)
        if error:
            raise AnswerTypeError(f"answer type {answer_type.kind}: {_first_line(error)}")
        matcher = llguidance.LLMatcher(self.tokenizer.ll, grammar, log_level=0, limits=self.limits)
        if matcher.is_error():
            raise AnswerTypeError(f"answer type {answer_type.kind}: {_first_line(matcher.get_error())}")
        with self._lock:
            self._cache[grammar] = matcher
            while len(self._cache) > COMPILED_CACHE:
                self._cache.popitem(last=False)
        return matcher.deep_copy()


def _first_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[0][:300] if lines else "invalid grammar"


class Constraint:
    """One answer's grammar state: masks the logits of its next token, consumes what was chosen, and
    says which tokens the grammar forces next."""

    def __init__(self, matcher: "llguidance.LLMatcher", vocab_size: int):
        self.matcher = matcher
        self.vocab_size = vocab_size
        self._bitmask = llnp.allocate_token_bitmask(1, vocab_size)

    def mask(self, logits: np.ndarray) -> np.ndarray:
        """`logits` with every token the grammar does not allow now set to -inf (in place)."""
        llnp.fill_next_token_bitmask(self.matcher, self._bitmask, 0)
        allowed = np.unpackbits(self._bitmask.view(np.uint8), bitorder="little")[: logits.shape[-1]]
        logits[allowed[: logits.shape[-1]] == 0] = -np.inf
        return logits

    def consume(self, token: int) -> None:
        if not self.matcher.consume_token(token):
            raise RuntimeError(f"the grammar refused token {token}: {self.matcher.get_error()}")

    def forced(self, limit: int) -> List[int]:
        """Up to `limit` tokens the grammar allows as the only continuation now (jump-forward), consumed."""
        tokens = self.matcher.compute_ff_tokens()[:max(limit, 0)]
        if tokens and not self.matcher.consume_tokens(tokens):
            raise RuntimeError(f"the grammar refused its own forced tokens: {self.matcher.get_error()}")
        return tokens

    def is_complete(self) -> bool:
        """Nothing more may follow (the answer is whole)."""
        return self.matcher.is_stopped()

    def is_accepting(self) -> bool:
        """The text so far is a whole answer (more could still follow)."""
        return self.matcher.is_accepting()


def _trie(alternatives: Sequence[str], encode: Callable[[str], List[int]], eos: int):
    """(alternative -> its token path, trie of those paths). Each is tokenised as the model writes it
    after "ASSISTANT:" (' ' + text, the canonical tokenisation) and ends with EOS."""
    paths = {a: encode(" " + a) + [eos] for a in alternatives}
    trie: dict = {}
    for path in paths.values():
        node = trie
        for t in path:
            node = node.setdefault(t, {})
    return paths, trie


class ClosedSet:
    """The grammar of a closed set of answers (bool, choice, a small integer range) as a trie of their
    canonical token paths, with Constraint's interface. Not llguidance: its byte-level grammar lets
    greedy decoding spell "red" as "▁", "r", "ed" (seen on the demo engine: that path had 0.011 of
    the probability, "blue" by its own tokens 0.92), while a closed set's confidence is only exact
    over one path per answer, the one `closed_set_probabilities` scores."""

    def __init__(self, alternatives: Sequence[str], encode: Callable[[str], List[int]], eos: int):
        self.eos = eos
        _, self.node = _trie(alternatives, encode, eos)

    def mask(self, logits: np.ndarray) -> np.ndarray:
        keep = np.array(list(self.node), dtype=np.int64)
        kept = logits[keep].copy()
        logits[:] = -np.inf
        logits[keep] = kept
        return logits

    def consume(self, token: int) -> None:
        if token not in self.node:
            raise RuntimeError(f"token {token} is none of the answers' next tokens")
        self.node = self.node[token]

    def forced(self, limit: int) -> List[int]:
        tokens = []
        while len(tokens) < limit and len(self.node) == 1 and self.eos not in self.node:
            token = next(iter(self.node))
            tokens.append(token)
            self.node = self.node[token]
        return tokens

    def is_complete(self) -> bool:
        return list(self.node) in ([], [self.eos])

    def is_accepting(self) -> bool:
        return self.eos in self.node or not self.node


def chosen_probability(logits: np.ndarray, token: int) -> float:
    """The softmax probability of `token` among the finite entries of `logits` (the allowed ones)."""
    finite = logits[np.isfinite(logits)].astype(np.float64)
    top = finite.max()
    return float(np.exp(float(logits[token]) - top) / np.exp(finite - top).sum())


def closed_set_probabilities(alternatives: Sequence[str], encode: Callable[[str], List[int]], eos: int,
                             known: Dict[Tuple[int, ...], np.ndarray],
                             logits_after: Callable[[List[int]], np.ndarray]) -> Dict[str, float]:
    """Each alternative's probability among `alternatives`, renormalised at the tokens where they
    diverge. Alternatives are tokenised as the model writes them after "ASSISTANT:" (' ' + text),
    and end with EOS, so "1" and "12" diverge after "1" between EOS and "2". A node with one
    child costs nothing; a node with several needs the logits after its prefix: from `known`
    (prefix -> logits, those the answer's own decoding saw), else `logits_after(prefix)` runs the
    decoder. The probabilities sum to 1."""
    paths, trie = _trie(alternatives, encode, eos)
    probs: Dict[Tuple[int, ...], float] = {}

    def walk(node: dict, prefix: List[int], p: float) -> None:
        if not node:
            probs[tuple(prefix)] = p
            return
        children = list(node)
        if len(children) == 1:
            shares = [1.0]
        else:
            logits = known[tuple(prefix)] if tuple(prefix) in known else logits_after(prefix)
            z = logits[children].astype(np.float64)
            e = np.exp(z - z.max())
            shares = list(e / e.sum())
        for t, share in zip(children, shares):
            walk(node[t], prefix + [t], p * share)

    walk(trie, [], 1.0)
    return {a: float(probs[tuple(path)]) for a, path in paths.items()}
