from django.contrib import admin
from django.urls import include, path

from streaming.metrics import metrics_view

urlpatterns = [
    path("metrics", metrics_view),
    path("", include("chatproject.chat.urls")),
    path("api/streams/", include("streaming.urls")),
    path("accounts/", include("django.contrib.auth.urls")),
    path("admin/", admin.site.urls),
]
