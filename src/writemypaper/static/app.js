// The page: stream an abstract from /v1/chat/completions, then mark the facts the summary does not support.
"use strict";

const $ = (id) => document.getElementById(id);
// The server's words for each kind of fact, and whether it checks facts at all: both come from /health.
let kinds = {};
let reasons = {};
let factCheck = true;
let defaultTokens = null; // the server's max_tokens for a request that sets none
let limits = { max_input_chars: 4000, max_new_tokens: 1024, min_temperature: 0, max_temperature: 2 };
let controller = null; // set while an abstract is being written; the button then stops it
let abstract = "";
const KEY_STORE = "writemypaper-api-key";
let apiKey = localStorage.getItem(KEY_STORE) || ""; // asked once, kept in this browser

function askForKey(message) {
  $("key-form").hidden = false;
  $("api-key").value = "";
  $("api-key").focus();
  setStatus(message, true);
}

function saveKey(event) {
  event.preventDefault();
  apiKey = $("api-key").value.trim();
  localStorage.setItem(KEY_STORE, apiKey);
  $("key-form").hidden = true;
  setStatus("API 키를 저장했습니다.");
}

function setStatus(message, isError = false) {
  $("status").textContent = message;
  $("status").classList.toggle("error", isError);
}

function chars(text) {
  return Array.from(text); // code points: the server's fact offsets count these
}

function updateCount() {
  const n = chars($("summary").value.normalize("NFC").trim()).length;
  $("count").textContent = `${n.toLocaleString()} / ${limits.max_input_chars.toLocaleString()}자`;
  $("count").classList.toggle("over", n > limits.max_input_chars);
}

async function loadLimits() {
  let health;
  try {
    health = await (await fetch("/health")).json();
    limits = health.limits;
    kinds = health.fact_kinds;
    reasons = health.fact_reasons || {};
    factCheck = health.fact_check;
    $("model").textContent = `모델: ${health.model}` + (factCheck ? "" : " · 사실 확인 꺼짐");
    if (health.api_key_required && !apiKey) askForKey("이 서버는 API 키가 필요합니다. 키를 입력하세요.");
  } catch {
    return; // the defaults above still let the page work; the server checks every request anyway
  }
  // Candidates are ranked by the fact check: without it, one abstract only.
  for (const option of $("candidates").options)
    option.disabled = Number(option.value) > (factCheck ? limits.max_batch_size : 1);
  // The server's own defaults, so the page writes what the API writes for a request that sets nothing.
  const tokens = $("max-tokens");
  tokens.max = limits.max_new_tokens;
  defaultTokens = health.defaults.max_tokens;
  tokens.value = defaultTokens;
  const t = $("temperature");
  t.min = limits.min_temperature;
  t.max = limits.max_temperature;
  t.value = health.defaults.temperature;
  $("temperature-value").textContent = Number(t.value).toFixed(2);
  updateCount();
}

function explain(status, body) {
  const error = (body && body.error) || {};
  if (status === 429) return "서버가 바쁩니다. 잠시 후 다시 시도하세요.";
  if (status === 401) return apiKey ? "API 키가 맞지 않습니다. 다시 입력하세요." : "이 서버는 API 키가 필요합니다. 키를 입력하세요.";
  if (error.code === "context_length_exceeded")
    return `요약이 너무 깁니다. ${limits.max_input_chars.toLocaleString()}자 이하로 줄여 주세요.`;
  return error.message ? `요청을 처리할 수 없습니다: ${error.message}` : `서버 오류 (${status})`;
}

async function post(url, payload, signal) {
  const headers = { "Content-Type": "application/json" };
  if (apiKey) headers.Authorization = `Bearer ${apiKey}`;
  const response = await fetch(url, { method: "POST", headers, body: JSON.stringify(payload), signal });
  if (!response.ok) {
    const body = await response.json().catch(() => null);
    const message = explain(response.status, body);
    if (response.status === 401) askForKey(message);
    throw new Error(message);
  }
  return response;
}

// The data of each server-sent event, as text.
async function* events(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).replace(/^ /, ""));
      if (data.length) yield data.join("\n");
    }
  }
}

// The length as journals count it (공백 포함): the server's count where it sent one (text.char_count), else the same
// rule here: NFC, whitespace runs as one space, ends trimmed, code points.
function lengthNote(text, count) {
  const n = count ?? chars(text.normalize("NFC").split(/\s+/).filter(Boolean).join(" ")).length;
  const target = Number($("target-chars").value);
  return `${n.toLocaleString()}자` + (target ? ` (목표 ${target.toLocaleString()}자)` : "");
}

function report(check) {
  const n = check.unsupported.length;
  const details = `요약 내용 반영률 ${Math.round(check.coverage * 100)}% · 길이 ${lengthNote(abstract, check.chars)}`;
  $("facts").textContent = n
    ? `요약에 없는 숫자·용어 ${n}개를 표시했습니다. 원문과 대조해 확인하세요. (${details})`
    : `요약에 없는 숫자·용어는 찾지 못했습니다. (${details})`;
}

function render(text, unsupported) {
  const cs = chars(text);
  const out = $("output");
  out.replaceChildren();
  let at = 0;
  for (const fact of unsupported) {
    out.append(cs.slice(at, fact.start).join(""));
    const mark = document.createElement("mark");
    mark.textContent = cs.slice(fact.start, fact.end).join("");
    mark.title = `${reasons[fact.reason] || reasons.absent || "요약에 없는"} ${kinds[fact.kind] || "사실"}: 확인하세요`;
    out.append(mark);
    at = fact.end;
  }
  out.append(cs.slice(at).join(""));
}

async function highlight(summary, text) {
  if (!factCheck) { // the server runs without the fact check: nothing to mark, the length only
    $("facts").textContent = `길이 ${lengthNote(text)}`;
    return;
  }
  setStatus("요약과 대조하는 중…");
  const check = await (await post("/v1/writemypaper/check", { summary, text })).json();
  abstract = check.text;
  render(check.text, check.unsupported);
  report(check);
}

// Candidates are ranked once written in full, so they come in one response, with the fact check of the best.
async function writeBest(request, candidates, signal) {
  setStatus(`후보 ${candidates}편을 쓰고 사실 확인으로 고르는 중…`);
  const response = await post("/v1/chat/completions", { ...request, candidates }, signal);
  const choice = (await response.json()).choices[0];
  const text = choice.message.content;
  abstract = text;
  render(text, choice.writemypaper.unsupported);
  report(choice.writemypaper);
  return { text, finish: choice.finish_reason };
}

// Said after "완료." when the model was stopped by the length limit rather than ending the abstract itself.
function cutNote(finish, maxTokens) {
  const cut = finish === "length";
  $("output").classList.toggle("cut", cut);
  const limit = maxTokens ? `(${maxTokens.toLocaleString()} 토큰)` : "";
  return cut ? ` 길이 제한${limit}에서 잘렸습니다. 길이를 늘려 다시 쓰세요.` : "";
}

async function write(event) {
  event.preventDefault();
  if (controller) {
    controller.abort();
    return;
  }
  const summary = $("summary").value;
  controller = new AbortController();
  abstract = "";
  $("write").textContent = "중지";
  $("copy").disabled = true;
  $("result").hidden = false;
  $("facts").textContent = "";
  const out = $("output");
  out.textContent = "";
  out.classList.add("writing");
  setStatus("쓰는 중…");
  out.classList.remove("cut");
  let text = "";
  let finish = null;
  const request = {
    messages: [{ role: "user", content: summary }], temperature: Number($("temperature").value),
    grounded: $("grounded").checked,
  };
  // An empty length leaves it to the server's default; an empty target, to the model.
  if ($("max-tokens").value) request.max_tokens = Number($("max-tokens").value);
  if ($("target-chars").value) request.target_chars = Number($("target-chars").value);
  const maxTokens = request.max_tokens || defaultTokens;
  const candidates = Number($("candidates").value);
  try {
    if (candidates > 1) {
      if (request.temperature === 0) throw new Error("후보를 여럿 쓰려면 온도가 0보다 커야 합니다.");
      ({ text, finish } = await writeBest(request, candidates, controller.signal));
      setStatus(`완료. 후보 ${candidates}편 중 요약에 가장 충실한 초록입니다.` + cutNote(finish, maxTokens));
      return;
    }
    const response = await post("/v1/chat/completions", { ...request, stream: true }, controller.signal);
    for await (const data of events(response.body)) {
      if (data === "[DONE]") break;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(`생성 중 오류: ${chunk.error.message}`);
      const piece = chunk.choices.length ? chunk.choices[0].delta.content : "";
      if (chunk.choices.length && chunk.choices[0].finish_reason) finish = chunk.choices[0].finish_reason;
      if (piece) {
        text += piece;
        out.textContent = text;
      }
    }
    out.classList.remove("writing");
    abstract = text;
    await highlight(summary, text);
    setStatus("완료." + cutNote(finish, maxTokens));
  } catch (error) {
    abstract = text;
    setStatus(error.name === "AbortError" ? "중지했습니다." : error.message, error.name !== "AbortError");
  } finally {
    out.classList.remove("writing");
    controller = null;
    $("write").textContent = "초록 쓰기";
    $("copy").disabled = !abstract;
  }
}

async function copy() {
  try {
    await navigator.clipboard.writeText(abstract);
  } catch {
    const range = document.createRange(); // no clipboard API (older browsers): select the text instead
    range.selectNodeContents($("output"));
    getSelection().removeAllRanges();
    getSelection().addRange(range);
    document.execCommand("copy");
  }
  setStatus("초록을 복사했습니다.");
}

$("form").addEventListener("submit", write);
$("key-form").addEventListener("submit", saveKey);
$("copy").addEventListener("click", copy);
$("summary").addEventListener("input", updateCount);
$("temperature").addEventListener("input", (e) => {
  $("temperature-value").textContent = Number(e.target.value).toFixed(2);
});
loadLimits();
