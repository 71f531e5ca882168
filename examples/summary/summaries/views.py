"""The two pages: paste a text (and see your summaries), and one summary."""

from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_http_methods

import streaming
from summaries.models import Summary


class SummaryForm(forms.Form):
    text = forms.CharField(widget=forms.Textarea, max_length=settings.SUMMARY_MAX_CHARS)


@transaction.atomic
def start_summary(*, owner: Any, text: str) -> Summary:
    """The summary and its stream, in one transaction. The stream is not claimed here:
    the first socket of its page claims and drives it (see consumers.py)."""
    summary = Summary.objects.create(owner=owner, text=text)
    summary.stream = streaming.create_stream(group=summary.group, owner=owner)
    summary.save(update_fields=["stream"])
    return summary


@require_http_methods(["GET", "POST"])
@login_required
def home(request: HttpRequest) -> HttpResponse:
    form = SummaryForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            summary = start_summary(owner=request.user, text=form.cleaned_data["text"])
        except streaming.StreamError as exc:  # too_many_active: say so on the form
            form.add_error(None, exc.detail)
        else:
            return redirect(summary)
    summaries = Summary.objects.filter(owner=request.user)[:20]
    return render(request, "summaries/home.html", {"form": form, "summaries": summaries})


@require_GET
@login_required
def summary_page(request: HttpRequest, summary_id: int) -> HttpResponse:
    """The summary as persisted so far; the page's script continues it live."""
    summary = get_object_or_404(Summary, pk=summary_id, owner=request.user)
    state: dict[str, Any] = {"stream_id": None, "text": summary.summary, "reasoning": ""}
    state.update(last_seq=-1, status=summary.status or streaming.Status.DONE, error=None)
    if summary.stream_id is not None:  # else purged: the copy is all there is
        body = streaming.get_stream_body(summary.stream_id)
        state.update(
            stream_id=str(summary.stream_id),
            text=body.text,
            reasoning=body.reasoning,
            last_seq=body.last_seq,
            status=body.status,
            error=body.error,
            ws_path=f"/ws/summaries/{summary.pk}/",
        )
    return render(request, "summaries/summary.html", {"summary": summary, "state": state})
