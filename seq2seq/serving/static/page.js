// The translation page: sends the source lines to POST /v1/translate, then shows the
// translations, the n-best list of one line and the attention heatmap of one hypothesis.
"use strict";

const $ = (id) => document.getElementById(id);
const form = $("form");
const source = $("source");
const beamSize = $("beam-size");
const nBest = $("n-best");
const apiKey = $("api-key");
const button = $("translate");
const errorBox = $("error");
const target = $("target");
const details = $("details");
const lineField = $("line-field");
const lineSelect = $("line-select");
const truncatedNote = $("truncated");
const nbestList = $("nbest");
const attention = $("attention");
const model = $("model");

const KEY_STORAGE = "seq2seq.api-key";
const SPACE = "\u2581"; // SentencePiece's word-start mark, shown as it is but dimmed

let translations = []; // the last answer's translations, one per input line
let shownLine = null; // the translation whose n-best list is shown
let shownWeights = []; // the heatmap's weights, rows = target tokens, to find the strongest link

// The key is remembered so that a reload does not ask for it again.
apiKey.value = localStorage.getItem(KEY_STORAGE) ?? "";
apiKey.addEventListener("input", () => {
  const key = apiKey.value.trim();
  if (key) localStorage.setItem(KEY_STORAGE, key);
  else localStorage.removeItem(KEY_STORAGE);
});

beamSize.addEventListener("change", clampSearch);
nBest.addEventListener("change", clampSearch);
clampSearch(); // the browser may restore old values on reload
showServer();

/** The model and the widest beam, from /health (open without a key), before the first translation. */
async function showServer() {
  try {
    const health = await (await fetch("health")).json();
    const info = health.models[0];
    model.textContent = `${info.name}: ${info.source_language} → ${info.target_language}`;
    beamSize.max = String(health.limits.max_beam_size);
    clampSearch();
  } catch {
    // translating will say what is wrong with the server
  }
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  translate();
});
source.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
    event.preventDefault();
    form.requestSubmit();
  }
});

lineSelect.addEventListener("change", () => showLine(Number(lineSelect.value)));
nbestList.addEventListener("click", (event) => {
  const item = event.target.closest("li");
  if (item) selectHypothesis(Number(item.dataset.index));
});

attention.addEventListener("mouseover", (event) => highlight(event.target));
attention.addEventListener("focusin", (event) => highlight(event.target));
attention.addEventListener("mouseleave", clearHighlight);
attention.addEventListener("focusout", clearHighlight);

/** Keep 1 <= n-best <= beam size <= the server's limit, so a typo is fixed here, not refused there. */
function clampSearch() {
  const beam = clamp(beamSize.valueAsNumber, 1, Number(beamSize.max), 5);
  beamSize.value = beam;
  nBest.max = beam;
  nBest.value = clamp(nBest.valueAsNumber, 1, beam, Math.min(3, beam));
}

function clamp(value, low, high, fallback) {
  return Number.isFinite(value) ? Math.min(high, Math.max(low, Math.round(value))) : fallback;
}

async function translate() {
  // One request at a time, so answers cannot arrive out of order.
  if (document.body.dataset.state === "busy") return;
  clampSearch();
  const text = source.value;
  const body = { text, beam_size: beamSize.valueAsNumber, n_best: nBest.valueAsNumber, attention: true };
  const headers = { "Content-Type": "application/json" };
  const key = apiKey.value.trim();
  if (key) headers.Authorization = `Bearer ${key}`;

  document.body.dataset.state = "busy";
  button.disabled = true;
  try {
    const answer = await post("v1/translate", body, headers);
    errorBox.hidden = true;
    errorBox.textContent = "";
    showAnswer(answer, text.split("\n"));
    document.body.dataset.state = "done";
  } catch (problem) {
    // A stale translation under a new error would look like the answer to the new text.
    clearResults();
    errorBox.textContent = problem.message;
    errorBox.hidden = false;
    document.body.dataset.state = "error";
  } finally {
    button.disabled = false;
  }
}

/** POST JSON; throws an Error whose message is "STATUS: the server's error" or says the server is unreachable. */
async function post(url, body, headers) {
  let response;
  try {
    response = await fetch(url, { method: "POST", headers, body: JSON.stringify(body) });
  } catch {
    throw new Error(`Cannot reach the server at ${location.origin}: is it running?`);
  }
  const answer = await response.json().catch(() => null);
  if (!response.ok) {
    const message = (answer && answer.error) || response.statusText || "no error message";
    throw new Error(`${response.status}: ${message}`);
  }
  if (answer === null) throw new Error(`${response.status}: the server's answer is not JSON`);
  return answer;
}

function showAnswer(answer, lines) {
  translations = answer.translations;
  target.textContent = translations.map((t) => t.text).join("\n");
  const info = answer.model;
  model.textContent = info ? `${info.name}: ${info.source_language} → ${info.target_language}` : "";

  // An empty line has no tokens: it is listed (so the numbers match the lines) but cannot be chosen.
  lineSelect.replaceChildren(
    ...translations.map((t, i) => {
      const empty = t.source_tokens.length === 0;
      const option = new Option(`${i + 1}: ${empty ? "(empty)" : shorten(lines[i] ?? "", 60)}`, String(i));
      option.disabled = empty;
      return option;
    }),
  );
  lineField.hidden = translations.length < 2;
  const first = translations.findIndex((t) => t.source_tokens.length > 0);
  details.hidden = first < 0;
  if (first >= 0) {
    lineSelect.value = String(first);
    showLine(first);
  }
}

function clearResults() {
  translations = [];
  target.textContent = "";
  details.hidden = true;
}

function shorten(text, length) {
  return text.length > length ? `${text.slice(0, length - 1)}…` : text;
}

/** The n-best list of one input line, with its best hypothesis selected. */
function showLine(index) {
  shownLine = translations[index];
  truncatedNote.hidden = !shownLine.truncated;
  nbestList.replaceChildren(
    ...hypotheses(shownLine).map((hypothesis, i) => {
      const item = document.createElement("li");
      item.dataset.index = String(i);
      // A button inside the item makes it reachable and clickable from the keyboard.
      const choose = document.createElement("button");
      choose.type = "button";
      const text = document.createElement("span");
      text.className = "text";
      text.textContent = hypothesis.text;
      const score = document.createElement("span");
      score.className = "score";
      score.textContent = hypothesis.score.toFixed(2);
      choose.append(text, score);
      item.append(choose);
      return item;
    }),
  );
  selectHypothesis(0);
}

/** A server asked for one hypothesis may send no n-best list: the translation itself is the only one. */
function hypotheses(translation) {
  return translation.n_best.length > 0 ? translation.n_best : [translation];
}

function selectHypothesis(index) {
  for (const item of nbestList.children) {
    const selected = Number(item.dataset.index) === index;
    item.classList.toggle("selected", selected);
    item.firstChild.setAttribute("aria-pressed", String(selected));
  }
  const hypothesis = hypotheses(shownLine)[index];
  drawHeatmap(shownLine.source_tokens, hypothesis.target_tokens, hypothesis.attention ?? []);
}

/** A table, not a canvas: every weight is an element that can be hovered, read aloud and tested. */
function drawHeatmap(sourceTokens, targetTokens, weights) {
  shownWeights = weights;
  if (weights.length !== targetTokens.length) {
    attention.textContent = "The server sent no attention weights for this hypothesis.";
    return;
  }
  const table = document.createElement("table");
  table.createCaption().textContent = "Attention weights: darker means the target token attended more to the source token.";
  const header = table.createTHead().insertRow();
  header.append(document.createElement("td")); // the corner above the target tokens
  sourceTokens.forEach((token, col) => header.append(tokenHeader(token, "col", col)));
  const body = table.createTBody();
  targetTokens.forEach((token, row) => {
    const tableRow = body.insertRow();
    tableRow.append(tokenHeader(token, "row", row));
    sourceTokens.forEach((_, col) => {
      const weight = weights[row][col];
      const cell = tableRow.insertCell();
      cell.className = "cell";
      cell.dataset.row = String(row);
      cell.dataset.col = String(col);
      cell.title = weight.toFixed(3);
      cell.style.backgroundColor = shade(weight);
    });
  });
  attention.replaceChildren(table);
}

/** White at weight 0 to the accent blue at 1, linearly; opaque, so the page's grey does not show through. */
function shade(weight) {
  const [r, g, b] = [29, 78, 216].map((full) => Math.round(255 - weight * (255 - full)));
  return `rgb(${r}, ${g}, ${b})`;
}

function tokenHeader(token, axis, index) {
  const header = document.createElement("th");
  header.scope = axis;
  header.dataset[axis] = String(index);
  header.tabIndex = 0; // focus highlights like hover, for keyboard users
  if (token.startsWith(SPACE)) {
    const mark = document.createElement("span");
    mark.className = "space";
    mark.textContent = SPACE;
    header.append(mark, token.slice(SPACE.length));
  } else {
    header.textContent = token;
  }
  return header;
}

/**
 * A cell lights up its two tokens; a token lights up its row or column and the token
 * on the other side that it is most strongly aligned with.
 */
function highlight(element) {
  clearHighlight();
  const spot = element.closest("[data-row], [data-col]");
  if (!spot) return;
  const { row, col } = spot.dataset;
  if (row !== undefined && col !== undefined) {
    mark(`th[data-row="${row}"], th[data-col="${col}"]`);
  } else if (col !== undefined) {
    mark(`[data-col="${col}"]`);
    mark(`th[data-row="${strongest(shownWeights.map((weights) => weights[col]))}"]`);
  } else {
    mark(`[data-row="${row}"]`);
    mark(`th[data-col="${strongest(shownWeights[row])}"]`);
  }
}

function mark(selector) {
  for (const element of attention.querySelectorAll(selector)) element.classList.add("highlight");
}

function clearHighlight() {
  for (const element of attention.querySelectorAll(".highlight")) element.classList.remove("highlight");
}

/** The index of the largest value (the first one on a tie). */
function strongest(values) {
  return values.reduce((best, value, i) => (value > values[best] ? i : best), 0);
}
