"""Services: every write, each status change one guarded UPDATE."""

from __future__ import annotations

import sqlite3
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from streaming import NewStream, StreamError, create_streams, delete_stream, services
from streaming.core.deltas import Finish
from streaming.core.lifecycle import Status, text_digest
from streaming.models import Chunk, Stream
from streaming.services import ChunkWrite
from tests.component import app
from tests.fixtures import chunks_text

pytestmark = pytest.mark.django_db(transaction=True)


def append(stream, first_seq: int, *batches: tuple[str, str]) -> bool:
    write = ChunkWrite(str(stream.id), first_seq, list(batches))
    with transaction.atomic():
        return services.chunks_append(writes=[write])[str(stream.id)]


def end(stream, status=Status.DONE, *, first_seq=0, tail=(), report=None, written=None):
    """The driver's end; ``written`` defaults to the stream's chunks."""
    written = chunks_text(stream.id) if written is None else written
    with transaction.atomic():
        return services.stream_end(
            stream_id=stream.id,
            status=status,
            first_seq=first_seq,
            tail=list(tail),
            report=report,
            written=written,
        )


def test_second_claim_loses_when_first_claim_won(make_stream):
    stream = make_stream()
    assert services.stream_claim(stream_id=stream.id) is not None
    assert services.stream_claim(stream_id=stream.id) is None


def test_a_claimed_stream_is_created_streaming_and_handed_to_this_process_once(make_stream):
    stream = make_stream(claimed=True)
    assert (stream.status, stream.started_at is not None) == ("streaming", True)
    assert services.take_claim(str(stream.id)) == "test.group"
    assert services.take_claim(str(stream.id)) is None


def test_a_claim_rolled_back_with_its_transaction_is_never_handed_out(make_stream):
    with pytest.raises(RuntimeError), transaction.atomic():
        stream = make_stream(claimed=True)
        raise RuntimeError("the caller's next write failed")
    assert services.take_claim(str(stream.id)) is None
    assert not Stream.objects.filter(id=stream.id).exists()


def test_an_owner_past_the_active_limit_is_refused(make_stream, settings):
    settings.STREAMING_MAX_ACTIVE_PER_OWNER = 2
    make_stream()
    make_stream(claimed=True)
    with pytest.raises(StreamError) as refused:
        make_stream()
    assert refused.value.code == StreamError.TOO_MANY_ACTIVE


def test_a_refusal_inside_the_callers_transaction_leaves_it_usable(make_stream, settings):
    settings.STREAMING_MAX_ACTIVE_PER_OWNER = 1
    with transaction.atomic():
        kept = make_stream(claimed=True)
        with pytest.raises(StreamError):
            make_stream(claimed=True)
        assert Stream.objects.filter(id=kept.id).exists()  # the transaction goes on
    assert Stream.objects.filter(owner=kept.owner).count() == 1


def test_a_stream_created_in_the_callers_transaction_takes_no_savepoint(make_stream, settings):
    settings.STREAMING_MAX_ACTIVE_PER_OWNER = 3
    with transaction.atomic(), CaptureQueriesContext(connection) as queries:
        make_stream(claimed=True)
    statements = [q["sql"].split()[0].upper() for q in queries.captured_queries]
    assert "SAVEPOINT" not in statements, statements


def test_many_streams_are_created_in_one_insert(owner, settings):
    settings.STREAMING_MAX_ACTIVE_PER_OWNER = 0
    requests = [NewStream(f"burst.{n}", owner) for n in range(5)]
    with transaction.atomic(), CaptureQueriesContext(connection) as queries:
        created = create_streams(requests, claimed=True)
    inserts = [q for q in queries.captured_queries if q["sql"].startswith("INSERT")]
    assert len(inserts) == 1
    assert [s.group for s in created] == [f"burst.{n}" for n in range(5)]
    assert Stream.objects.filter(status="streaming").count() == 5
    assert sorted(services.take_all_claims()) == sorted(str(s.id) for s in created)


def test_requests_past_an_owners_limit_are_refused_in_order_and_write_nothing(
    owner, make_stream, settings
):
    settings.STREAMING_MAX_ACTIVE_PER_OWNER = 3
    make_stream(claimed=True)
    other = get_user_model().objects.create_user("other", password="pw")
    requests = [NewStream("a", owner), NewStream("b", owner), NewStream("c", other),
                NewStream("d", owner), NewStream("e")]  # fmt: skip
    with transaction.atomic():
        created = create_streams(requests)
    outcomes = [r.code if isinstance(r, StreamError) else r.group for r in created]
    assert outcomes == ["a", "b", "c", StreamError.TOO_MANY_ACTIVE, "e"]
    assert Stream.objects.filter(owner=owner).count() == 3
    assert not Stream.objects.filter(group="d").exists()


def test_chunks_are_appended_only_as_the_next_seqs(make_stream):
    stream = make_stream(claimed=True)
    assert append(stream, 0, ("text", "A. "), ("reasoning", "b "))
    assert not append(stream, 5, ("text", "gap"))
    rows = list(Chunk.objects.filter(stream=stream).values_list("seq", "part", "text"))
    assert rows == [(0, "text", "A. "), (1, "reasoning", "b ")]
    assert Stream.objects.get(id=stream.id).last_seq == 1


def test_a_retried_write_that_had_committed_is_recognised_and_not_written_twice(make_stream):
    stream = make_stream(claimed=True)
    assert append(stream, 0, ("text", "A. "))
    assert append(stream, 0, ("text", "A. "))
    assert Chunk.objects.filter(stream=stream).count() == 1


def test_chunks_for_a_stream_settled_or_deleted_elsewhere_are_refused(make_stream):
    cancelled, deleted = make_stream(claimed=True), make_stream(claimed=True)
    services.stream_cancel_now(stream_id=cancelled.id)
    Stream.objects.filter(id=deleted.id).delete()
    assert not append(cancelled, 0, ("text", "late"))
    assert not append(deleted, 0, ("text", "late"))


def test_one_append_call_writes_several_streams_each_under_its_own_guard(make_stream):
    good, stale = make_stream(claimed=True), make_stream(claimed=True)
    writes = [ChunkWrite(str(good.id), 0, [("text", "ok")]), ChunkWrite(str(stale.id), 3, [])]
    with transaction.atomic():
        accepted = services.chunks_append(writes=writes)
    assert accepted == {str(good.id): True, str(stale.id): False}


def test_one_update_advances_every_stream_of_an_append(make_stream):
    streams = [make_stream(claimed=True) for _ in range(3)]
    writes = [ChunkWrite(str(s.id), 0, [("text", f"{n}. ")]) for n, s in enumerate(streams)]
    with transaction.atomic(), CaptureQueriesContext(connection) as queries:
        accepted = services.chunks_append(writes=writes)
    updates = [q["sql"] for q in queries.captured_queries if q["sql"].startswith("UPDATE")]
    assert len(updates) == 1, updates
    assert set(accepted.values()) == {True}
    assert sorted(Chunk.objects.values_list("text", flat=True)) == ["0. ", "1. ", "2. "]


def test_an_append_of_more_streams_than_one_statement_takes_writes_them_all(owner, settings):
    # SQLite refuses an expression deeper than 1,000 terms (each stream's guard is one)
    # and a statement of more parameters than its limit: a round of many streams is split.
    settings.STREAMING_MAX_ACTIVE_PER_OWNER = 0
    streams = create_streams([NewStream(f"many.{n}", owner) for n in range(1500)], claimed=True)
    writes = [ChunkWrite(str(s.id), 0, [("text", "a. "), ("text", f"{n}. ")])
              for n, s in enumerate(streams)]  # fmt: skip
    with transaction.atomic():
        accepted = services.chunks_append(writes=writes)
    assert list(accepted.values()) == [True] * 1500
    assert Chunk.objects.count() == 3000
    assert set(Stream.objects.values_list("last_seq", flat=True)) == {1}


@pytest.fixture
def sqlite_of_999_parameters(db):
    """The connection as an old SQLite build has it: at most 999 parameters a statement."""
    if connection.vendor != "sqlite":
        pytest.skip("SQLite only: runs in the pass on the embedded defaults")
    connection.ensure_connection()
    limit = connection.connection.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    connection.connection.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)
    yield
    connection.connection.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, limit)


def test_an_append_past_the_backends_parameter_limit_is_split_into_statements(
    owner, settings, sqlite_of_999_parameters
):
    settings.STREAMING_MAX_ACTIVE_PER_OWNER = 0
    streams = create_streams([NewStream(f"old.{n}", owner) for n in range(300)], claimed=True)
    writes = [ChunkWrite(str(s.id), 0, [("text", "a. "), ("text", f"{n}. ")])
              for n, s in enumerate(streams)]  # fmt: skip
    with transaction.atomic(), CaptureQueriesContext(connection) as queries:
        accepted = services.chunks_append(writes=writes)
    inserts = [q for q in queries.captured_queries if q["sql"].startswith("INSERT")]
    assert list(accepted.values()) == [True] * 300
    assert len(inserts) == 4  # 600 rows of 5 parameters, 199 rows a statement
    assert sorted(Chunk.objects.filter(seq=1).values_list("text", flat=True)) == sorted(
        f"{n}. " for n in range(300)
    )


def test_an_append_with_a_stale_write_past_the_parameter_limit_sorts_every_stream(
    owner, settings, sqlite_of_999_parameters
):
    settings.STREAMING_MAX_ACTIVE_PER_OWNER = 0
    streams = create_streams([NewStream(f"old.{n}", owner) for n in range(1200)], claimed=True)
    writes = [ChunkWrite(str(s.id), 0, [("text", f"{n}. ")]) for n, s in enumerate(streams)]
    writes[7] = ChunkWrite(str(streams[7].id), 4, [("text", "gap")])
    with transaction.atomic():
        accepted = services.chunks_append(writes=writes)
    assert [n for n, ok in enumerate(accepted.values()) if not ok] == [7]
    assert Chunk.objects.count() == 1199


def test_renewing_the_leases_of_more_streams_than_a_statement_holds_renews_them_all(
    owner, settings, sqlite_of_999_parameters
):
    settings.STREAMING_MAX_ACTIVE_PER_OWNER = 0
    streams = create_streams([NewStream(f"old.{n}", owner) for n in range(1200)], claimed=True)
    Stream.objects.update(lease_expires_at=timezone.now())
    services.stream_cancel_now(stream_id=streams[-1].id)
    stopped = services.streams_renew_leases(stream_ids=[str(s.id) for s in streams])
    assert stopped == {str(streams[-1].id)}
    assert not Stream.objects.filter(
        status="streaming", lease_expires_at__lte=timezone.now()
    ).exists()


def test_an_append_of_a_retry_beside_a_new_write_writes_only_the_new_chunks(make_stream):
    retried, fresh = make_stream(claimed=True), make_stream(claimed=True)
    assert append(retried, 0, ("text", "A. "))
    writes = [ChunkWrite(str(retried.id), 0, [("text", "A. ")]),
              ChunkWrite(str(fresh.id), 0, [("text", "B. ")])]  # fmt: skip
    with transaction.atomic():
        accepted = services.chunks_append(writes=writes)
    assert accepted == {str(retried.id): True, str(fresh.id): True}
    assert sorted(Chunk.objects.values_list("text", flat=True)) == ["A. ", "B. "]
    assert Stream.objects.get(id=fresh.id).last_seq == 0


@hypothesis_settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 3),
            st.sampled_from(["follows", "retry", "gap"]),
            st.integers(1, 3),
            st.booleans(),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_an_append_advances_exactly_the_streams_whose_write_follows_their_last_seq(
    make_stream, shapes
):
    """Each shape: the chunks a stream has, its write (the next seqs; a retry of its last
    write, which had committed; or past a gap), its batch count, whether it carries the
    first token's time. Only a following write advances; a retry is accepted as is."""
    first_token_at = timezone.now() - timedelta(seconds=5)
    writes, expected = [], {}
    for had, kind, count, carries in shapes:
        stream = make_stream(claimed=True, owner=None)
        if had:
            append(stream, 0, *[("text", "x")] * had)
        if kind == "retry" and had:
            count = min(count, had)
            first_seq = had - count
        else:
            kind, first_seq = ("gap", had + 1) if kind == "gap" else ("follows", had)
        batches = [("text", f"{n}. ") for n in range(count)]
        writes.append(
            ChunkWrite(str(stream.id), first_seq, batches, first_token_at if carries else None)
        )
        last_seq = first_seq + count - 1 if kind == "follows" else had - 1
        expected[str(stream.id)] = (kind != "gap", last_seq, kind == "follows" and carries)
    with transaction.atomic():
        accepted = services.chunks_append(writes=writes)
    rows = {str(r.id): r for r in Stream.objects.filter(id__in=list(expected))}
    found = {
        sid: (accepted[sid], rows[sid].last_seq, rows[sid].first_token_at == first_token_at)
        for sid in expected
    }
    assert found == expected
    for sid, (_, last_seq, _) in expected.items():
        seqs = Chunk.objects.filter(stream_id=sid).values_list("seq", flat=True)
        assert list(seqs) == list(range(last_seq + 1))


@hypothesis_settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.text(st.characters(exclude_characters="\x00", exclude_categories=["Cs"])),
                min_size=1, max_size=4))  # fmt: skip
def test_appended_and_final_chunks_keep_their_text_exactly(make_stream, texts):
    """Quotes, braces, backslashes, commas, NULL and whitespace survive the arrays
    (PostgreSQL) or the VALUES list (elsewhere) that carry a round's rows."""
    stream = make_stream(claimed=True)
    batches = [("reasoning" if n % 2 else "text", text) for n, text in enumerate(texts)]
    assert append(stream, 0, *batches)
    end(stream, first_seq=len(batches), tail=[("text", "".join(texts))])
    rows = Chunk.objects.filter(stream_id=stream.id).values_list("part", "text")
    assert list(rows) == [*batches, ("text", "".join(texts))]


def test_the_first_token_time_is_recorded_only_for_the_writes_that_carry_it(make_stream):
    first, later = make_stream(claimed=True), make_stream(claimed=True)
    when = timezone.now() - timedelta(seconds=5)
    writes = [ChunkWrite(str(first.id), 0, [("text", "a")], when),
              ChunkWrite(str(later.id), 0, [("text", "b")])]  # fmt: skip
    with transaction.atomic():
        services.chunks_append(writes=writes)
    assert Stream.objects.get(id=first.id).first_token_at == when
    assert Stream.objects.get(id=later.id).first_token_at is None


def test_renewing_leases_tells_which_streams_are_no_longer_streaming(make_stream):
    alive, cancelled = make_stream(claimed=True), make_stream(claimed=True)
    services.stream_cancel_now(stream_id=cancelled.id)
    before = Stream.objects.get(id=alive.id).lease_expires_at
    stopped = services.streams_renew_leases(stream_ids=[str(alive.id), str(cancelled.id)])
    assert stopped == {str(cancelled.id)}
    assert Stream.objects.get(id=alive.id).lease_expires_at > before


def test_the_end_writes_the_tail_compacts_each_part_and_runs_the_hook_once(make_stream):
    stream = make_stream(claimed=True)
    append(stream, 0, ("reasoning", "Think. "))
    usage = {"prompt_tokens": 3, "completion_tokens": 2, "reasoning_tokens": None}
    final = end(stream, first_seq=1, tail=[("text", "Ans")], report=Finish("stop", "m", usage))
    assert (final.status, final.last_seq, final.text, final.reasoning) == (
        "done",
        1,
        "Ans",
        "Think. ",
    )
    assert (final.reasoning_length, final.reasoning_sha256) == text_digest("Think. ")
    assert (final.model, final.usage, final.finish_reason) == ("m", usage, "stop")
    assert app.finished == [(str(stream.id), "done", "Ans")]


def test_an_end_whose_tail_does_not_follow_the_last_seq_changes_nothing(make_stream):
    stream = make_stream(claimed=True)
    assert end(stream, first_seq=4, tail=[("text", "x")]) is None
    assert Stream.objects.get(id=stream.id).status == "streaming"


def test_an_end_given_the_drivers_text_compacts_it_without_reading_the_chunks(make_stream):
    stream = make_stream(claimed=True)
    append(stream, 0, ("reasoning", "Think. "), ("text", "One. "))
    written = chunks_text(stream.id)
    with CaptureQueriesContext(connection) as queries:
        final = end(stream, first_seq=2, tail=[("text", "Two.")], written=written)
    assert (final.text, final.reasoning, final.last_seq) == ("One. Two.", "Think. ", 2)
    assert (final.length, final.sha256) == text_digest("One. Two.")
    chunk_reads = [q for q in queries if q["sql"].startswith("SELECT") and "chunk" in q["sql"]]
    updates = [q for q in queries if q["sql"].startswith("UPDATE")]
    assert (chunk_reads, len(updates)) == ([], 1)


def test_an_end_after_a_write_the_driver_gave_up_on_did_commit_compacts_the_chunks(make_stream):
    stream = make_stream(claimed=True)
    append(stream, 0, ("text", "Saved after all. "))
    final = end(stream, Status.ERROR, first_seq=0, written={"text": "", "reasoning": ""})
    assert (final.status, final.text, final.last_seq) == ("error", "Saved after all. ", 0)


def test_an_end_given_the_drivers_text_whose_tail_does_not_follow_changes_nothing(make_stream):
    stream = make_stream(claimed=True)
    final = end(stream, first_seq=4, tail=[("text", "x")], written={"text": "", "reasoning": ""})
    assert final is None
    assert Stream.objects.get(id=stream.id).status == "streaming"


def test_a_streams_chunks_in_their_default_order_are_read_without_a_join(make_stream):
    stream = make_stream(claimed=True)
    assert " JOIN " not in str(Chunk.objects.filter(stream=stream).query)


def test_ending_with_a_status_that_is_not_final_is_refused_with_a_value_error(make_stream):
    stream = make_stream(claimed=True)
    with pytest.raises(ValueError):
        end(stream, Status.STREAMING)


def test_an_end_other_than_done_records_its_own_status_as_finish_reason(make_stream):
    stream = make_stream(claimed=True)
    final = end(stream, Status.CANCELLED, report=Finish("stop", "m", None))
    assert final.finish_reason == "cancelled"


def test_only_an_expired_lease_is_settled_as_timeout(make_stream):
    live, expired = make_stream(), make_stream()
    Stream.objects.filter(id=expired.id).update(
        lease_expires_at=timezone.now() - timedelta(seconds=1)
    )
    assert services.stream_settle_if_expired(stream_id=live.id) is None
    settled = services.stream_settle_if_expired(stream_id=expired.id)
    assert (settled.status, settled.error, settled.finish_reason) == (
        "timeout",
        services.TIMEOUT_MESSAGE,
        "timeout",
    )


def test_a_final_stream_is_never_cancelled_again(make_stream):
    stream = make_stream(claimed=True)
    end(stream)
    assert services.stream_cancel_now(stream_id=stream.id) is None
    assert Stream.objects.get(id=stream.id).status == "done"


def test_deleting_an_active_stream_ends_it_cancelled_through_the_hook_first(make_stream):
    stream = make_stream(claimed=True)
    append(stream, 0, ("text", "Kept. "))
    assert delete_stream(stream.id)
    assert app.finished == [(str(stream.id), "cancelled", "Kept. ")]
    assert not Stream.objects.filter(id=stream.id).exists()
    assert not Chunk.objects.filter(stream_id=stream.id).exists()


def test_deleting_an_unknown_stream_says_so(make_stream):
    stream = make_stream()
    delete_stream(stream.id)
    assert delete_stream(stream.id) is False


def test_a_misspelt_or_malformed_setting_is_reported_by_the_system_check(settings):
    from streaming.checks import check_settings

    settings.STREAMING_LEASE_SECONDS = "soon"
    settings.STREAMING_LEAST_SECONDS = 3
    problems = {p.id: p.msg for p in check_settings()}
    assert problems["streaming.E001"] == "STREAMING_LEASE_SECONDS='soon' is not a valid float."
    assert problems["streaming.W001"] == (
        "STREAMING_LEAST_SECONDS is not a setting of the streaming component."
    )


def test_settings_given_as_strings_are_parsed_to_their_type(settings):
    from streaming.conf import app_settings

    settings.STREAMING_CANCEL_ON_DRIVER_DISCONNECT = "false"
    settings.STREAMING_MAX_ACTIVE_PER_OWNER = "5"
    assert app_settings.CANCEL_ON_DRIVER_DISCONNECT is False
    assert app_settings.MAX_ACTIVE_PER_OWNER == 5
