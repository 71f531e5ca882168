"""Include under any prefix, e.g. ``path("api/streams/", include("streaming.urls"))``."""

from django.urls import path

from streaming.views import stream_cancel, stream_detail, stream_events

app_name = "streaming"
urlpatterns = [
    path("<str:stream_id>/", stream_detail, name="stream-detail"),
    path("<str:stream_id>/events/", stream_events, name="stream-events"),
    path("<str:stream_id>/cancel/", stream_cancel, name="stream-cancel"),
]
