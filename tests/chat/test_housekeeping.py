"""The component's housekeeping as the chat sees it: a reaped answer gets its text and
status through the chat's hook, and a purged stream leaves the conversation whole."""

from __future__ import annotations

from datetime import timedelta

import pytest

from chatproject.chat.models import Conversation, Message
from streaming.core.lifecycle import Status
from streaming.housekeeping import streams_purge, streams_reap

pytestmark = pytest.mark.django_db


def test_the_message_of_a_reaped_stream_gets_its_text_and_status(answer_in):
    answer = answer_in(
        Status.STREAMING, chunks=("Half ", "an answer"), lease_in=timedelta(seconds=-30)
    )
    streams_reap()
    answer = Message.objects.get(pk=answer.pk)
    assert (answer.text, answer.status, answer.last_seq) == ("Half an answer", "timeout", 1)


def test_a_purged_stream_leaves_its_message_and_conversation_intact(answer_in):
    answer = answer_in(Status.DONE, finished_ago=timedelta(days=60))
    streams_purge()
    answer = Message.objects.get(pk=answer.pk)
    assert (answer.text, answer.status, answer.stream_id) == ("Hello. World.", "done", None)
    assert Conversation.objects.filter(pk=answer.conversation_id).exists()
    assert Message.objects.filter(conversation=answer.conversation_id).count() == 2
