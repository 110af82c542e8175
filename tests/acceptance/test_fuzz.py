"""Schema-driven fuzzing of the running API: no generated request may produce a 5xx."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import schemathesis

from tests.support import postgres
from tests.support.processes import Menos, sql, wait_for

EXAMPLES = int(os.environ.get("MENOS_FUZZ_EXAMPLES", "30"))  # per operation; bounded in make test


def budget(examples: int) -> hypothesis.settings:
    """`examples` generated cases, the same ones on every run (derandomized, no database),
    however slow the API answers."""
    return hypothesis.settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(hypothesis.HealthCheck),
    )


@pytest.fixture(scope="module")
def fuzzed(
    pg_admin_dsn: str, template_db: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Menos, str]]:
    """One bin/api on a fresh database for the whole module, a key, and one completed note.

    The worker that completes the note stops before any fuzzing: fuzzed submissions name
    public hosts (example.com, youtube.com), which no test may fetch.
    """
    name = asyncio.run(postgres.create_database(pg_admin_dsn, template=template_db))
    menos = Menos(postgres.with_database(pg_admin_dsn, name), Path(tmp_path_factory.mktemp("fz")))
    try:
        menos.api()
        worker = menos.worker()
        key = menos.key("fuzzer")["api_key"]
        with menos.client(key) as client:  # something real for the id-taking routes to find
            seeded = client.post("/api/v1/content", json={"text": "# seed\n\nA seeded note."})
            job = f"/api/v1/jobs/{seeded.json()['job_id']}"
            wait_for(
                lambda: client.get(job).json()["status"] == "completed",
                timeout=60,
                what="the seeded note to complete",
            )
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
        yield menos, key
    finally:
        menos.stop()
        asyncio.run(postgres.drop_database(pg_admin_dsn, name))


@pytest.mark.parametrize(
    "mode",
    [schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE],
    ids=["allowed", "forbidden"],
)
def test_no_request_produces_a_server_error(
    fuzzed: tuple[Menos, str], mode: schemathesis.GenerationMode
) -> None:
    """Whatever request the OpenAPI schema allows, and whatever request it forbids (wrong
    types, missing or extra fields, ids that are not UUIDs, out-of-range numbers), the API
    answers below 500."""
    menos, key = fuzzed
    schema = schemathesis.openapi.from_url(f"{menos.base_url}/schema/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10
    if mode is schemathesis.GenerationMode.NEGATIVE:
        # an operation without parameters or a body (/health, /ready, /metrics) has nothing
        # to break
        operations = [op for op in operations if len(op.path_parameters) + len(op.query) or op.body]
        assert len(operations) >= 8
    for operation in operations:

        @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
        @budget(EXAMPLES)
        def call(case: Any) -> None:
            response = case.call(
                base_url=menos.base_url, headers={"Authorization": f"Bearer {key}"}
            )
            assert response.status_code < 500, (
                case.method,
                case.formatted_path,
                response.text[:500],
            )

        call()


# What an answer must agree on with the served schema: its status is one the operation lists,
# its media type and body are the ones documented for that status, and no 5xx.
CONFORMANCE = [
    schemathesis.checks.not_a_server_error,
    schemathesis.checks.status_code_conformance,
    schemathesis.checks.content_type_conformance,
    schemathesis.checks.response_schema_conformance,
]


def test_every_answer_is_the_one_the_schema_documents(fuzzed: tuple[Menos, str]) -> None:
    """Generated requests, and the seeded job read minimal and verbose, get answers whose
    status, media type and body the OpenAPI schema documents for that route."""
    menos, key = fuzzed
    auth = {"Authorization": f"Bearer {key}"}
    schema = schemathesis.openapi.from_url(f"{menos.base_url}/schema/openapi.json")
    with menos.client(key) as client:
        job_id = client.get("/api/v1/jobs").json()["items"][0]["job_id"]
    read_job = schema["/api/v1/jobs/{job_id}"]["GET"]
    for verbose in ("false", "true"):
        case = read_job.Case(path_parameters={"job_id": job_id}, query={"verbose": verbose})
        case.call_and_validate(base_url=menos.base_url, headers=auth, checks=CONFORMANCE)
    for operation in [result.ok() for result in schema.get_all_operations()]:

        @hypothesis.given(case=operation.as_strategy())
        @budget(EXAMPLES)
        def call(case: Any) -> None:
            case.call_and_validate(base_url=menos.base_url, headers=auth, checks=CONFORMANCE)

        call()


def test_ingest_of_valid_urls_never_produces_a_server_error(fuzzed: tuple[Menos, str]) -> None:
    """The schema only says `url` is a string, so schema-driven cases almost never hold a URL
    the route accepts and stop at its validation: here every case has one, the other fields
    drawn as the schema allows."""
    import httpx
    from hypothesis import strategies as st

    menos, key = fuzzed
    text = st.text(max_size=80)
    url = st.builds(
        lambda scheme, host, path: f"{scheme}://{host}/{path}",
        st.sampled_from(["https", "http"]),
        st.sampled_from(["example.com", "www.youtube.com", "youtu.be", "EXAMPLE.org:8443"]),
        text,
    )
    # Address literals: bin/api checks a callback's host by resolving it, and a name's lookup
    # would leave this machine (public and private addresses: accepted and refused).
    callback = st.builds(
        lambda scheme, host, path: f"{scheme}://{host}/{path}",
        st.sampled_from(["https", "http"]),
        st.sampled_from(["93.184.216.34", "[2606:4700::1111]:8443", "127.0.0.1", "10.1.2.3"]),
        text,
    )
    body = st.fixed_dictionaries(
        {"url": url},
        optional={
            "title": st.none() | text,
            "tags": st.none() | st.lists(text, max_size=5),
            "transcript_text": st.none() | text,
            "callback_url": st.none() | text | callback,
            "data_tier": st.sampled_from(["compact", "full", None]),
        },
    )

    @hypothesis.given(body=body)
    @budget(EXAMPLES * 3)
    def call(body: dict[str, Any]) -> None:
        answer = httpx.post(
            f"{menos.base_url}/api/v1/ingest",
            json=body,
            headers={"authorization": f"Bearer {key}"},
            timeout=10,
        )
        assert answer.status_code < 500, (body, answer.text)

    call()


def test_hostile_authorization_headers_are_401(fuzzed: tuple[Menos, str]) -> None:
    """Any forged Authorization header is answered 401, never a crash."""
    import httpx
    from hypothesis import strategies as st

    menos, key = fuzzed
    printable = st.characters(min_codepoint=32, max_codepoint=126)
    header = (
        st.one_of(
            st.text(alphabet=printable, min_size=1, max_size=300),
            st.builds(lambda k: f"Bearer {k}", st.text(alphabet=printable, max_size=300)),
            st.just(f"Bearer {key}x"),
            st.just(f"bearer  {key[:-1]}"),
            st.just(f"Basic {key}"),
        )
        .map(str.strip)
        .filter(bool)
    )

    @hypothesis.given(value=header)
    @budget(EXAMPLES * 3)
    def call(value: str) -> None:
        answer = httpx.get(
            f"{menos.base_url}/api/v1/jobs", headers={"authorization": value}, timeout=10
        )
        assert answer.status_code == 401, (value, answer.text)

    call()


def test_raw_body_bytes_never_produce_a_server_error(fuzzed: tuple[Menos, str]) -> None:
    """Bodies no schema-driven client sends (any bytes, invalid UTF-8 inside a JSON string,
    raw multipart parts) are answered below 500 on every route that reads a body."""
    import httpx
    from hypothesis import strategies as st

    menos, key = fuzzed
    fields = st.sampled_from([b"url", b"text", b"transcript_text", b"callback_url", b"tags"])
    json_bodies = st.one_of(
        st.binary(max_size=200),
        st.builds(lambda f, v: b'{"' + f + b'": "' + v + b'"}', fields, st.binary(max_size=60)),
        st.builds(lambda f, v: b'{"' + f + b'": ' + v + b"}", fields, st.binary(max_size=60)),
    )
    multipart = st.builds(
        lambda name, value: (
            b'--b\r\ncontent-disposition: form-data; name="file"; filename="'
            + name
            + b'"\r\ncontent-type: text/markdown\r\n\r\n'
            + value
            + b"\r\n--b--\r\n"
        ),
        st.binary(max_size=30),
        st.binary(max_size=100),
    )
    with menos.client(key) as client:
        seeded = client.get("/api/v1/content").json()["items"][0]["content_id"]
    routes = ["/api/v1/ingest", "/api/v1/content", f"/api/v1/content/{seeded}/reprocess"]

    @hypothesis.given(
        route=st.sampled_from(routes),
        body=json_bodies,
        upload=multipart,
        as_upload=st.booleans(),
    )
    @budget(EXAMPLES * 5)
    def call(route: str, body: bytes, upload: bytes, as_upload: bool) -> None:
        content_type = "multipart/form-data; boundary=b" if as_upload else "application/json"
        answer = httpx.post(
            f"{menos.base_url}{route}",
            content=upload if as_upload else body,
            headers={"authorization": f"Bearer {key}", "content-type": content_type},
            timeout=10,
        )
        assert answer.status_code < 500, (route, body if not as_upload else upload, answer.text)

    call()


def test_fuzzed_submissions_are_never_fetched(fuzzed: tuple[Menos, str]) -> None:
    """No worker is connected while fuzzing, so no fuzzed URL is claimed and no test reaches
    the public host it names."""
    menos, _ = fuzzed
    workers = sql(
        menos.database_url,
        "SELECT count(*) AS n FROM pg_stat_activity WHERE application_name = 'menos worker'",
    )
    assert workers == [{"n": 0}]
    started = sql(
        menos.database_url,
        "SELECT count(*) AS n FROM menos.pipeline_job j JOIN menos.content c USING (content_id)"
        " WHERE c.content_type <> 'markdown' AND j.started_at IS NOT NULL",
    )
    assert started == [{"n": 0}]
