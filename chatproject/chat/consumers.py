"""The conversation's websocket: the chat product's ``prompt`` frame and permissions on
top of the streaming component's mixin (``resume``, ``cancel``, chunk and status frames).
"""

from __future__ import annotations

import logging
from typing import Any

from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings
from django.http import Http404

import streaming
from chatproject.chat.models import Message
from chatproject.chat.selectors import conversation_for, message_payload
from chatproject.chat.services import ChatError, conversation_history, conversation_prompt
from chatproject.llm import get_provider

logger = logging.getLogger(__name__)

MESSAGE_EVENT = "chat.message"
MESSAGE_FRAME_FIELDS = ("id", "role", "text", "stream_id", "status")


def message_frame(message: Message, *, driving: bool) -> dict[str, Any]:
    payload = {k: v for k, v in message_payload(message).items() if k in MESSAGE_FRAME_FIELDS}
    return {"type": "message", "message": payload, "driving": driving}


class ChatConsumer(streaming.StreamConsumerMixin, AsyncJsonWebsocketConsumer):
    direct_events = streaming.StreamConsumerMixin.direct_events | {MESSAGE_EVENT}

    async def connect(self) -> None:
        self.closed = False
        self.driving: set[str] = set()
        self.max_frame_bytes = settings.CHAT_FRAME_MAX_BYTES
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close()
            return
        try:
            self.conversation = await streaming.run_in_db(
                conversation_for,
                user=user,
                conversation_id=self.scope["url_route"]["kwargs"]["conversation_id"],
            )
        except Http404:
            await self.close()
            return
        self.group = self.conversation.group_name
        await self.channel_layer.group_add(self.group, self.channel_name)
        self.stream_groups.add(self.group)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        self.closed = True
        await self.stream_leave_groups()
        if getattr(settings, "STREAMING_CANCEL_ON_DRIVER_DISCONNECT", False):
            for stream_id in self.driving:
                await streaming.cancel_stream(stream_id)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        try:
            content = self.decode_frame(text_data, bytes_data)
            if await self.stream_receive_frame(content):
                return
            if content["type"] != "prompt":
                raise streaming.FrameError(
                    "unknown_type", f"Unknown frame type {content['type']!r}."
                )
            await self.prompt(content.get("text"))
        except (streaming.FrameError, ChatError) as exc:
            await self.send_error(exc.code, exc.detail)
        except streaming.FloodError:
            await self.close(code=streaming.FLOOD_CLOSE_CODE)
        except streaming.TRANSIENT_ERRORS as exc:
            logger.warning("frame not handled, a service is away: %r", exc)
            await self.send_error("unavailable", "The server is briefly unavailable; try again.")

    async def prompt(self, text: Any) -> None:
        """Store the prompt, announce both messages, and drive the answer from here."""
        user_message, answer = await streaming.run_in_db(
            conversation_prompt, conversation=self.conversation, text=text
        )
        history = await streaming.run_in_db(
            conversation_history, conversation=self.conversation, before=answer
        )
        stream_id = str(answer.stream_id)
        # The driver's own frames go to it directly, so its message precedes its tokens.
        self.stream_follow(stream_id)
        self.driving.add(stream_id)
        await self.send_json(message_frame(user_message, driving=False))
        await self.send_json(message_frame(answer, driving=True))
        await self.channel_layer.group_send(
            self.group,
            {
                "type": MESSAGE_EVENT,
                "frames": [message_frame(m, driving=False) for m in (user_message, answer)],
                "sender": self.channel_name,
            },
        )
        streaming.drive_in_background(
            stream_id, get_provider().stream(history), on_token=self._token_sender(stream_id)
        )

    def _token_sender(self, stream_id: str) -> Any:
        async def send_token(text: str) -> None:
            if not self.closed:
                await self.send_json({"type": "token", "stream_id": stream_id, "text": text})

        return send_token

    async def chat_message(self, event: dict[str, Any]) -> None:
        if event["sender"] == self.channel_name:
            return
        for frame in event["frames"]:
            stream_id = frame["message"]["stream_id"]
            if stream_id:
                self.stream_follow(stream_id)
            await self.send_json(frame)
