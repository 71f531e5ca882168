"""How the chat product hooks into the streaming component."""

from __future__ import annotations

from typing import Any

import streaming
from chatproject.chat.services import message_finalize
from chatproject.llm import LLMError

GENERIC_FAILURE = "Something went wrong while generating the answer."


class ChatStreamAdapter(streaming.StreamAdapter):
    def stream_finished(self, stream: Any) -> None:
        message_finalize(stream=stream)

    def error_message(self, exc: BaseException) -> str:
        return str(exc) if isinstance(exc, LLMError) else GENERIC_FAILURE
