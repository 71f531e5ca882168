"""``migrate`` writes the reaper and purge schedules, once, and keeps them in line with
the settings."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone
from django_q.models import Schedule

from streaming.schedules import PURGE, REAPER, create_schedules, ensure_schedules

pytestmark = pytest.mark.django_db


def ours() -> list[Schedule]:
    return list(Schedule.objects.filter(name__in=[REAPER, PURGE]).order_by("name"))


def test_schedules_exist_after_migrate():
    purge, reaper = ours()
    assert (reaper.func, reaper.schedule_type, reaper.minutes, reaper.repeats) == (
        "streaming.tasks.reap_streams",
        Schedule.MINUTES,
        1,
        -1,
    )
    assert (purge.func, purge.schedule_type, purge.minutes, purge.repeats) == (
        "streaming.tasks.purge_streams",
        Schedule.MINUTES,
        60,
        -1,
    )


def test_migrating_twice_makes_no_duplicates():
    call_command("migrate", verbosity=0)
    call_command("migrate", verbosity=0)
    assert [s.name for s in ours()] == [PURGE, REAPER]


def test_the_handler_run_twice_makes_no_duplicates():
    create_schedules(None, using="default")
    create_schedules(None, using="default")
    assert Schedule.objects.filter(name=REAPER).count() == 1


def test_a_changed_interval_updates_the_schedule(settings):
    settings.STREAMING_REAPER_MINUTES = 5
    settings.STREAMING_PURGE_MINUTES = 120
    call_command("migrate", verbosity=0)
    purge, reaper = ours()
    assert (reaper.minutes, purge.minutes) == (5, 120)


def test_a_shorter_interval_brings_the_next_run_forward(settings):
    Schedule.objects.filter(name=PURGE).update(next_run=timezone.now() + timedelta(hours=1))
    settings.STREAMING_PURGE_MINUTES = 10
    ensure_schedules()
    purge = Schedule.objects.get(name=PURGE)
    assert purge.next_run <= timezone.now() + timedelta(minutes=10)


def test_a_duplicate_left_by_a_race_is_removed():
    Schedule.objects.create(name=REAPER, func="streaming.tasks.reap_streams")
    ensure_schedules()
    assert Schedule.objects.filter(name=REAPER).count() == 1


def test_an_unchanged_schedule_keeps_its_next_run():
    later = timezone.now() + timedelta(minutes=30)
    Schedule.objects.filter(name=PURGE).update(next_run=later)
    ensure_schedules()
    assert Schedule.objects.get(name=PURGE).next_run == later
