"""`Client` against a real runq API (see conftest.py): submit, wait, cancel, retry, list, and
the typed errors of the API's refusals."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import pytest

from conftest import DevProcess, Recorder
from runq_client import (
    AsyncClient,
    Client,
    Conflict,
    InvalidRequest,
    Job,
    JobRequest,
    JobStatus,
    NotFound,
    RunqError,
    Unauthorized,
    WaitTimeout,
)


class Seen(Exception):
    """Raised from ``on_progress`` to stop a wait once the job is where a test wants it."""


def until_running(client: Client, job_id: str) -> JobStatus:
    """Follows the job until it runs (bounded); its running status."""

    def check(status: JobStatus) -> None:
        if status.status == "running":
            raise Seen(status)
        assert not status.finished, f"it ended before running: {status}"

    with pytest.raises(Seen) as seen:
        client.wait(job_id, on_progress=check, timeout=30, hold=5)
    status: JobStatus = seen.value.args[0]
    return status


def test_submit_and_wait_reports_progress_through_long_polls(recorded: tuple[Client, Recorder]) -> None:
    client, recorder = recorded
    # Two quiet seconds before each of two steps: long-polls of one second answer 304 then.
    job = client.submit("sleep", {"seconds": 4, "steps": 2}, priority="high")
    assert job.status == "queued" and job.function == "sleep" and job.priority == "high"
    assert job.args == {"seconds": 4, "steps": 2}

    events: list[JobStatus] = []
    done = client.wait(job.id, on_progress=events.append, hold=1, timeout=60)

    assert isinstance(done, Job) and done.id == job.id
    assert done.status == "succeeded" and done.result == {"slept_seconds": 4.0}
    assert done.progress == 1.0 and done.finished_at is not None and done.error is None
    assert events[-1].status == "succeeded", "the last progress call is the final status"
    assert any(e.status == "running" and e.progress == 0.5 and e.message == "step 1 of 2" for e in events), events
    progress = [e.progress for e in events]
    assert progress == sorted(progress), f"progress only grows: {progress}"

    polls = [(r, code) for r, code in recorder.exchanges if r.url.path == f"/jobs/{job.id}/status"]
    first, _ = polls[0]
    assert "if-none-match" not in first.headers and not first.url.query, "the first request answers at once"
    for request, code in polls[1:]:
        assert request.headers["if-none-match"].startswith('W/"'), "then it sends the last ETag"
        assert request.url.params["wait"] == "1", "and long-polls"
        assert code in (200, 304)
    assert any(code == 304 for _, code in polls), f"quiet long-polls answered 304: {polls}"
    assert sum(code == 200 for _, code in polls) == len(events), "one 200 per change, each passed on"


def test_an_idempotency_key_returns_the_same_job(client: Client) -> None:
    key = f"py-{uuid.uuid4()}"
    first = client.submit("echo", {"value": 1}, idempotency_key=key)
    again = client.submit("echo", {"value": 1}, idempotency_key=key)
    assert again.id == first.id and again.idempotency_key == key

    with pytest.raises(Conflict) as refused:
        client.submit("echo", {"value": 2}, idempotency_key=key)
    assert refused.value.status == 409 and refused.value.kind == "conflict"
    assert "Idempotency-Key" in refused.value.detail
    assert client.wait(first.id, timeout=30).result == 1


def test_a_unique_key_deduplicates_and_a_delay_holds_the_job(client: Client) -> None:
    key = f"py-{uuid.uuid4()}"
    first = client.submit("noop", unique_key=key, delay=timedelta(hours=1))
    assert first.status == "queued" and not first.deduplicated
    assert (first.run_after - first.created_at).total_seconds() > 3500
    second = client.submit("noop", unique_key=key, delay=3600)
    assert second.deduplicated and second.id == first.id
    assert client.cancel(first.id).status == "cancelled", "a job not yet running is cancelled at once"


def test_cancel_of_a_running_job_ends_it_cancelled(client: Client) -> None:
    job = client.submit("sleep", {"seconds": 300, "steps": 300})
    until_running(client, job.id)

    asked = client.cancel(job.id)
    assert asked.cancel_requested or asked.status == "cancelled", asked
    done = client.wait(job.id, timeout=30)
    assert done.status == "cancelled" and done.error is not None and done.error.kind == "cancelled"
    assert client.cancel(job.id).status == "cancelled", "cancelling again answers the same"


def test_a_failing_job_ends_failed_and_can_be_retried_and_deleted(client: Client) -> None:
    job = client.submit("fail", {"message": "boom", "retryable": False})
    done = client.wait(job.id, timeout=30)
    assert done.status == "failed" and done.result is None
    assert done.error is not None
    assert (done.error.kind, done.error.message, done.error.retryable) == ("error", "boom", False)

    with pytest.raises(Conflict):
        client.cancel(job.id)
    again = client.retry(job.id)
    assert again.id == job.id and again.status == "queued"
    assert client.wait(job.id, timeout=30).status == "failed"
    with pytest.raises(Conflict) as refused:
        client.retry(client.submit("sleep", {"seconds": 60}, delay=3600).id)
    assert "only failed or cancelled" in refused.value.detail

    client.delete(job.id)
    with pytest.raises(NotFound):
        client.get(job.id)


def test_a_batch_submits_every_job_in_order(client: Client) -> None:
    key = f"py-{uuid.uuid4()}"
    jobs = client.submit_batch(
        [
            JobRequest("echo", {"value": {"i": 0}}),
            JobRequest("noop", unique_key=key, delay=3600),
            JobRequest("noop", unique_key=key, delay=3600),
        ]
    )
    assert [j.function for j in jobs] == ["echo", "noop", "noop"]
    assert not jobs[1].deduplicated and jobs[2].deduplicated and jobs[2].id == jobs[1].id
    assert client.wait(jobs[0].id, timeout=30).result == {"i": 0}
    client.cancel(jobs[1].id)

    with pytest.raises(InvalidRequest) as refused:
        client.submit_batch([JobRequest("noop"), JobRequest("no-such-function")])
    assert refused.value.detail.startswith("jobs[1]: "), refused.value.detail


def test_jobs_lists_newest_first_a_page_at_a_time(client: Client) -> None:
    ids = [client.submit("echo", {"value": i}).id for i in range(3)]
    page = client.jobs(function="echo", limit=2)
    assert len(page.jobs) == 2 and page.next_cursor is not None
    assert [j.id for j in page.jobs] == ids[::-1][:2]
    rest = client.jobs(function="echo", limit=2, cursor=page.next_cursor)
    assert rest.jobs[0].id == ids[0]
    listed = [j.id for j in client.iter_jobs(function="echo")]
    assert listed[:3] == ids[::-1] and len(listed) == len(set(listed))
    with pytest.raises(InvalidRequest) as refused:
        client.jobs(status="done")  # type: ignore[arg-type]
    assert refused.value.field == "status"


def test_an_unknown_function_is_an_invalid_request(client: Client) -> None:
    with pytest.raises(InvalidRequest) as refused:
        client.submit("no-such-function", {})
    error = refused.value
    assert error.status == 422 and error.field == "function" and error.kind == "invalid-request"
    assert "no-such-function" in error.detail
    assert error.problem["status"] == 422

    with pytest.raises(InvalidRequest) as bad_args:
        client.submit("sleep", {"seconds": -1})
    assert "seconds" in bad_args.value.detail


def test_a_bad_token_is_unauthorized(runq_url: str) -> None:
    with Client(runq_url, "not-a-token") as stranger:
        with pytest.raises(Unauthorized) as refused:
            stranger.submit("noop")
    assert refused.value.status == 401 and refused.value.detail == "malformed bearer token"
    with Client(runq_url) as anonymous:
        with pytest.raises(Unauthorized) as missing:
            anonymous.status(uuid.uuid4())
    assert missing.value.detail == "missing bearer token"


def test_an_unknown_job_is_not_found_and_not_retried(client: Client) -> None:
    unknown = uuid.uuid4()
    for call in (client.status, client.get, client.cancel, client.retry):
        with pytest.raises(NotFound) as refused:
            call(unknown)
        assert refused.value.status == 404 and refused.value.kind == "job-not-found", call
    retries: list[float] = []
    with pytest.raises(NotFound):
        client.wait(unknown, on_retry=lambda _e, pause: retries.append(pause), timeout=30)
    assert retries == []
    with pytest.raises(InvalidRequest) as not_an_id:
        client.status("not-a-uuid")
    assert not_an_id.value.field == "id"


def test_wait_gives_up_at_its_timeout_and_says_where_the_job_was(client: Client) -> None:
    job = client.submit("noop", delay=3600)
    with pytest.raises(WaitTimeout) as timed_out:
        client.wait(job.id, timeout=1.5, hold=1)
    assert timed_out.value.job_id == job.id
    assert timed_out.value.last is not None and timed_out.value.last.status == "queued"
    client.cancel(job.id)


def test_wait_rides_out_an_api_restart(own_dev: DevProcess) -> None:
    """The API stops while a wait follows a running job and comes back at the same URL: the
    wait retries through the outage, resumes, and ends with the job."""
    token = own_dev.start()
    events: list[str] = []

    def on_progress(status: JobStatus) -> None:
        events.append(status.status)
        if status.status == "running" and "restarted" not in events:
            own_dev.stop()  # mid-run: the run is released, or finishes within the grace

    def on_retry(error: RunqError, pause: float) -> None:
        events.append("retry")
        if "restarted" not in events:
            own_dev.start()  # the same ports and database: the job is still there
            events.append("restarted")

    with Client(own_dev.url, token) as client:
        job = client.submit("sleep", {"seconds": 2, "steps": 2})
        done = client.wait(job.id, on_progress=on_progress, on_retry=on_retry, timeout=120, hold=1)
    assert done.status == "succeeded", (done, events)
    assert events.index("running") < events.index("retry") < events.index("restarted"), events
    assert events[-1] == "succeeded", events


def test_the_async_client_submits_and_waits(runq_url: str, runq_token: str) -> None:
    async def scenario() -> Job:
        async with AsyncClient(runq_url, runq_token) as client:
            job = await client.submit("echo", {"value": "async"})
            seen: list[JobStatus] = []
            done = await client.wait(job.id, on_progress=seen.append, timeout=30)
            assert seen and seen[-1].status == "succeeded"
            assert (await client.status(job.id)).status == "succeeded"
            return done

    done = asyncio.run(scenario())
    assert done.result == "async"
