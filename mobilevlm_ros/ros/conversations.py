"""Follow-up questions: a conversation keeps its image and its earlier turns, so that "What is on the
table?" then "What colour is it?" asks about the same frame, in MobileVLM's multi-turn template
(runtime/prompt.py). Bounded: turns per conversation, idle time, conversations held (the least
recently used goes first); the prompt's tokens are bounded by the engine's context, which the
runtime checks. An unknown or expired id is an error, never a silent fresh start."""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from ..runtime.errors import VLMError
from .worker import Frame

MAX_CONVERSATIONS = 16
NEW = "new"  # the request's `conversation` value that starts one


class ConversationError(VLMError):
    """An unknown, expired or full conversation: the reason says which and what to do."""


@dataclass
class Conversation:
    id: str
    camera: str  # "" for a request's own image
    frame: Frame  # the image every turn is about
    turns: List[Tuple[str, str]] = field(default_factory=list)  # (question, answer text), oldest first
    last_used: float = 0.0


class Conversations:
    """Thread-safe store of conversations. `max_turns` and `idle_s` may change while it runs."""

    def __init__(self, max_turns: int = 8, idle_s: float = 300.0, capacity: int = MAX_CONVERSATIONS,
                 clock=time.monotonic):
        self.max_turns, self.idle_s, self.capacity, self._clock = max_turns, idle_s, capacity, clock
        self._items: Dict[str, Conversation] = {}
        self._lock = threading.Lock()

    def _expire(self) -> None:
        now = self._clock()
        for cid in [c.id for c in self._items.values() if now - c.last_used > self.idle_s]:
            del self._items[cid]

    def start(self, camera: str, frame: Frame) -> Conversation:
        """A new conversation about `frame`; the least recently used one goes when `capacity` are held."""
        with self._lock:
            self._expire()
            while len(self._items) >= self.capacity:
                oldest = min(self._items.values(), key=lambda c: c.last_used)
                del self._items[oldest.id]
            conversation = Conversation(secrets.token_hex(8), camera, frame, last_used=self._clock())
            self._items[conversation.id] = conversation
            return conversation

    def get(self, cid: str) -> Conversation:
        """The conversation `cid`, for its next turn; ConversationError when it is unknown, expired or
        has had its `max_turns`."""
        with self._lock:
            self._expire()
            conversation = self._items.get(cid)
            if conversation is None:
                raise ConversationError(
                    f"conversation {cid!r} is unknown or expired (idle over {self.idle_s:g} s, or one of "
                    f"more than {self.capacity} held); start a new one with conversation: {NEW}")
            if len(conversation.turns) >= self.max_turns:
                raise ConversationError(f"conversation {cid!r} has had its {self.max_turns} turns "
                                        f"(conversation_max_turns); start a new one with conversation: {NEW}")
            conversation.last_used = self._clock()
            return conversation

    def add_turn(self, cid: str, question: str, answer: str) -> None:
        with self._lock:
            conversation = self._items.get(cid)
            if conversation is not None:
                conversation.turns.append((question, answer))
                conversation.last_used = self._clock()

    def history(self, cid: str) -> Optional[List[Tuple[str, str]]]:
        with self._lock:
            conversation = self._items.get(cid)
            return list(conversation.turns) if conversation is not None else None

    def __len__(self) -> int:
        with self._lock:
            self._expire()
            return len(self._items)
