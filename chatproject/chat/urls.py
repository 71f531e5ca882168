from django.urls import path

from chatproject.chat import views

app_name = "chat"
urlpatterns = [
    path("", views.home, name="home"),
    path("conversations/", views.new_conversation, name="new-conversation"),
    path("conversations/<int:conversation_id>/", views.conversation_page, name="conversation"),
    path(
        "api/conversations/<int:conversation_id>/messages/",
        views.messages_api,
        name="messages-api",
    ),
]
