"""The streams admin: a read-only window on streams and their chunks, plus the operator
actions (cancel, settle stale ones, purge) that go through the same services as
everything else. No form here can write a stream: statuses change only in ``services``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from asgiref.sync import async_to_sync
from django.contrib import admin, messages
from django.db.models import Count, IntegerField, OuterRef, QuerySet, Subquery, Sum
from django.db.models.functions import Coalesce, Length
from django.http import HttpRequest
from django.utils import timezone
from django.utils.dateformat import format as date_format
from django.utils.html import format_html

from streaming.core.deltas import TEXT
from streaming.driver import cancel_stream
from streaming.errors import StreamError
from streaming.housekeeping import ACTIVE_STATUSES, FINAL_STATUSES, streams_purge_final
from streaming.models import Chunk, Stream
from streaming.services import stream_settle_if_expired


def _per_stream(aggregate: Any) -> Subquery:
    """A correlated subquery over the stream's chunks: evaluated for the rows on the page
    only, where a JOIN + GROUP BY would aggregate the whole chunk table."""
    rows = Chunk.objects.filter(stream=OuterRef("pk")).order_by().values("stream")
    return Subquery(rows.annotate(value=aggregate).values("value"), output_field=IntegerField())


class AgeFilter(admin.SimpleListFilter):
    title = "age"
    parameter_name = "age"
    AGES = {"hour": timedelta(hours=1), "day": timedelta(days=1), "week": timedelta(weeks=1)}

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [
            ("hour", "Last hour"),
            ("day", "Last day"),
            ("week", "Last week"),
            ("older", "Older than a week"),
        ]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Stream]) -> QuerySet[Stream]:
        now, age = timezone.now(), self.value()
        if age in self.AGES:
            return queryset.filter(created_at__gte=now - self.AGES[age])
        if age == "older":
            return queryset.filter(created_at__lt=now - self.AGES["week"])
        return queryset


class ChunkInline(admin.TabularInline):
    model = Chunk
    fields = ("seq", "text", "created_at")
    readonly_fields = fields
    ordering = ("seq",)
    extra = 0
    can_delete = False
    show_change_link = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


def compact_time(value: Any) -> str:
    """A change list's time: to the second, on one line, in the current time zone (the
    default "Dec. 2, 2026, 6:13 a.m." wraps, and hides the seconds a stream lives in)."""
    return date_format(timezone.localtime(value), "Y-m-d H:i:s") if value else "-"


@admin.register(Stream)
class StreamAdmin(admin.ModelAdmin):
    # What fits a 1280 px screen beside the filters: the full id and the last write are
    # on the stream's page.
    list_display = ("short_id", "status", "owner", "created", "characters", "chunk_count")
    list_display_links = ("short_id",)
    list_filter = ("status", AgeFilter)
    list_select_related = ("owner",)
    search_fields = ("id__exact", "owner__username")
    search_help_text = "A stream's full id, or part of its owner's username."
    readonly_fields = ("characters", "chunk_count", "full_text")
    fieldsets = (
        (None, {"fields": ("id", "status", "owner", "group", "error")}),
        (
            "Timing",
            {"fields": ("created_at", "updated_at", "lease_expires_at", "finished_at")},
        ),
        (
            "Text",
            {"fields": ("last_seq", "chunk_count", "characters", "sha256", "full_text")},
        ),
    )
    inlines = (ChunkInline,)
    actions = ("cancel_selected", "settle_stale_selected", "purge_selected")

    class Media:
        css = {"all": ("streaming/admin.css",)}

    def get_queryset(self, request: HttpRequest) -> QuerySet[Stream]:
        return (
            super()
            .get_queryset(request)
            .annotate(
                chunks_kept=_per_stream(Count("pk")),
                characters_so_far=Coalesce(
                    "length", _per_stream(Sum(Length("text"))), output_field=IntegerField()
                ),
            )
        )

    # Read-only everywhere: a stream changes only through services (and the actions).
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Deleting goes through the purge action, which skips active streams and never
        # makes the collector load a stream's chunks.
        return False

    def has_operate_permission(self, request: HttpRequest) -> bool:
        """Who may run the actions: staff allowed to change streams."""
        return request.user.has_perm("streaming.change_stream")

    @admin.display(description="id", ordering="id")
    def short_id(self, stream: Stream) -> str:
        return format_html('<span title="{}">{}…</span>', stream.id, str(stream.id)[:8])

    @admin.display(description="created", ordering="created_at")
    def created(self, stream: Stream) -> str:
        return compact_time(stream.created_at)

    @admin.display(description="characters")
    def characters(self, stream: Stream) -> int:
        return getattr(stream, "characters_so_far", None) or 0  # annotated by get_queryset

    @admin.display(description="chunks")
    def chunk_count(self, stream: Stream) -> int:
        return getattr(stream, "chunks_kept", None) or 0  # annotated by get_queryset

    @admin.display(description="text")
    def full_text(self, stream: Stream) -> str:
        if stream.is_final:
            text = stream.text
        else:
            chunks = Chunk.objects.filter(stream=stream, part=TEXT).order_by("seq")
            text = "".join(chunks.values_list("text", flat=True))
        # A class, not a style attribute: the CSP refuses inline styles.
        return format_html('<pre class="stream-text">{}</pre>', text)

    # --- actions --------------------------------------------------------------------

    @admin.action(description="Cancel selected active streams", permissions=["operate"])
    def cancel_selected(self, request: HttpRequest, queryset: QuerySet[Stream]) -> None:
        """The path a ``cancel`` frame takes: the driver, wherever it runs, stops."""
        active = list(queryset.filter(status__in=ACTIVE_STATUSES).values_list("id", flat=True))
        cancelled = 0
        for stream_id in active:
            try:
                cancelled += bool(async_to_sync(cancel_stream)(stream_id))
            except StreamError:
                continue  # purged meanwhile
        self.message_user(request, f"Asked {cancelled} stream(s) to cancel.", messages.SUCCESS)
        final = queryset.count() - len(active)
        if final:
            self.message_user(request, f"Skipped {final} stream(s) already final.", messages.INFO)
        if len(active) > cancelled:
            self.message_user(
                request,
                f"{len(active) - cancelled} stream(s) ended before they could be cancelled.",
                messages.WARNING,
            )

    @admin.action(description="Mark stale selected streams timeout", permissions=["operate"])
    def settle_stale_selected(self, request: HttpRequest, queryset: QuerySet[Stream]) -> None:
        """Settle the selected streams whose lease expired, as the reaper would."""
        stale = queryset.filter(status__in=ACTIVE_STATUSES, lease_expires_at__lt=timezone.now())
        settled = sum(
            stream_settle_if_expired(stream_id=stream_id) is not None
            for stream_id in stale.values_list("id", flat=True)
        )
        self.message_user(request, f"Marked {settled} stale stream(s) timeout.", messages.SUCCESS)
        skipped = queryset.count() - settled
        if skipped:
            self.message_user(
                request,
                f"Skipped {skipped} stream(s) that are final or whose lease is still valid.",
                messages.WARNING,
            )

    @admin.action(description="Purge selected final streams", permissions=["operate"])
    def purge_selected(self, request: HttpRequest, queryset: QuerySet[Stream]) -> None:
        """Delete the final ones, chunks then rows; active ones are left to finish."""
        active = queryset.filter(status__in=ACTIVE_STATUSES).count()
        result = streams_purge_final(streams=queryset.filter(status__in=FINAL_STATUSES))
        self.message_user(request, str(result), messages.SUCCESS)
        if active:
            self.message_user(
                request, f"Skipped {active} active stream(s): cancel them first.", messages.WARNING
            )
