"""Every error kind, produced by driving the simulator to it over real HTTP through the client."""

from __future__ import annotations

import pytest

from bananaline.client import ImageClient
from bananaline.config import Settings
from bananaline.errors import ErrorKind
from bananaline.types import GenerationRequest, WireProtocol

KEY = "test-key-faults-0001"


def _settings(sim, **overrides) -> Settings:
    base = dict(
        base_url=sim.base_url,
        api_key=KEY,
        max_attempts=1,
        backoff_initial_s=0.01,
        backoff_max_s=0.05,
        timeout_s=20.0,
    )
    base.update(overrides)
    return Settings(**base)


async def _generate(sim, prompt, protocol=WireProtocol.GEMINI, **overrides):
    async with ImageClient(_settings(sim, protocol=protocol, **overrides)) as client:
        return await client.generate(
            GenerationRequest(
                prompt=prompt, model="gemini-3-pro-image-preview", aspect_ratio="1:1", image_size="1K"
            )
        )


TRANSPORT_CASES = [
    ("http_400", ErrorKind.BAD_REQUEST, False),
    ("http_401", ErrorKind.AUTH, False),
    ("http_403", ErrorKind.AUTH, False),
    ("http_402", ErrorKind.QUOTA, False),
    ("http_404", ErrorKind.BAD_REQUEST, False),
    ("http_413", ErrorKind.BAD_REQUEST, False),
    ("http_422", ErrorKind.BAD_REQUEST, False),
    ("http_429", ErrorKind.RATE_LIMITED, True),
    ("http_500", ErrorKind.UPSTREAM_ERROR, True),
    ("http_502", ErrorKind.UPSTREAM_ERROR, True),
    ("http_503", ErrorKind.UPSTREAM_ERROR, True),
    ("reset_mid_body", ErrorKind.NETWORK, True),
    ("truncated_json", ErrorKind.MALFORMED_RESPONSE, False),
    ("not_json", ErrorKind.MALFORMED_RESPONSE, False),
]


@pytest.mark.parametrize("protocol", list(WireProtocol))
@pytest.mark.parametrize("fault, kind, retryable", TRANSPORT_CASES)
async def test_transport_faults(sim, protocol, fault, kind, retryable):
    result = await _generate(sim, f"a cat [sim fault={fault}]", protocol)
    assert not result.ok
    assert result.error.kind is kind, result.error
    assert result.error.retryable is retryable
    assert result.attempts == 1
    assert KEY not in repr(result.error.to_dict())
    if fault.startswith("http_"):
        assert result.error.detail.startswith(fault.removeprefix("http_"))


async def test_read_timeout_is_not_retried_because_it_may_be_billed(sim):
    result = await _generate(sim, "a cat [sim fault=hang]", timeout_s=1.0, max_attempts=3)
    assert result.error.kind is ErrorKind.TIMEOUT
    assert result.error.retryable is False
    assert result.attempts == 1


async def test_connection_refused_is_network_and_retryable(sim):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = await _generate(sim, "a cat", base_url=f"http://127.0.0.1:{port}", max_attempts=2)
    assert result.error.kind is ErrorKind.NETWORK
    assert result.error.retryable is True
    assert result.attempts == 2


CONTENT_CASES = [
    ("prompt_blocked", ErrorKind.PROMPT_BLOCKED, None, False),
    ("zero_candidates_token", ErrorKind.ZERO_CANDIDATES_TOKEN, None, False),
    ("no_candidates", ErrorKind.NO_CANDIDATES, None, True),
    ("no_parts", ErrorKind.NO_PARTS, None, True),
    ("inline_data_empty", ErrorKind.INLINE_DATA_EMPTY, None, True),
    ("invalid_image", ErrorKind.INVALID_IMAGE, None, False),
] + [
    (f"finish_{reason}", ErrorKind.FINISH_REASON, reason, reason in {"OTHER", "IMAGE_OTHER", "NO_IMAGE"})
    for reason in (
        "SAFETY",
        "PROHIBITED_CONTENT",
        "RECITATION",
        "MAX_TOKENS",
        "IMAGE_SAFETY",
        "IMAGE_PROHIBITED_CONTENT",
        "IMAGE_RECITATION",
        "IMAGE_OTHER",
        "NO_IMAGE",
        "OTHER",
        "WEIRD_NEW",
    )
]


@pytest.mark.parametrize("fault, kind, detail, retryable", CONTENT_CASES)
async def test_content_faults_gemini(sim, fault, kind, detail, retryable):
    result = await _generate(sim, f"a dog [sim fault={fault}]")
    assert result.error is not None and result.error.kind is kind, result
    assert result.error.retryable is retryable
    if detail:
        assert result.error.detail == detail
    assert result.error.message and result.error.message_zh


@pytest.mark.parametrize("label", ["watermark", "face_swap", "nsfw", "knowledge_cutoff", "general"])
@pytest.mark.parametrize("lang", ["en", "zh"])
@pytest.mark.parametrize("protocol", list(WireProtocol))
async def test_text_refusals_are_labelled(sim, label, lang, protocol):
    result = await _generate(sim, f"edit this [sim fault=text_{label}_{lang}]", protocol)
    assert result.error.kind is ErrorKind.TEXT_RESPONSE
    assert result.error.label == label
    assert result.error.retryable is False
    assert result.text


async def test_snake_case_answers_are_read(sim):
    result = await _generate(sim, "a fox [sim case=snake]")
    assert result.ok, result.error
    assert result.usage.candidates_tokens


@pytest.mark.parametrize(
    "fault, warning",
    [
        ("jpeg_as_png", "mime_mismatch"),
        ("wrong_size", "size_mismatch"),
        ("wrong_aspect", "aspect_mismatch"),
        ("black_image", "blank_image"),
    ],
)
async def test_output_checks_warn_and_strict_fails(sim, fault, warning):
    result = await _generate(sim, f"a lamp [sim fault={fault}]")
    assert result.ok and warning in result.warnings
    strict = await _generate(sim, f"a lamp, strict [sim fault={fault}]", strict_checks=True)
    assert not strict.ok
    assert strict.error.kind is ErrorKind.OUTPUT_CHECK and warning in strict.error.detail


async def test_jpeg_as_png_is_delivered_as_jpeg(sim):
    result = await _generate(sim, "a lamp [sim fault=jpeg_as_png]")
    image = result.images[0]
    assert image.mime == "image/jpeg" and image.declared_mime == "image/png"
    assert image.extension == "jpg"


@pytest.mark.parametrize(
    "fault",
    [
        "http_429",
        "http_500",
        "http_502",
        "http_503",
        "reset_mid_body",
        "no_candidates",
        "no_parts",
        "inline_data_empty",
        "finish_OTHER",
        "finish_IMAGE_OTHER",
        "finish_NO_IMAGE",
    ],
)
async def test_retried_kinds_succeed_when_the_fault_clears(sim, fault):
    prompt = f"a boat [sim fault={fault} times=2 retry_after=0]"
    result = await _generate(sim, prompt, max_attempts=3)
    assert result.ok, result.error
    assert result.attempts == 3


async def test_retries_stop_at_max_attempts(sim):
    prompt = "a boat [sim fault=http_503 times=10 retry_after=0]"
    result = await _generate(sim, prompt, max_attempts=3)
    assert result.error.kind is ErrorKind.UPSTREAM_ERROR
    assert result.attempts == 3
    assert sim.stats()["requests_total"] == 3


async def test_refusals_are_never_retried(sim):
    result = await _generate(sim, "a boat [sim fault=finish_SAFETY]", max_attempts=5)
    assert result.error.kind is ErrorKind.FINISH_REASON and result.attempts == 1
    assert sim.stats()["requests_total"] == 1


async def test_retry_after_is_honoured(sim):
    import time

    started = time.monotonic()
    result = await _generate(sim, "a kite [sim fault=http_429 times=1 retry_after=1]", max_attempts=2)
    assert result.ok and result.attempts == 2
    assert time.monotonic() - started >= 1.0


async def test_deadline_bounds_all_attempts(sim):
    import time

    started = time.monotonic()
    result = await _generate(
        sim, "a kite [sim fault=http_503 times=10 retry_after=5]", max_attempts=10, deadline_s=2.0
    )
    assert not result.ok
    assert time.monotonic() - started < 4.0


async def test_catalog_violation_sends_nothing(sim):
    async with ImageClient(_settings(sim)) as client:
        result = await client.generate(
            GenerationRequest(prompt="x", model="gemini-2.5-flash-image", image_size="4K")
        )
    assert result.error.kind is ErrorKind.INVALID_INPUT
    assert sim.stats()["requests_total"] == 0


async def test_missing_key_is_a_clear_error(sim):
    async with ImageClient(Settings(base_url=sim.base_url)) as client:
        result = await client.generate(GenerationRequest(prompt="x"))
    assert result.error.kind is ErrorKind.NO_API_KEY
    assert "BANANALINE_API_KEY" in result.error.message


async def test_connect_timeout_is_retryable_because_nothing_was_sent(sim):
    """A listener whose accept backlog is full drops new SYNs: the connection never opens."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(8):  # fill the backlog; later connects hang in SYN_SENT
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
        result = await _generate(
            sim, "a cat", base_url=f"http://127.0.0.1:{port}", connect_timeout_s=0.3, max_attempts=2
        )
    finally:
        for filler in fillers:
            filler.close()
        listener.close()
    assert result.error.kind is ErrorKind.TIMEOUT
    assert result.error.retryable is True
    assert result.attempts == 2


@pytest.mark.parametrize("fault, kind, detail, retryable", CONTENT_CASES)
async def test_content_faults_openai(sim, fault, kind, detail, retryable):
    """The same faults through an OpenAI-compatible relay that wraps Gemini: ``finish_reason`` is
    OpenAI's word (content_filter, length…) and ``native_finish_reason`` keeps Gemini's."""
    result = await _generate(sim, f"a dog [sim fault={fault}]", WireProtocol.OPENAI)
    assert result.error is not None and result.error.kind is kind, result
    assert result.error.retryable is retryable
    if detail:
        assert result.error.detail == detail


def test_retry_info_alone_gives_the_wait():
    """Google's RetryInfo.retryDelay is honoured when a relay sends no Retry-After header."""
    from bananaline.transport_errors import classify_http_status

    body = (
        b'{"error":{"code":429,"message":"Resource has been exhausted","status":"RESOURCE_EXHAUSTED",'
        b'"details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"7.5s"}]}}'
    )
    error = classify_http_status(429, {}, body)
    assert error.kind is ErrorKind.RATE_LIMITED and error.retry_after_s == 7.5
    assert "RESOURCE_EXHAUSTED" in error.detail
    header_wins = classify_http_status(429, {"retry-after": "3"}, body)
    assert header_wins.retry_after_s == 3.0


@pytest.mark.parametrize("protocol", list(WireProtocol))
async def test_zero_quota_429_is_quota_and_not_retried(sim, protocol):
    """Google's 429 for a tier with no quota for the model (limit: 0) carries a RetryInfo, but
    waiting never helps: ``quota``, one attempt, and a message that says what to do."""
    result = await _generate(sim, "a cat [sim fault=quota_zero retry_after=5]", protocol, max_attempts=4)
    assert not result.ok
    error = result.error
    assert error.kind is ErrorKind.QUOTA, error
    assert error.retryable is False
    assert result.attempts == 1
    assert sim.stats()["requests_total"] == 1
    assert "limit: 0" in error.detail and "gemini-3-pro-image-preview" in error.detail
    assert "billing" in error.message and "gemini-3-pro-image-preview" in error.message
    assert "结算" in error.message_zh and "配额" in error.message_zh
    assert KEY not in repr(error.to_dict())


def test_zero_quota_is_read_from_the_quota_failure_detail_alone():
    """proto3 JSON may drop the message line; a QuotaFailure with quotaValue "0" is enough."""
    from bananaline.transport_errors import classify_http_status

    body = (
        b'{"error":{"code":429,"message":"Resource has been exhausted","status":"RESOURCE_EXHAUSTED",'
        b'"details":[{"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[{"quotaMetric":'
        b'"generativelanguage.googleapis.com/generate_content_free_tier_requests","quotaDimensions":'
        b'{"model":"gemini-3-pro-image","location":"global"},"quotaValue":"0"}]},'
        b'{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"30s"}]}}'
    )
    error = classify_http_status(429, {}, body)
    assert error.kind is ErrorKind.QUOTA and error.retryable is False
    assert "gemini-3-pro-image" in error.message
    nonzero = body.replace(b'"quotaValue":"0"', b'"quotaValue":"10"')
    assert classify_http_status(429, {}, nonzero).kind is ErrorKind.RATE_LIMITED
    rate = b'{"error":{"code":429,"message":"Quota exceeded for metric: x, limit: 10, model: m"}}'
    assert classify_http_status(429, {}, rate).kind is ErrorKind.RATE_LIMITED


def test_zero_quota_inside_a_200_body_is_quota_too():
    from bananaline.protocols.content import error_from_body

    message = "* Quota exceeded for metric: generate_content_free_tier_requests, limit: 0, model: m1"
    error = error_from_body(429, "RESOURCE_EXHAUSTED", message)
    assert error.kind is ErrorKind.QUOTA and error.retryable is False and "m1" in error.message
    assert error_from_body(429, "RESOURCE_EXHAUSTED", "slow down").kind is ErrorKind.RATE_LIMITED


@pytest.mark.parametrize("protocol", list(WireProtocol))
async def test_quota_zero_fault_looks_like_google_on_the_wire(sim, protocol):
    """The simulator's ``quota_zero``: Google's body (QuotaFailure with limit 0, Help, RetryInfo)
    natively; through a relay only the message says limit 0."""
    import httpx

    model = "gemini-3-pro-image-preview"
    prompt = "a cat [sim fault=quota_zero retry_after=7]"
    if protocol is WireProtocol.GEMINI:
        url = f"{sim.base_url}/v1beta/models/{model}:generateContent"
        body: dict = {"contents": [{"role": "user", "parts": [{"text": prompt}]}]}
        headers = {"x-goog-api-key": KEY}
    else:
        url = f"{sim.base_url}/v1/chat/completions"
        body = {"model": model, "messages": [{"role": "user", "content": prompt}]}
        headers = {"authorization": f"Bearer {KEY}"}
    async with httpx.AsyncClient(trust_env=False) as http:
        response = await http.post(url, json=body, headers=headers)
    assert response.status_code == 429 and "retry-after" not in response.headers
    error = response.json()["error"]
    assert "limit: 0, model: gemini-3-pro-image-preview" in error["message"]
    if protocol is WireProtocol.GEMINI:
        assert error["status"] == "RESOURCE_EXHAUSTED"
        by_type = {detail["@type"].rsplit(".", 1)[1]: detail for detail in error["details"]}
        assert {violation["quotaValue"] for violation in by_type["QuotaFailure"]["violations"]} == {"0"}
        assert by_type["RetryInfo"]["retryDelay"] == "7s"
    else:
        assert error["type"] == "rate_limit_error"
