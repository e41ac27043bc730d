"""No 5xx on any input: property tests over every route of the OpenAPI document, every role.

Two generators, on both databases, each against a database of its own (fuzzing publishes consent
texts and creates users, which other tests must not see):

- `test_no_5xx_on_any_request`: Hypothesis strategies built here from the app's OpenAPI document
  for every JSON body, form body, query, header and path parameter, biased towards what broke
  before: NUL characters, instants and dates at the calendar's edges with offsets, huge numbers,
  unicode (lone surrogates too), values of the wrong type, ids that exist and ids that do not.
- `test_schemathesis_per_role`: schemathesis' own positive and negative generation from the same
  document, in-process over ASGI, once per role (admin, scheduler, clinician, anonymous, and the
  patient holding a visit link).

Every response must be below 500, and every 4xx must be the contract's error shape. The example
counts come from a Hypothesis profile: `TELEVISIT_FUZZ_PROFILE=deep` runs many more.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import json
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import pytest
import schemathesis
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.python.asgi import shutdown_lifespans
from sqlalchemy import func, select

from app.config import Settings
from app.main import create_app
from scheduling.models import Appointment
from tests.conftest import REDIS_URL, TEST_SECRET
from tests.databases import own_database
from tests.factories import Staff, booking_body, local_instant, make_staff, next_weekday

# Examples per database (our generator) and per role and database (schemathesis).
settings.register_profile("televisit-fuzz", max_examples=200)
settings.register_profile("televisit-fuzz-deep", max_examples=4000)
DEEP = os.environ.get("TELEVISIT_FUZZ_PROFILE") == "deep"
PROFILE = "televisit-fuzz-deep" if DEEP else "televisit-fuzz"
SCHEMATHESIS_SHARE = 0.15  # of the profile's examples, per role
FUZZ_SETTINGS = settings(
    settings.get_profile(PROFILE),
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
ROLES = ("admin", "scheduler", "clinician", "anonymous", "patient")
SNAKE_CASE = re.compile(r"^[a-z][a-z0-9_]*$")


# The app on an event loop of its own thread: Hypothesis drives it from synchronous code ------


class ServedApp:
    """`create_app` with its lifespan entered, served in-process from a background event loop."""

    def __init__(self, app_settings: Settings) -> None:
        self.app: FastAPI = create_app(app_settings)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._client: httpx.AsyncClient | None = None
        self._stop: asyncio.Event | None = None
        self._serving: concurrent.futures.Future[None] | None = None

    async def _serve(self, ready: concurrent.futures.Future[None]) -> None:
        self._stop = asyncio.Event()
        # A 500 comes back as a response, as a real server would send it.
        transport = httpx.ASGITransport(app=self.app, raise_app_exceptions=False)
        async with (
            LifespanManager(self.app),
            httpx.AsyncClient(transport=transport, base_url="http://testserver") as client,
        ):
            self._client = client
            ready.set_result(None)
            await self._stop.wait()

    def __enter__(self) -> ServedApp:
        self._thread.start()
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._serving = asyncio.run_coroutine_threadsafe(self._serve(ready), self._loop)
        ready.result(timeout=60)
        return self

    def __exit__(self, *_exc: object) -> None:
        assert self._stop is not None
        assert self._serving is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._serving.result(timeout=60)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=120)

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        assert self._client is not None
        response: httpx.Response = self.run(self._client.request(method, url, **kwargs))
        return response


@dataclass
class World:
    """What exists in the fuzzed database: people, ids worth aiming at, the patient's link."""

    served: ServedApp
    staff: Staff
    appointment_id: str
    visit_token: str
    openapi: dict[str, Any]
    headers: dict[str, dict[str, str]] = field(default_factory=dict)

    def appointments(self) -> int:
        async def count() -> int:
            async with self.served.app.state.db.session(write=False) as session:
                return int(await session.scalar(select(func.count()).select_from(Appointment)))

        result: int = self.served.run(count())
        return result


FUZZ_REDIS_URL = re.sub(r"/\d+$", "", REDIS_URL) + "/7"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    folder: Path = tmp_path_factory.mktemp("fuzz")
    with own_database(request.param, folder) as url:
        app_settings = Settings(
            environment="test",
            database_url=url,
            secret_key=TEST_SECRET,  # type: ignore[arg-type]  # pydantic turns it into SecretStr
            public_url="http://testserver",  # type: ignore[arg-type]  # pydantic parses the URL
            db_pool_size=5,
            recordings_dir=folder / "recordings",
            # Schemathesis serves a second app on this database: several processes of one
            # database share a Redis (signaling.liveness). A Redis database of the fuzz tests'
            # own, so their login throttles touch no other test's.
            redis_url=FUZZ_REDIS_URL,
        )
        with ServedApp(app_settings) as served:
            staff: Staff = served.run(make_staff(served.app.state.db, secret=TEST_SECRET.encode()))
            start = local_instant(next_weekday(10), "10:00", "America/New_York")
            booked = served.request(
                "POST",
                "/api/v1/appointments",
                json=booking_body(staff.clinician.id, start, birth_date="1980-02-29"),
                headers=staff.scheduler.headers,
            )
            assert booked.status_code == 201, booked.text
            yield World(
                served=served,
                staff=staff,
                appointment_id=booked.json()["id"],
                visit_token=booked.json()["visit_url"].rsplit("/", 1)[1],
                openapi=served.app.openapi(),
                headers={
                    "admin": staff.admin.headers,
                    "scheduler": staff.scheduler.headers,
                    "clinician": staff.clinician.headers,
                    "anonymous": {},
                    "patient": {},
                },
            )


def assert_contract(response: httpx.Response, label: str) -> None:
    """Below 500; a 4xx is `{"error": {"code": snake_case, "message": str}}` (+ details)."""
    assert response.status_code < 500, f"{label}: {response.status_code} {response.text[:500]}"
    if response.status_code < 400:
        return
    body = response.json()
    assert set(body) == {"error"}, f"{label}: {body}"
    error = body["error"]
    assert set(error) <= {"code", "message", "details"}, f"{label}: {body}"
    assert isinstance(error["code"], str), f"{label}: {body}"
    assert SNAKE_CASE.match(error["code"]), f"{label}: {body}"
    assert isinstance(error["message"], str), f"{label}: {body}"
    assert error["message"], f"{label}: {body}"


# Strategies from the OpenAPI document -----------------------------------------------------

NUL = "\x00"
_OFFSETS = st.builds(
    dt.timezone,
    st.timedeltas(
        min_value=dt.timedelta(hours=-23, minutes=-59), max_value=dt.timedelta(hours=23, minutes=59)
    ),
)
EDGE_INSTANTS = st.sampled_from(
    [
        "9999-12-31T23:59:59Z",
        "9999-12-31T23:59:59.999999+00:00",
        "9999-12-31T23:00:00-05:00",
        "9999-12-31T10:00:00-14:00",
        "9999-12-30T15:00:00Z",
        "0001-01-01T00:00:00Z",
        "0001-01-01T00:30:00+01:00",
        "0001-01-01T05:00:00+14:00",
        "1899-12-31T23:59:59-01:00",
        "8999-12-31T23:40:00Z",
        "9000-01-01T00:00:00+23:59",
    ]
)


def _near_now(days: int, minutes: int) -> str:
    # Slot-aligned instants in the coming weeks: many are free slots, so bookings get through.
    day = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return (day + dt.timedelta(days=days, minutes=minutes)).isoformat().replace("+00:00", "Z")


INSTANTS = st.one_of(
    st.builds(_near_now, st.integers(-3, 60), st.integers(13 * 3, 21 * 3).map(lambda n: n * 20)),
    EDGE_INSTANTS,
    st.datetimes(timezones=st.one_of(st.just(dt.UTC), _OFFSETS)).map(dt.datetime.isoformat),
)
DATES = st.one_of(
    st.dates().map(dt.date.isoformat),
    st.sampled_from(["9999-12-31", "0001-01-01", "2026-02-29", "1889-12-31"]),
    st.integers(-30, 400).map(lambda n: (dt.date.today() + dt.timedelta(days=n)).isoformat()),
)
BIG_NUMBERS = st.sampled_from(
    [2**31 - 1, 2**31, 2**63 - 1, 2**63, -(2**63) - 1, 10**40, -1, 0, 1e308, -1e-308]
)
NUL_TEXT = st.tuples(st.text(max_size=12), st.text(max_size=12)).map(lambda p: p[0] + NUL + p[1])
ODD_TEXT = st.one_of(
    NUL_TEXT,
    st.text(st.characters(categories=["Cs"]), min_size=1, max_size=3),  # lone surrogates
    st.text(st.characters(codec="utf-8"), max_size=40),
    st.sampled_from(["", " ", "\u202e", "\ufeff", "😀" * 300, "'; DROP TABLE users; --", "%00"]),
)
HOSTILE = st.one_of(
    ODD_TEXT,
    BIG_NUMBERS,
    st.none(),
    st.booleans(),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
    EDGE_INSTANTS,
)


def mostly(good: st.SearchStrategy[Any], odd: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """`good` about two times in three: requests must also get past validation, not only fail it."""
    return st.one_of(good, good, odd)


@dataclass(frozen=True)
class Generator:
    components: dict[str, Any]
    ids: dict[str, st.SearchStrategy[str]]
    hostile: bool

    def resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in schema:
            schema = self.components[schema["$ref"].rsplit("/", 1)[1]]
        return schema

    def value(self, schema: dict[str, Any], name: str = "") -> st.SearchStrategy[Any]:
        good = self._good(self.resolve(schema), name)
        return st.one_of(good, HOSTILE) if self.hostile else good

    def _good(self, schema: dict[str, Any], name: str) -> st.SearchStrategy[Any]:
        if "anyOf" in schema or "oneOf" in schema:
            alternatives = schema.get("anyOf") or schema["oneOf"]
            return st.one_of([self.value(s, name) for s in alternatives])
        if "enum" in schema:
            return mostly(st.sampled_from(schema["enum"]), ODD_TEXT)
        kind = schema.get("type")
        if kind == "object":
            return self._object(schema)
        if kind == "array":
            limit = min(schema.get("maxItems", 4), 4)
            return st.lists(self.value(schema.get("items", {}), name), max_size=limit)
        if kind == "string":
            return self._string(schema, name)
        if kind == "integer":
            low, high = schema.get("minimum"), schema.get("maximum")
            return mostly(st.integers(low, high), st.one_of(BIG_NUMBERS, st.integers()))
        if kind == "number":
            return st.one_of(st.floats(allow_nan=False, allow_infinity=False), BIG_NUMBERS)
        if kind == "boolean":
            return st.booleans()
        if kind == "null":
            return st.none()
        return HOSTILE

    def _string(self, schema: dict[str, Any], name: str) -> st.SearchStrategy[Any]:
        shape = schema.get("format")
        if name in self.ids:
            return mostly(self.ids[name], st.one_of(st.uuids().map(str), ODD_TEXT))
        if shape == "date-time":
            return st.one_of(INSTANTS, ODD_TEXT)
        if shape == "date":
            return mostly(DATES, ODD_TEXT)
        if shape == "uuid":
            return mostly(st.uuids().map(str), ODD_TEXT)
        if shape == "email":
            nul = NUL_TEXT.map(lambda t: f"a{t}@example.org")
            return mostly(st.emails(), st.one_of(nul, ODD_TEXT))
        if "pattern" in schema:
            return mostly(st.from_regex(schema["pattern"], fullmatch=True), ODD_TEXT)
        low = schema.get("minLength", 0)
        high = min(schema.get("maxLength", 60), 60)
        too_long = st.just("x" * (schema["maxLength"] + 1)) if "maxLength" in schema else NUL_TEXT
        return mostly(
            st.text(min_size=low, max_size=max(low, high)),
            st.one_of(NUL_TEXT, NUL_TEXT, ODD_TEXT, too_long),
        )

    def _object(self, schema: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
        properties = schema.get("properties", {})
        required = set(schema.get("required", ()))
        fixed = {k: self.value(v, k) for k, v in properties.items() if k in required}
        optional = {k: self.value(v, k) for k, v in properties.items() if k not in required}
        body = st.fixed_dictionaries(fixed, optional=optional)
        if not self.hostile:
            return body
        # Required fields dropped, unknown fields added.
        return st.one_of(
            body,
            body.map(lambda d: {**d, "surprise": 1}),
            body.map(lambda d: dict(list(d.items())[1:])),
        )


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    spec: dict[str, Any]


def operations(openapi: dict[str, Any]) -> list[Operation]:
    return [
        Operation(method.upper(), path, spec)
        for path, methods in sorted(openapi["paths"].items())
        for method, spec in sorted(methods.items())
    ]


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


@st.composite
def api_requests(draw: st.DrawFn, world: World) -> tuple[str, str, str, dict[str, Any]]:
    """(label, method, url, httpx keyword arguments) for one request to any route, any role."""
    operation = draw(st.sampled_from(operations(world.openapi)))
    patient_route = "{token}" in operation.path
    role = draw(st.sampled_from(ROLES if patient_route else ROLES[:-1]))
    staff = world.staff
    ids = {
        "clinician_id": st.sampled_from([str(staff.clinician.id), str(staff.other_clinician.id)]),
        "appointment_id": st.just(world.appointment_id),
        "token": st.just(world.visit_token) if role == "patient" else st.text(min_size=20),
    }
    hostile = draw(st.integers(0, 3)) == 0
    gen = Generator(world.openapi["components"]["schemas"], ids, hostile=hostile)
    path, query = operation.path, {}
    headers: dict[str, str | bytes] = dict(world.headers[role])
    for parameter in operation.spec.get("parameters", []):
        name, where = parameter["name"], parameter["in"]
        if where == "path":
            value = _text(draw(gen.value(parameter["schema"], name)))
            raw = quote(value.encode("utf-8", "surrogatepass"), safe="")
            path = path.replace("{" + name + "}", raw)
            continue
        if not parameter.get("required") and draw(st.booleans()):
            continue
        value = draw(gen.value(parameter["schema"], name))
        if value is None:
            continue
        if where == "query":
            query[name] = _text(value)
        elif where == "header":
            headers[name] = _text(value).encode("utf-8", "surrogatepass")
    if query:
        path += "?" + urlencode(query, encoding="utf-8", errors="surrogatepass")
    kwargs: dict[str, Any] = {"headers": headers}
    content = operation.spec.get("requestBody", {}).get("content", {})
    if "application/json" in content:
        body = draw(gen.value(content["application/json"]["schema"]))
        # Escaped ASCII carries lone surrogates; NaN and Infinity go out as invalid JSON.
        kwargs["content"] = json.dumps(body, ensure_ascii=True, allow_nan=True).encode()
        headers["content-type"] = "application/json"
    elif "application/x-www-form-urlencoded" in content:
        form = draw(gen.value(content["application/x-www-form-urlencoded"]["schema"]))
        if isinstance(form, dict):
            fields = {key: _text(value) for key, value in form.items() if value is not None}
            form = urlencode(fields, encoding="utf-8", errors="surrogatepass")
        kwargs["content"] = _text(form).encode("utf-8", "surrogatepass")
        headers["content-type"] = "application/x-www-form-urlencoded"
    label = f"{role} {operation.method} {path} {kwargs!r:.300}"
    return label, operation.method, path, kwargs


def test_no_5xx_on_any_request(world: World) -> None:
    before = world.appointments()
    seen: set[tuple[str, int]] = set()

    @FUZZ_SETTINGS
    @given(api_requests(world))
    def one_request(drawn: tuple[str, str, str, dict[str, Any]]) -> None:
        label, method, path, kwargs = drawn
        response = world.served.request(method, path, **kwargs)
        seen.add((method, response.status_code))
        assert_contract(response, label)

    one_request()
    # Appointments are cancelled, never deleted: nothing stored before the run is gone.
    assert world.appointments() >= before
    # The run reached past validation: something succeeded, something was refused.
    statuses = {status for _method, status in seen}
    assert any(s < 300 for s in statuses), statuses
    assert 422 in statuses, statuses


# schemathesis, per role --------------------------------------------------------------------


@schemathesis.check
def error_shape(
    _ctx: Any, response: schemathesis.Response, case: schemathesis.Case[Any]
) -> bool | None:
    """Every 4xx is the contract's error shape."""
    if 400 <= response.status_code < 500:
        body = json.loads(response.content)
        error = body.get("error") if isinstance(body, dict) else None
        if not (
            isinstance(error, dict)
            and isinstance(error.get("code"), str)
            and SNAKE_CASE.match(error["code"])
            and isinstance(error.get("message"), str)
        ):
            raise AssertionError(f"{case.operation.label}: not the error shape: {body!r:.300}")
    return None


@pytest.mark.parametrize("role", ROLES)
def test_schemathesis_per_role(world: World, role: str, tmp_path: Path) -> None:
    app = create_app(world.served.app.state.settings)
    schema: schemathesis.BaseSchema = schemathesis.openapi.from_asgi("/api/openapi.json", app)
    path_parameters: dict[str, Any] | None = None
    if role == "patient":
        schema = schema.include(path_regex=r"/visits/")
        path_parameters = {"token": world.visit_token}
    modes = [schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE]
    strategy = st.one_of(
        [schema.as_strategy(mode, path_parameters=path_parameters) for mode in modes]
    )
    examples = max(20, int(settings.get_profile(PROFILE).max_examples * SCHEMATHESIS_SHARE))
    calls: list[int] = []

    @settings(FUZZ_SETTINGS, max_examples=examples)
    @given(strategy)
    def one_case(case: schemathesis.Case[Any]) -> None:
        response = case.call(headers=world.headers[role])
        calls.append(response.status_code)
        case.validate_response(response, checks=[not_a_server_error, error_shape])

    try:
        one_case()
    finally:
        shutdown_lifespans()
    assert calls, "schemathesis generated no request"
