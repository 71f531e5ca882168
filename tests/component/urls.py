from django.contrib import admin
from django.urls import include, path

from streaming.metrics import metrics_view

urlpatterns = [
    path("metrics", metrics_view),
    path("api/streams/", include("streaming.urls")),
    path("admin/", admin.site.urls),
]
