"""LLM providers: one small contract (``LLMProvider``) and the backends behind it.

Not a Django app. Only ``get_provider`` reads Django settings, so the providers
themselves can be used (and tested) without a configured project. Every backend is
imported here, at import time: a process's first answer must not wait for imports.
"""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from .base import ChatMessage, LLMError, LLMProvider, StreamItem
from .demo import DemoProvider
from .openai_provider import OpenAIProvider

__all__ = [
    "PROVIDER_NAMES",
    "ChatMessage",
    "LLMError",
    "LLMProvider",
    "StreamItem",
    "get_provider",
]

PROVIDER_NAMES = ("demo", "openai")


def get_provider() -> LLMProvider:
    """Build the provider that ``settings.LLM_PROVIDER`` names ("demo" or "openai").

    Cheap: providers hold configuration only; the HTTP client they use is shared per
    event loop (see ``OpenAIProvider``), so building one per answer costs nothing.
    """
    name = str(getattr(settings, "LLM_PROVIDER", "demo")).strip().lower()
    if name == "demo":
        return DemoProvider(tokens_per_second=float(settings.LLM_DEMO_TOKENS_PER_SECOND))
    if name == "openai":
        return OpenAIProvider(
            base_url=settings.LLM_BASE_URL,
            api_key=settings.LLM_API_KEY,
            model=settings.LLM_MODEL,
            system_prompt=settings.LLM_SYSTEM_PROMPT,
            connect_timeout=float(settings.LLM_CONNECT_TIMEOUT),
            read_timeout=float(settings.LLM_READ_TIMEOUT),
            max_retries=int(settings.LLM_MAX_RETRIES),
        )
    raise ImproperlyConfigured(
        f"Unknown LLM_PROVIDER {settings.LLM_PROVIDER!r}: expected one of "
        f"{', '.join(repr(n) for n in PROVIDER_NAMES)}."
    )
