"""The web page at / in real headless Chromium, against a running server of the tiny model.

Every check compares the page with what POST /v1/translate answers the test itself for the
same body, so the page is tested for showing the answer, not for any particular translation.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from tests.browser import CHROMIUM_ARGS, chromium_path

sync_api = pytest.importorskip(
    "playwright.sync_api",
    reason="the Python package playwright is not installed: pip install -e '.[dev]'",
)
expect = sync_api.expect


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium (never a browser Playwright downloads: the machines cannot fetch one)."""
    executable = chromium_path()
    if executable is None:
        pytest.skip(
            "Chromium is not installed (no chromium or chromium-browser on PATH): apt-get install "
            "chromium"
        )
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    """A fresh context per test, with its own localStorage: a key typed in one test is not in the
    next."""
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(60_000)
    yield page
    context.close()


def api_translate(server, body: dict, key: str | None = None) -> tuple[int, dict]:
    """(status, JSON body) of POST /v1/translate sent by the test itself: what the page must
    show."""
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(
        f"{server.url}/v1/translate", json.dumps(body).encode(), headers
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def translate_on_page(page, text: str, *, shortcut: bool = False):
    """Type text, click Translate (or press Ctrl+Enter) and wait for the answer to be drawn.

    Returns the request the page sent; body[data-state] then says "done" or "error".
    """
    page.fill("#source", text)
    with page.expect_request("**/v1/translate") as request:
        if shortcut:
            page.press("#source", "Control+Enter")
        else:
            page.click("#translate")
    page.wait_for_selector("body[data-state=done], body[data-state=error]", state="attached")
    return request.value


def state(page) -> str:
    return page.get_attribute("body", "data-state")


def test_page_shows_the_api_translation(page, tiny_server, training_examples):
    page.goto(f"{tiny_server.url}/")
    expect(page.locator("#model")).to_have_text("tiny: en → fr")  # from /health, before translating
    page.fill("#beam-size", "99")
    page.dispatch_event("#beam-size", "change")
    expect(page.locator("#beam-size")).to_have_value("16")  # the server's --max-beam-size
    page.fill("#beam-size", "5")
    page.dispatch_event("#beam-size", "change")
    sentence = training_examples[0].source
    sent = translate_on_page(page, sentence).post_data_json
    assert sent == {"text": sentence, "beam_size": 5, "n_best": 3, "attention": True}
    assert state(page) == "done", page.text_content("#error")

    status, answer = api_translate(tiny_server, sent)
    assert status == 200, answer
    assert page.text_content("#target") == "\n".join(t["text"] for t in answer["translations"])
    assert answer["model"]["name"] in page.text_content("#model")
    expect(page.locator("#line-select")).to_be_hidden()
    expect(page.locator("#error")).to_be_hidden()


def test_heatmap_has_a_cell_per_token_pair_and_hovering_highlights_tokens(
    page, tiny_server, training_examples
):
    page.goto(f"{tiny_server.url}/")
    sent = translate_on_page(page, training_examples[1].source).post_data_json
    best = api_translate(tiny_server, sent)[1]["translations"][0]
    rows, cols = len(best["target_tokens"]), len(best["source_tokens"])

    heatmap = page.locator("#attention table")
    assert heatmap.locator("td.cell").count() == rows * cols
    assert heatmap.locator("th[data-col]").all_text_contents() == best["source_tokens"]
    assert heatmap.locator("th[data-row]").all_text_contents() == best["target_tokens"]

    # A cell: its target token (row header) and its source token (column header).
    heatmap.locator(f'td.cell[data-row="{rows - 1}"][data-col="{cols - 1}"]').hover()
    expect(heatmap.locator(f'th[data-row="{rows - 1}"]')).to_contain_class("highlight")
    expect(heatmap.locator(f'th[data-col="{cols - 1}"]')).to_contain_class("highlight")
    expect(heatmap.locator("th.highlight")).to_have_count(2)

    # A source token: its whole column and the target token that attends to it most. The last
    # column is taken: its strongest target token is rarely the first, which a bug could pick.
    column = [weights[cols - 1] for weights in best["attention"]]
    heatmap.locator(f'th[data-col="{cols - 1}"]').hover()
    expect(heatmap.locator("td.cell.highlight")).to_have_count(rows)
    expect(heatmap.locator(f'td.cell.highlight[data-col="{cols - 1}"]')).to_have_count(rows)
    expect(heatmap.locator("th[data-row].highlight")).to_have_count(1)
    expect(heatmap.locator(f'th[data-row="{column.index(max(column))}"]')).to_contain_class(
        "highlight"
    )

    # A target token: its whole row and the source token it attends to most.
    row = best["attention"][rows - 1]
    heatmap.locator(f'th[data-row="{rows - 1}"]').hover()
    expect(heatmap.locator("td.cell.highlight")).to_have_count(cols)
    expect(heatmap.locator(f'td.cell.highlight[data-row="{rows - 1}"]')).to_have_count(cols)
    expect(heatmap.locator("th[data-col].highlight")).to_have_count(1)
    expect(heatmap.locator(f'th[data-col="{row.index(max(row))}"]')).to_contain_class("highlight")


def test_nbest_lists_the_hypotheses_and_clicking_one_shows_its_attention(
    page, tiny_server, training_examples
):
    page.goto(f"{tiny_server.url}/")
    sent = translate_on_page(page, training_examples[2].source).post_data_json
    translation = api_translate(tiny_server, sent)[1]["translations"][0]
    hypotheses = translation["n_best"]
    assert len(hypotheses) == sent["n_best"]

    items = page.locator("#nbest li")
    assert items.locator(".text").all_text_contents() == [h["text"] for h in hypotheses]
    scores = [float(score) for score in items.locator(".score").all_text_contents()]
    assert scores == pytest.approx([h["score"] for h in hypotheses], abs=0.005 + 1e-9)
    expect(items.nth(0)).to_contain_class("selected")

    second = hypotheses[1]
    # else the click would show no change
    assert second["target_tokens"] != hypotheses[0]["target_tokens"]
    items.nth(1).click()
    expect(items.nth(1)).to_contain_class("selected")
    expect(items.nth(0)).not_to_contain_class("selected")
    heatmap = page.locator("#attention table")
    expect(heatmap.locator("th[data-row]")).to_have_count(len(second["target_tokens"]))
    assert heatmap.locator("th[data-row]").all_text_contents() == second["target_tokens"]
    expect(heatmap.locator("td.cell")).to_have_count(
        len(translation["source_tokens"]) * len(second["target_tokens"])
    )
    shown = [
        float(title)
        for title in heatmap.locator('td.cell[data-row="0"]').evaluate_all(
            "cells => cells.map(c => c.title)"
        )
    ]
    assert shown == pytest.approx(second["attention"][0], abs=0.0005 + 1e-9)


def test_a_server_with_a_key_shows_401_until_the_key_is_typed(
    page, tiny_server_with_key, training_examples
):
    server = tiny_server_with_key
    sentence = training_examples[3].source
    page.goto(f"{server.url}/")
    sent = translate_on_page(page, sentence).post_data_json
    assert state(page) == "error"
    status, answer = api_translate(server, sent)
    assert status == 401, answer
    expect(page.locator("#error")).to_be_visible()
    assert page.text_content("#error") == f"401: {answer['error']}"

    page.fill("#api-key", server.api_key)
    request = translate_on_page(page, sentence)
    assert request.all_headers()["authorization"] == f"Bearer {server.api_key}"
    assert state(page) == "done", page.text_content("#error")
    status, answer = api_translate(server, request.post_data_json, server.api_key)
    assert status == 200, answer
    assert page.text_content("#target") == "\n".join(t["text"] for t in answer["translations"])
    expect(page.locator("#error")).to_be_hidden()

    page.reload()  # the key is remembered
    assert page.input_value("#api-key") == server.api_key


def test_several_lines_give_one_output_line_each_blank_lines_kept(
    page, tiny_server, training_examples
):
    lines = [training_examples[4].source, "", training_examples[5].source]
    page.goto(f"{tiny_server.url}/")
    sent = translate_on_page(page, "\n".join(lines), shortcut=True).post_data_json
    assert state(page) == "done", page.text_content("#error")
    translations = api_translate(tiny_server, sent)[1]["translations"]
    texts = [t["text"] for t in translations]
    assert len(texts) == 3 and texts[1] == "" and texts[0] and texts[2]
    assert page.text_content("#target") == "\n".join(texts)

    # One entry per line, the first chosen, the blank one not choosable.
    expect(page.locator("#line-select")).to_be_visible()
    expect(page.locator("#line-select option")).to_have_count(3)
    assert page.input_value("#line-select") == "0"
    assert page.locator('#line-select option[value="1"]').is_disabled()
    page.select_option("#line-select", "2")
    expect(page.locator("#nbest li .text")).to_have_text(
        [h["text"] for h in translations[2]["n_best"]]
    )
    expect(page.locator("#attention th[data-col]")).to_have_text(translations[2]["source_tokens"])


def test_an_unreachable_server_is_named_in_the_error(page, tiny_server):
    page.goto(f"{tiny_server.url}/")
    page.route("**/v1/translate", lambda route: route.abort("connectionrefused"))
    translate_on_page(page, "Hello.")
    assert state(page) == "error"
    expect(page.locator("#error")).to_contain_text("Cannot reach the server")
    assert page.text_content("#target") == ""
