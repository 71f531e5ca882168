from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("", include("chatproject.chat.urls")),
    path("api/streams/", include("streaming.urls")),
    path("accounts/", include("django.contrib.auth.urls")),
    path("admin/", admin.site.urls),
]
