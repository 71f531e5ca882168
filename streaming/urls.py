"""Include under any prefix, e.g. ``path("api/streams/", include("streaming.urls"))``."""

from django.urls import path

from streaming.views import stream_detail

app_name = "streaming"
urlpatterns = [path("<str:stream_id>/", stream_detail, name="stream-detail")]
