"""`seq2seq serve` over real HTTP with the tiny trained model: routes, errors, batching, keys."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch

from seq2seq.core.search import SearchSettings
from seq2seq.core.translate import Translator
from seq2seq.errors import Seq2SeqError
from seq2seq.serving.batcher import MicroBatcher
from seq2seq.serving.limits import ServeLimits
from tests.conftest import running_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def offline(tiny_checkpoint) -> Translator:
    """The same checkpoint translated in-process: what every HTTP answer must equal."""
    return Translator.from_checkpoint(tiny_checkpoint)


@pytest.fixture(scope="module")
def sources(training_examples) -> list[str]:
    return [example.source for example in training_examples[:60]]


def post(server, path: str, body, **options) -> httpx.Response:
    return httpx.post(server.url + path, json=body, timeout=60, **options)


def test_v1_translate_answers_each_line_as_offline_translation_does(tiny_server, offline, sources):
    lines = [sources[0], "", sources[1], "   ", sources[2]]
    answer = post(tiny_server, "/v1/translate", {"text": lines})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    expected = offline.translate_detailed(lines)
    assert [t["text"] for t in body["translations"]] == [t.text for t in expected]
    assert body["translations"][1] == {
        "text": "",
        "score": None,
        "target_tokens": [],
        "truncated": False,
        "source_tokens": [],
        "n_best": [],
    }
    first = body["translations"][0]
    assert first["score"] == pytest.approx(expected[0].hypotheses[0].log_probability, abs=1e-4)
    assert first["source_tokens"] == offline.source_pieces(expected[0])
    assert first["target_tokens"] == offline.target_pieces(expected[0].hypotheses[0])
    assert first["truncated"] is False and "attention" not in first
    assert [h["text"] for h in first["n_best"]] == [first["text"]]
    defaults = SearchSettings()
    assert body["model"] == {
        "name": "tiny",
        "id": 0,
        "source_language": "en",
        "target_language": "fr",
        "corpus": "tatoeba",
        "precision": offline.precision,  # both resolve the default alike
        "search": {"beam_size": 1, "n_best": 1, "alpha": defaults.alpha, "beta": defaults.beta},
    }


def test_v1_translate_splits_a_string_into_lines(tiny_server, offline, sources):
    answer = post(tiny_server, "/v1/translate", {"text": f"{sources[3]}\r\n\n{sources[4]}\n"})
    assert [t["text"] for t in answer.json()["translations"]] == offline.translate(
        [sources[3], "", sources[4]]
    )


def test_v1_translate_beam_n_best_and_attention(tiny_server, tiny_checkpoint, sources):
    answer = post(
        tiny_server,
        "/v1/translate",
        {"text": sources[5], "beam_size": 4, "n_best": 3, "attention": True},
    )
    assert answer.status_code == 200, answer.text
    (line,) = answer.json()["translations"]
    beam = Translator.from_checkpoint(tiny_checkpoint, search=SearchSettings(beam_size=4, nbest=3))
    (expected,) = beam.translate_detailed([sources[5]])
    assert [h["text"] for h in line["n_best"]] == expected.texts
    assert [h["score"] for h in line["n_best"]] == pytest.approx(
        [h.log_probability for h in expected.hypotheses], abs=1e-4
    )
    for hypothesis in line["n_best"]:
        attention = torch.tensor(hypothesis["attention"])
        assert attention.shape == (len(hypothesis["target_tokens"]), len(line["source_tokens"]))
        assert torch.allclose(attention.sum(1), torch.ones(len(attention)), atol=1e-3)
    assert line["attention"] == line["n_best"][0]["attention"]


def test_libretranslate_api(tiny_server, offline, sources):
    languages = httpx.get(tiny_server.url + "/languages")
    assert languages.json() == [{"code": "en", "name": "English", "targets": ["fr"]}]
    one = post(
        tiny_server,
        "/translate",
        {"q": sources[0], "source": "en", "target": "fr", "format": "text"},
    )
    assert one.json() == {"translatedText": offline.translate([sources[0]])[0]}
    several = post(
        tiny_server,
        "/translate",
        {"q": [sources[1], f"{sources[2]}\n{sources[3]}"], "source": "auto", "target": "fr"},
    )
    first, second, third = offline.translate(sources[1:4])
    assert several.json() == {"translatedText": [first, f"{second}\n{third}"]}
    form = httpx.post(
        tiny_server.url + "/translate",
        data={"q": sources[4], "source": "en", "target": "fr"},
        timeout=60,
    )
    assert form.json() == {"translatedText": offline.translate([sources[4]])[0]}
    alternatives = post(
        tiny_server,
        "/translate",
        {"q": sources[5], "source": "en", "target": "fr", "alternatives": 2},
    )
    assert len(alternatives.json()["alternatives"]) == 2


@pytest.mark.parametrize(
    "body, status, words",
    [
        ({"q": "Hello.", "source": "en", "target": "de"}, 400, ["en→de", "en→fr"]),
        ({"q": "Hello.", "source": "fr", "target": "en"}, 400, ["fr→en"]),
        (
            {"q": "<b>Hello.</b>", "source": "en", "target": "fr", "format": "html"},
            400,
            ["format", "html"],
        ),
        ({"source": "en", "target": "fr"}, 422, ["'q'", "missing"]),
    ],
)
def test_libretranslate_refuses_what_it_cannot_serve(tiny_server, body, status, words):
    answer = post(tiny_server, "/translate", body)
    assert answer.status_code == status
    assert all(word in answer.json()["error"] for word in words), answer.json()


def test_opennmt_api(tiny_server, offline, sources):
    answer = post(
        tiny_server,
        "/translator/translate",
        [{"src": sources[0], "id": 0}, {"src": sources[1], "id": 0}],
    )
    assert answer.status_code == 200, answer.text
    expected = offline.translate_detailed(sources[:2])
    (results,) = answer.json()
    assert [r["tgt"] for r in results] == [t.text for t in expected]
    assert [r["src"] for r in results] == sources[:2]
    assert results[0]["n_best"] == 1
    assert results[0]["pred_score"] == pytest.approx(
        expected[0].hypotheses[0].log_probability, abs=1e-4
    )
    wrong = post(tiny_server, "/translator/translate", [{"src": sources[0], "id": 7}])
    assert wrong.status_code == 400 and "'id'" in wrong.json()["error"]


def test_health_metrics_and_docs(tiny_server, sources):
    post(tiny_server, "/v1/translate", {"text": sources[:3]})
    post(tiny_server, "/v1/translate", {"text": sources[0], "beam_size": 999})
    health = httpx.get(tiny_server.url + "/health").json()
    assert (
        health["status"] == "ok"
        and health["queue_lines"] == 0
        and health["models"][0]["name"] == "tiny"
    )
    assert health["limits"] == {"max_lines": 100, "max_line_characters": 2000, "max_beam_size": 16}
    metrics = httpx.get(tiny_server.url + "/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert 'seq2seq_requests_total{code="200",route="/v1/translate"}' in text
    assert 'seq2seq_requests_total{code="422",route="/v1/translate"}' in text
    assert 'seq2seq_request_seconds_bucket{le="0.005",route="/v1/translate"}' in text
    assert "seq2seq_batch_lines_count" in text and "seq2seq_queue_lines 0.0" in text
    schema = httpx.get(tiny_server.url + "/openapi.json").json()
    assert {
        "TranslateRequest",
        "TranslateResponse",
        "LineTranslation",
        "LibreTranslateRequest",
        "OpenNMTResult",
    } <= set(schema["components"]["schemas"])
    request = schema["components"]["schemas"]["TranslateRequest"]
    assert set(request["properties"]) == {
        "text",
        "beam_size",
        "n_best",
        "alpha",
        "beta",
        "attention",
        "model",
    }
    assert httpx.get(tiny_server.url + "/docs").status_code == 200


def raw(
    server, path: str, content: bytes, content_type: str = "application/json", **headers
) -> httpx.Response:
    return httpx.post(
        server.url + path,
        content=content,
        headers={"content-type": content_type, **headers},
        timeout=60,
    )


LINE = "Tom is here."
BAD_REQUESTS = [
    # (what, path, raw body, status, words the error must name)
    ("invalid JSON", "/v1/translate", b'{"text": "Hi.",}', 400, ["not valid JSON"]),
    ("invalid JSON (LibreTranslate)", "/translate", b'{"q": ', 400, ["not valid JSON", "line 1"]),
    ("not UTF-8", "/v1/translate", b'{"text": "\xff\xfe"}', 400, ["UTF-8"]),
    ("a JSON list, not an object", "/v1/translate", b'["Hi."]', 422, ["JSON"]),
    ("text of the wrong type", "/v1/translate", b'{"text": 5}', 422, ["'text'"]),
    (
        "beam size as a string",
        "/v1/translate",
        b'{"text": "Hi.", "beam_size": "5"}',
        422,
        ["'beam_size'"],
    ),
    ("missing text", "/v1/translate", b'{"beam_size": 2}', 422, ["'text'", "missing"]),
    (
        "unknown field",
        "/v1/translate",
        b'{"text": "Hi.", "beam": 5}',
        422,
        ["unknown field 'beam'"],
    ),
    ("beam size 0", "/v1/translate", b'{"text": "Hi.", "beam_size": 0}', 422, ["'beam_size'", "1"]),
    (
        "beam size over the limit",
        "/v1/translate",
        b'{"text": "Hi.", "beam_size": 99}',
        422,
        ["'beam_size'", "at most 16"],
    ),
    (
        "n-best wider than the beam",
        "/v1/translate",
        b'{"text": "Hi.", "beam_size": 2, "n_best": 3}',
        422,
        ["'n_best'", "at most beam_size (2)"],
    ),
    ("negative alpha", "/v1/translate", b'{"text": "Hi.", "alpha": -1}', 422, ["'alpha'"]),
    (
        "unknown model",
        "/v1/translate",
        b'{"text": "Hi.", "model": "nope"}',
        400,
        ["'model'", "tiny"],
    ),
    (
        "too many lines",
        "/v1/translate",
        json.dumps({"text": [LINE] * 101}).encode(),
        413,
        ["101 lines", "100"],
    ),
    (
        "too many lines in one string",
        "/v1/translate",
        json.dumps({"text": "\n".join([LINE] * 101)}).encode(),
        413,
        ["101 lines"],
    ),
    (
        "too long a line",
        "/v1/translate",
        json.dumps({"text": "a" * 2001}).encode(),
        413,
        ["'text'", "2,001 characters", "2,000"],
    ),
    (
        "a huge body",
        "/v1/translate",
        json.dumps({"text": "a " * 600_000}).encode(),
        413,
        ["1,048,576 bytes"],
    ),
    (
        "a control character",
        "/v1/translate",
        b'{"text": ["ok", "bell\\u0007"]}',
        400,
        ["'text[1]'", "U+0007"],
    ),
    (
        "a line break in a list item",
        "/v1/translate",
        b'{"text": ["one\\ntwo"]}',
        400,
        ["'text[0]'", "line break"],
    ),
    (
        "an unpaired surrogate",
        "/v1/translate",
        b'{"text": "bad \\ud800 text"}',
        400,
        ["surrogate", "U+D800"],
    ),
    (
        "an unpaired surrogate (LibreTranslate)",
        "/translate",
        b'{"q": "\\udc00", "source": "en", "target": "fr"}',
        400,
        ["'q'", "surrogate"],
    ),
    ("OpenNMT-py body not a list", "/translator/translate", b'{"src": "Hi."}', 422, ["JSON"]),
    (
        "OpenNMT-py item without src",
        "/translator/translate",
        b'[{"id": 0}]',
        422,
        ["'[0].src'", "missing"],
    ),
]


@pytest.mark.parametrize(
    "what, path, content, status, words", BAD_REQUESTS, ids=[case[0] for case in BAD_REQUESTS]
)
def test_bad_requests_get_a_json_error_naming_the_problem(
    tiny_server, what, path, content, status, words
):
    answer = raw(tiny_server, path, content)
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/json"
    error = answer.json()["error"]
    assert all(word in error for word in words), error
    assert "Traceback" not in error


def test_a_streamed_body_over_the_limit_is_refused_while_reading(tiny_server):
    def chunks():
        for _ in range(40):
            yield b" " * 65536  # 2.5 MiB of whitespace, no Content-Length

    answer = httpx.post(
        tiny_server.url + "/v1/translate",
        content=chunks(),
        headers={"content-type": "application/json"},
        timeout=60,
    )
    assert answer.status_code == 413 and "bytes" in answer.json()["error"]


def test_unknown_routes_and_methods_are_json_errors(tiny_server):
    missing = httpx.get(tiny_server.url + "/v2/translate")
    assert missing.status_code == 404 and "/v2/translate" in missing.json()["error"]
    wrong_method = httpx.get(tiny_server.url + "/v1/translate")
    assert wrong_method.status_code == 405 and "GET" in wrong_method.json()["error"]


def test_the_server_keeps_serving_after_bad_requests(tiny_server, offline, sources):
    for _, path, content, _, _ in BAD_REQUESTS:
        raw(tiny_server, path, content)
    answer = post(tiny_server, "/v1/translate", {"text": sources[7]})
    assert answer.json()["translations"][0]["text"] == offline.translate([sources[7]])[0]
    assert tiny_server.process.poll() is None


def test_48_concurrent_requests_each_equal_the_same_request_alone(tiny_server, sources):
    settings = [{}, {"beam_size": 3, "n_best": 2}, {"attention": True}]
    requests = [
        {
            "text": sources[i % len(sources)]
            if i % 4
            else [sources[i % 50], "", sources[(i + 7) % 50]],
            **settings[i % 3],
        }
        for i in range(48)
    ]
    alone = [post(tiny_server, "/v1/translate", body).json() for body in requests]
    start = threading.Barrier(48)

    def send(body):
        start.wait()
        return post(tiny_server, "/v1/translate", body)

    with ThreadPoolExecutor(48) as pool:
        together = list(pool.map(send, requests))
    assert [answer.status_code for answer in together] == [200] * 48
    for alone_answer, answer in zip(alone, together):
        assert same_translations(alone_answer, answer.json())
    metrics = httpx.get(tiny_server.url + "/metrics").text
    batched = [
        line
        for line in metrics.splitlines()
        if line.startswith('seq2seq_batch_lines_bucket{le="1.0"}')
    ]
    count = [line for line in metrics.splitlines() if line.startswith("seq2seq_batch_lines_count")]
    # some batches held several lines
    assert float(batched[0].split()[-1]) < float(count[0].split()[-1])


def test_the_batcher_stops_gathering_once_the_last_batch_is_back(offline, sources):
    """Three clients, each sending its next request when its answer comes, with a 1-second
    gathering window: a batch goes as soon as it holds every request in flight and as many as
    the last batch did, so 30 requests take a fraction of the 10 s that always waiting out the
    window would (the last batch may still wait once for a client that has finished)."""
    batcher = MicroBatcher(offline, ServeLimits(batch_wait_ms=1000))

    async def client(first: int) -> None:
        for line in sources[first : first + 10]:
            await batcher.translate([line], SearchSettings())

    async def three_clients() -> float:
        start = time.monotonic()
        await asyncio.gather(*(client(10 * number) for number in range(3)))
        return time.monotonic() - start

    try:
        assert asyncio.run(three_clients()) < 5
    finally:
        batcher.close()


def same_translations(a: dict, b: dict) -> bool:
    """Equal texts and tokens; scores and attention equal up to float rounding between batch
    shapes."""
    for x, y in zip(a["translations"], b["translations"], strict=True):
        if {k: v for k, v in x.items() if k not in ("score", "n_best", "attention")} != {
            k: v for k, v in y.items() if k not in ("score", "n_best", "attention")
        }:
            return False
        if [h["text"] for h in x["n_best"]] != [h["text"] for h in y["n_best"]]:
            return False
        if x["score"] is not None and abs(x["score"] - y["score"]) > 1e-4:
            return False
        if "attention" in x and not torch.allclose(
            torch.tensor(x["attention"]), torch.tensor(y["attention"]), atol=1e-3
        ):
            return False
    return a["model"] == b["model"]


def test_the_api_key_is_enforced(tiny_server_with_key, sources):
    server, key = tiny_server_with_key, tiny_server_with_key.api_key
    body = {"text": sources[0]}
    assert post(server, "/v1/translate", body).status_code == 401
    wrong = post(server, "/v1/translate", body, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["error"] == "the API key is wrong"
    assert wrong.headers["www-authenticate"] == "Bearer"
    assert (
        post(server, "/v1/translate", body, headers={"Authorization": f"Bearer {key}"}).status_code
        == 200
    )
    libre = {"q": sources[0], "source": "en", "target": "fr"}
    assert post(server, "/translate", libre).status_code == 401
    assert post(server, "/translate", {**libre, "api_key": key}).status_code == 200
    assert post(server, "/translator/translate", [{"src": sources[0]}]).status_code == 401
    for path in ("/languages", "/metrics"):
        assert httpx.get(server.url + path).status_code == 401
        assert (
            httpx.get(server.url + path, headers={"Authorization": f"Bearer {key}"}).status_code
            == 200
        )
    for path in ("/health", "/", "/static/page.js"):
        assert httpx.get(server.url + path).status_code == 200, path


def test_one_model_per_language_pair(tiny_checkpoint, tmp_path, sources):
    """A second checkpoint (the tiny one relabelled en→de) is picked by pair, name or id."""
    checkpoint = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)
    checkpoint["seq2seq"]["corpus"] = {**checkpoint["seq2seq"]["corpus"], "target_lang": "de"}
    relabelled = tmp_path / "tiny-en-de" / "best.ckpt"
    relabelled.parent.mkdir()
    torch.save(checkpoint, relabelled)
    with running_server([tiny_checkpoint, relabelled], tmp_path / "server.log") as server:
        languages = httpx.get(server.url + "/languages").json()
        assert languages == [{"code": "en", "name": "English", "targets": ["fr", "de"]}]
        assert (
            post(
                server, "/translate", {"q": sources[0], "source": "en", "target": "de"}
            ).status_code
            == 200
        )
        answer = post(server, "/v1/translate", {"text": sources[0], "model": "tiny-en-de"}).json()
        assert answer["model"]["target_language"] == "de" and answer["model"]["id"] == 1
        assert (
            post(server, "/translator/translate", [{"src": sources[0], "id": 1}]).status_code == 200
        )
        mixed = post(
            server, "/translator/translate", [{"src": "a", "id": 0}, {"src": "b", "id": 1}]
        )
        assert mixed.status_code == 400


def test_two_checkpoints_of_one_pair_are_refused(tiny_checkpoint, tmp_path):
    from seq2seq.cli import main

    assert (
        main(
            [
                "serve",
                "--checkpoint",
                str(tiny_checkpoint),
                "--checkpoint",
                str(tiny_checkpoint),
                "--port",
                "1",
            ]
        )
        == 1
    )


def test_a_full_queue_answers_503_with_retry_after(tiny_checkpoint, tmp_path, sources):
    options = ["--no-batching", "--max-queue-lines", "100", "--beam-size", "5"]
    with running_server([tiny_checkpoint], tmp_path / "server.log", *options) as server:
        body = {"text": (sources * 2)[:100]}
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: post(server, "/v1/translate", body), range(8)))
        codes = [answer.status_code for answer in answers]
        assert set(codes) == {200, 503}, codes
        full = next(answer for answer in answers if answer.status_code == 503)
        assert full.headers["retry-after"] == "1" and "queue is full" in full.json()["error"]
        assert post(server, "/v1/translate", {"text": sources[0]}).status_code == 200


def test_a_request_past_its_timeout_answers_504(tiny_checkpoint, tmp_path, sources):
    with running_server(
        [tiny_checkpoint], tmp_path / "server.log", "--timeout-seconds", "0.001"
    ) as server:
        answer = post(server, "/v1/translate", {"text": sources[:50]})
        assert answer.status_code == 504 and "0.001 s" in answer.json()["error"]
        assert httpx.get(server.url + "/health").status_code == 200


def test_shutdown_finishes_the_requests_in_flight(tiny_checkpoint, tmp_path, sources):
    with running_server(
        [tiny_checkpoint], tmp_path / "server.log", "--no-batching", "--beam-size", "5"
    ) as server:
        body = {"text": (sources * 2)[:100]}
        with ThreadPoolExecutor(3) as pool:
            pending = [pool.submit(post, server, "/v1/translate", body) for _ in range(3)]
            deadline = time.monotonic() + 30
            while (
                httpx.get(server.url + "/health").json()["queue_lines"] < 200
                and time.monotonic() < deadline
            ):
                time.sleep(0.01)  # until all three are received: one translating, two queued
            server.process.send_signal(signal.SIGTERM)
            answers = [future.result() for future in pending]
        assert [answer.status_code for answer in answers] == [200] * 3
        assert all(len(answer.json()["translations"]) == 100 for answer in answers)
        # uvicorn re-raises the signal once done
        assert server.process.wait(timeout=60) in (
            0,
            -signal.SIGTERM,
        )
        assert "Application shutdown complete" in server.log.read_text()


def test_serving_and_translating_never_import_lightning(tiny_checkpoint):
    """The server and `Translator` start without Lightning and its dependencies."""
    code = (
        "import sys\n"
        "from seq2seq.serving.server import serve\n"
        "from seq2seq.core.translate import Translator\n"
        f"print(Translator.from_checkpoint({str(tiny_checkpoint)!r}).translate(['Tom is here.']))\n"
        "print(sorted(name for name in sys.modules "
        "if name.split('.')[0] in ('lightning', 'pytorch_lightning')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    translation, lightning_modules = result.stdout.splitlines()
    assert translation.startswith("['") and lightning_modules == "[]"


def test_the_key_is_checked_before_the_body(tiny_server_with_key):
    answer = raw(tiny_server_with_key, "/v1/translate", b'{"text": 5, "beam": 1}')
    assert answer.status_code == 401


@pytest.mark.parametrize(
    ("cores", "threads", "expected"), [(2, 0, 1), (1, 0, 1), (8, 0, 7), (8, 3, 3)]
)
def test_translation_leaves_a_core_to_the_event_loop_unless_told(
    monkeypatch, cores, threads, expected
):
    monkeypatch.setattr(torch, "get_num_threads", lambda: cores)
    assert ServeLimits(threads=threads).translation_threads() == expected


def test_threads_sets_the_translation_threads_and_is_checked(tiny_server_with_key):
    assert "1 torch threads" in tiny_server_with_key.log.read_text()
    with pytest.raises(Seq2SeqError, match="--threads must be 0"):
        ServeLimits(threads=-1)
