from django.urls import path

from chatproject.chat import ui_chat, views

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
    # The AI SDK's paths: its DefaultChatTransport appends /<chat id>/stream, no slash.
    path("api/ui-chat", ui_chat.ui_chat, name="ui-chat"),
    path("api/ui-chat/<str:conversation_id>/stream", ui_chat.ui_chat_stream, name="ui-chat-stream"),
]
