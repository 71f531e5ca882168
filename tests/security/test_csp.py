"""Every page sends a Content-Security-Policy that runs the site's own scripts only: no
inline script, nothing from another origin."""

from __future__ import annotations

import pytest
from django.http import HttpResponse
from django.urls import reverse

from chatproject.chat.models import Conversation
from chatproject.chat.services import conversation_prompt

pytestmark = pytest.mark.django_db


def policy(response: HttpResponse) -> dict[str, list[str]]:
    header = response.headers["Content-Security-Policy"]
    directives = (part.split() for part in header.split(";") if part.strip())
    return {name: sources for name, *sources in directives}


@pytest.fixture
def pages(admin_user) -> list[str]:
    """One URL of each page: the chat's, and the admin's for streams and chat rows."""
    conversation = Conversation.objects.create(owner=admin_user, title="Plans")
    answer = conversation_prompt(conversation=conversation, text="Hello").answer
    return [
        reverse("login"),
        reverse("chat:home"),
        reverse("chat:conversation", args=[conversation.pk]),
        reverse("admin:index"),
        reverse("admin:streaming_stream_changelist"),
        reverse("admin:streaming_stream_change", args=[answer.stream_id]),
        reverse("admin:chat_conversation_change", args=[conversation.pk]),
    ]


def test_every_page_runs_the_sites_own_scripts_only(admin_client, pages):
    for url in pages:
        response = admin_client.get(url)
        assert response.status_code == 200, url
        scripts = policy(response).get("script-src") or policy(response)["default-src"]
        assert scripts == ["'self'"], (url, scripts)


def test_no_page_allows_a_source_of_another_origin(admin_client, pages):
    for url in pages:
        sources = {s for values in policy(admin_client.get(url)).values() for s in values}
        assert all(s.startswith("'") and s.endswith("'") for s in sources), (url, sources)
