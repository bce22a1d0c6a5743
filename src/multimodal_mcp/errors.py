"""The error hierarchy.

Errors derived from :class:`MultimodalError` carry messages written for the model that called the
tool: what went wrong, the limit or the allowed values, and what to do instead. The MCP surface
passes them on verbatim. Any other exception is a bug or an environment failure: it is logged with
an id and reported to the caller without internals.
"""


class MultimodalError(Exception):
    """Base class for errors whose message is safe and useful to show to the caller."""


class InvalidArgument(MultimodalError):
    """An argument is out of range, malformed, or inconsistent with another argument."""


class ImageInputError(InvalidArgument):
    """An image argument could not be resolved or decoded."""


class UnknownModel(MultimodalError):
    """The named model is not configured."""


class UnsupportedOperation(MultimodalError):
    """The chosen model cannot do what was asked (wrong task, missing component, ...)."""


class NotFound(MultimodalError):
    """A referenced image or resource does not exist."""


class Busy(MultimodalError):
    """The server is at capacity; the caller should retry shortly."""


class BackendError(MultimodalError):
    """A model failed to load or run in a way the caller can act on (message is curated)."""


class SpendingRefused(MultimodalError):
    """A paid call was declined or cancelled by the user, or refused by the configuration."""


class ConfirmationPending(MultimodalError):
    """The call stopped to ask the user for a confirmation; the MCP layer sends the question and the
    client retries the call with the answer. Never shown to the caller."""


class ProviderError(BackendError):
    """A hosted provider (OpenAI, Gemini) refused, failed or answered something unreadable; the message
    says which, in the provider's own words where they are safe to pass on."""
