"""Errors a user can act on. Caught once, at the boundary (command line, ROS node)."""


class VLMError(Exception):
    """Base of every error the runtime raises on purpose."""


class EngineError(VLMError):
    """An engine directory is missing, incomplete, corrupt or does not match its manifest."""


class ImageError(VLMError):
    """An image could not be decoded or has an unusable shape."""


class PromptError(VLMError):
    """A question is empty or too long for the engine's context."""


class CheckpointError(VLMError):
    """A checkpoint folder is missing files or holds tensors we cannot place."""

