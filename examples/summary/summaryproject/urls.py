"""Pages, login, and the component's HTTP API; static files from the apps in DEBUG."""

from django.contrib.staticfiles.urls import staticfiles_urlpatterns
from django.urls import include, path

from summaries import views

urlpatterns = [
    path("", views.home, name="home"),
    path("summaries/<int:summary_id>/", views.summary_page, name="summary"),
    path("accounts/", include("django.contrib.auth.urls")),
    path("api/streams/", include("streaming.urls")),
    # DEBUG only (empty otherwise): the finders' files, stream-client.js included, under
    # plain daphne as under runserver. A deployment serves collectstatic's output.
    *staticfiles_urlpatterns(),
]
