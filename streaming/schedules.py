"""The component's scheduled jobs, declared in code and written by ``migrate``.

Settings own the schedules: every ``migrate`` brings the django-q ``Schedule`` rows in
line with them (creating, updating, removing duplicates), so a deployment never needs
clicking in the admin, and a changed interval takes effect at the next deploy. Edits
made to these rows in django-q's admin are overwritten then.

Overdue runs are not caught up: ``Q_CLUSTER["catch_up"]`` is off (django-q2 has no
per-schedule switch), so a cluster that was down for an hour runs each job once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.apps import apps as global_apps
from django.apps.registry import Apps
from django.db import DEFAULT_DB_ALIAS, router, transaction
from django.utils import timezone

from streaming.conf import app_settings

REAPER = "streaming: reap expired streams"
PURGE = "streaming: purge old streams"
MINUTES = "I"  # django_q.models.Schedule.MINUTES; historical models lack the constant


@dataclass(frozen=True)
class ScheduleSpec:
    name: str
    func: str
    minutes: int


def schedule_specs() -> list[ScheduleSpec]:
    """The schedules the settings ask for, read now (so tests can override them)."""
    return [
        ScheduleSpec(REAPER, "streaming.tasks.reap_streams", max(1, app_settings.REAPER_MINUTES)),
        ScheduleSpec(PURGE, "streaming.tasks.purge_streams", max(1, app_settings.PURGE_MINUTES)),
    ]


def ensure_schedules(*, using: str = DEFAULT_DB_ALIAS, schedule_model: Any = None) -> None:
    """Make the Schedule rows match ``schedule_specs()``; running it again changes nothing.

    Rows are found by name and locked while they are compared, so two deploys running
    ``migrate`` at once update rather than race; a duplicate left by an older race is
    removed here.
    """
    if schedule_model is None:
        from django_q.models import Schedule

        schedule_model = Schedule
    now = timezone.now()
    schedules = schedule_model.objects.using(using)
    with transaction.atomic(using=using):
        for spec in schedule_specs():
            wanted = {
                "func": spec.func,
                "schedule_type": MINUTES,
                "minutes": spec.minutes,
                "repeats": -1,
                "cluster": None,
            }
            rows = list(schedules.select_for_update().filter(name=spec.name).order_by("pk"))
            if not rows:
                schedules.create(name=spec.name, next_run=now, **wanted)
                continue
            row, duplicates = rows[0], rows[1:]
            if duplicates:
                schedules.filter(pk__in=[d.pk for d in duplicates]).delete()
            changed = {key: value for key, value in wanted.items() if getattr(row, key) != value}
            if not changed:
                continue
            # A shorter interval should not wait out the longer one it replaces.
            soonest = now + timedelta(minutes=spec.minutes)
            if row.next_run is None or row.next_run > soonest:
                changed["next_run"] = soonest
            schedules.filter(pk=row.pk).update(**changed)


def create_schedules(sender: Any, *, using: str, apps: Apps | None = None, **kwargs: Any) -> None:
    """``post_migrate`` handler: write the schedules on the database just migrated, when
    django-q is installed and migrated there (the component works without it)."""
    try:
        schedule_model = (apps or global_apps).get_model("django_q", "Schedule")
    except LookupError:
        return
    if router.allow_migrate_model(using, schedule_model):
        ensure_schedules(using=using, schedule_model=schedule_model)
