"""The chat admin: conversations with their messages, read-only (messages are written
by the chat services and the stream adapter, never by hand)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import Count, IntegerField, OuterRef, QuerySet, Subquery
from django.http import HttpRequest
from django.utils import timezone
from django.utils.dateformat import format as date_format
from django.utils.text import Truncator

from chatproject.chat.models import Conversation, Message


def compact_time(value: Any) -> str:
    """A change list's time on one line (the default format wraps at 1280 px)."""
    return date_format(timezone.localtime(value), "Y-m-d H:i") if value else "-"


class ReadOnlyMixin:
    """Rows shown, never added or edited here."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class MessageInline(ReadOnlyMixin, admin.TabularInline):
    model = Message
    fields = ("id", "role", "status", "text", "stream", "created_at")
    readonly_fields = fields
    ordering = ("id",)
    extra = 0
    can_delete = False
    show_change_link = True

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Conversation)
class ConversationAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = ("id", "title", "owner", "message_count", "created", "updated")
    list_select_related = ("owner",)
    search_fields = ("title", "owner__username")
    readonly_fields = ("message_count",)
    inlines = (MessageInline,)

    class Media:
        css = {"all": ("chat/admin.css",)}

    def get_queryset(self, request: HttpRequest) -> QuerySet[Conversation]:
        # A correlated subquery: counted for the rows on the page only.
        counts = (
            Message.objects.filter(conversation=OuterRef("pk"))
            .order_by()
            .values("conversation")
            .annotate(n=Count("pk"))
            .values("n")
        )
        return (
            super()
            .get_queryset(request)
            .annotate(messages_count=Subquery(counts, output_field=IntegerField()))
        )

    @admin.display(description="messages", ordering="messages_count")
    def message_count(self, conversation: Conversation) -> int:
        return conversation.messages_count or 0

    @admin.display(description="created", ordering="created_at")
    def created(self, conversation: Conversation) -> str:
        return compact_time(conversation.created_at)

    @admin.display(description="updated", ordering="updated_at")
    def updated(self, conversation: Conversation) -> str:
        return compact_time(conversation.updated_at)


@admin.register(Message)
class MessageAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = ("id", "conversation_title", "role", "status", "created")
    list_filter = ("role", "status")
    list_select_related = ("conversation",)
    search_fields = ("text", "conversation__title")
    fields = ("conversation", "role", "status", "text", "stream", "last_seq", "error")

    class Media:
        css = {"all": ("chat/admin.css",)}

    @admin.display(description="conversation", ordering="conversation")
    def conversation_title(self, message: Message) -> str:
        # Short enough to leave role, status and time on screen beside the filters.
        return Truncator(str(message.conversation)).chars(32)

    @admin.display(description="created", ordering="created_at")
    def created(self, message: Message) -> str:
        return compact_time(message.created_at)
