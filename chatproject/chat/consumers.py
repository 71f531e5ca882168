"""The conversation's websocket: the chat product's ``prompt`` frame and permissions on
top of the streaming component's mixin (``resume``, ``cancel``, chunk, status and token
frames).
"""

from __future__ import annotations

import logging
from typing import Any

from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings
from django.http import Http404

import streaming
from chatproject.chat.selectors import conversation_for, message_payload
from chatproject.chat.services import Prompt, aconversation_prompt
from chatproject.llm import get_provider
from streaming.asyncdb import run_in_db
from streaming.outages import TRANSIENT_ERRORS

logger = logging.getLogger(__name__)

MESSAGE_EVENT = "chat.message"
MESSAGE_FRAME_FIELDS = ("id", "role", "text", "reasoning", "stream_id", "status", "client_id")


def message_frame(message: Any, *, driving: bool) -> dict[str, Any]:
    payload = {k: v for k, v in message_payload(message).items() if k in MESSAGE_FRAME_FIELDS}
    return {"type": "message", "message": payload, "driving": driving}


def message_event(prompt: Prompt, sender: str) -> dict[str, Any]:
    """The group event that tells every other socket of the conversation about a prompt."""
    frames = [message_frame(m, driving=False) for m in (prompt.question, prompt.answer)]
    return {"type": MESSAGE_EVENT, "frames": frames, "sender": sender}


class ChatConsumer(streaming.StreamConsumerMixin, AsyncJsonWebsocketConsumer):
    direct_events = streaming.StreamConsumerMixin.direct_events | {MESSAGE_EVENT}

    async def connect(self) -> None:
        self.max_frame_bytes = settings.CHAT_FRAME_MAX_BYTES
        user = self.scope.get("user")
        conversation_id = self.scope["url_route"]["kwargs"]["conversation_id"]
        if user is None or not user.is_authenticated:
            self.log_refusal("websocket", "not signed in")
            await self.close()
            return
        try:
            self.conversation = await run_in_db(
                conversation_for, user=user, conversation_id=conversation_id
            )
        except Http404:
            self.log_refusal(
                "websocket", f"conversation {conversation_id} is not theirs or does not exist"
            )
            await self.close()
            return
        self.group = self.conversation.group_name
        await self.stream_join(self.group)
        await self.accept()

    async def receive_frame(self, content: dict[str, Any]) -> None:
        if content["type"] != "prompt":
            await super().receive_frame(content)
            return
        await self.prompt(content.get("text"), content.get("client_id"))

    async def prompt(self, text: Any, client_id: Any) -> None:
        """Store the prompt, tell this socket first, drive the answer from here, then tell
        the conversation's other sockets. Once the rows are stored the answer runs,
        whatever the channel layer does; a repeated client id only gets its messages."""
        prompt = await aconversation_prompt(
            conversation=self.conversation, text=text, client_id=client_id
        )
        if not prompt.created:
            await self.send_json(message_frame(prompt.question, driving=False))
            await self.send_json(message_frame(prompt.answer, driving=False))
            if prompt.answer.stream_id:
                self.stream_follow(str(prompt.answer.stream_id))
            return
        stream_id = str(prompt.answer.stream_id)
        try:
            # The driver's own frames go to it directly, so its message precedes its tokens.
            await self.send_json(message_frame(prompt.question, driving=False))
            await self.send_json(message_frame(prompt.answer, driving=True))
        finally:
            self.stream_drive(stream_id, get_provider().stream(prompt.history))
        try:
            await self.channel_layer.group_send(
                self.group, message_event(prompt, self.channel_name)
            )
        except TRANSIENT_ERRORS as exc:
            # Other sockets learn of the messages when they next catch up.
            logger.warning("could not announce the prompt's messages: %r", exc)

    async def chat_message(self, event: dict[str, Any]) -> None:
        if event["sender"] == self.channel_name:
            return
        for frame in event["frames"]:
            stream_id = frame["message"]["stream_id"]
            if stream_id:
                self.stream_follow(stream_id)
            await self.send_json(frame)
