"""Prometheus metrics: what a driven stream counts, and who may read them."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from prometheus_client import REGISTRY

from streaming import Delta, drive
from tests.component.conftest import deltas

pytestmark = pytest.mark.django_db(transaction=True)


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_a_driven_stream_counts_its_tokens_writes_and_first_token(amake_stream):
    before = {
        "text": sample("streaming_tokens_total", part="text"),
        "reasoning": sample("streaming_tokens_total", part="reasoning"),
        "writes": sample("streaming_writes_total"),
        "first": sample("streaming_time_to_first_token_seconds_count"),
        "messages": sample("streaming_layer_messages_total"),
    }
    stream = await amake_stream()
    await drive(stream.id, deltas([Delta("Hm. ", "reasoning"), "A. ", "B."]))
    assert sample("streaming_tokens_total", part="text") - before["text"] == 2
    assert sample("streaming_tokens_total", part="reasoning") - before["reasoning"] == 1
    assert sample("streaming_writes_total") > before["writes"]
    assert sample("streaming_time_to_first_token_seconds_count") - before["first"] == 1
    assert sample("streaming_layer_messages_total") > before["messages"]
    assert sample("streaming_active_streams") == 0


@pytest.mark.parametrize(
    ("staff", "authorization", "status"),
    [
        (None, "", 403),
        (False, "", 403),
        (True, "", 200),
        (None, "Bearer s3cret", 200),
        (None, "Bearer wrong", 403),
    ],
)
def test_metrics_are_for_staff_or_the_token_never_anonymous(
    db, settings, staff, authorization, status
):
    settings.STREAMING_METRICS_TOKEN = "s3cret"
    client = Client()
    if staff is not None:
        user = get_user_model().objects.create_user("u", password="pw", is_staff=staff)
        client.force_login(user)
    response = client.get("/metrics", headers={"Authorization": authorization})
    assert response.status_code == status
    if status == 200:
        assert b"streaming_tokens_total" in response.content


def test_without_a_token_setting_no_bearer_is_accepted(db, settings):
    settings.STREAMING_METRICS_TOKEN = ""
    assert Client().get("/metrics", headers={"Authorization": "Bearer "}).status_code == 403
