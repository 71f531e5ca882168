from django.urls import path

from chatproject.chat.consumers import ChatConsumer
from chatproject.chat.ui_chat import UIChatConsumer

websocket_urlpatterns = [
    path("ws/conversations/<int:conversation_id>/", ChatConsumer.as_asgi()),
    path("ws/ui-chat/", UIChatConsumer.as_asgi()),
]
