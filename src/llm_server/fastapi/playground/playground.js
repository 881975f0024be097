// The llm-server playground: forms from each program's request schema, streamed runs, two
// runs side by side, a short history in this browser. Talks only to {base}/api/*.
const base = document.body.dataset.base;
const $ = (selector, root = document) => root.querySelector(selector);
const HISTORY_KEY = "llm-server-playground-history";
let catalog = { programs: [], models: [] };

function element(tag, props = {}, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  for (const child of children) node.append(child);
  return node;
}

function status(text) { $("#status").textContent = text; }

async function loadCatalog() {
  const response = await fetch(`${base}/api/catalog`);
  if (!response.ok) throw new Error(await errorMessage(response));
  catalog = await response.json();
  const select = $("#program");
  select.replaceChildren();
  for (const program of catalog.programs) {
    const option = element("option", { value: program.id, textContent: program.name });
    if (program.unavailable) {
      option.disabled = true;
      option.textContent += ` (not runnable here: ${program.unavailable})`;
    }
    select.append(option);
  }
  const first = catalog.programs.find((p) => !p.unavailable);
  if (!first) { status("No program can run here."); return; }
  select.value = first.id;
  for (const side of document.querySelectorAll(".side")) {
    const models = $("select[name=model]", side);
    models.replaceChildren(...catalog.models.map((m) => element("option", {
      value: m.id, textContent: m.breaker && m.breaker !== "closed" ? `${m.id} (breaker ${m.breaker})` : m.id,
    })));
  }
  showProgram();
  status(`${catalog.programs.length} program(s), ${catalog.models.length} model(s).`);
}

function currentProgram() { return catalog.programs.find((p) => p.id === $("#program").value); }

function showFigures(figures) {
  // The served version and a running canary side by side (requests since start or canary).
  const table = $("#figures");
  const sides = figures ? [["Served", figures.stable], ["Canary", figures.canary]] : [];
  const shown = sides.filter(([, side]) => side);
  table.hidden = shown.length === 0;
  const percent = (rate) => `${(100 * rate).toFixed(1)} %`;
  const rows = [
    ["Version", (s) => s.version + (s.weight ? ` (${percent(s.weight)} of traffic)` : "")],
    ["Requests", (s) => String(s.requests)],
    ["Errors", (s) => percent(s.error_rate)],
    ["Parse failures", (s) => percent(s.parse_failure_rate)],
    ["p50 / p95 latency", (s) => `${s.latency_ms.p50 ?? "-"} / ${s.latency_ms.p95 ?? "-"} ms`],
    ["Tokens per request", (s) => String(s.tokens_per_request ?? "-")],
    ["Cost per request", (s) => (s.cost_per_request_usd == null ? "-" : `$${s.cost_per_request_usd}`)],
  ];
  table.replaceChildren(
    element("tr", {}, element("th", { textContent: "Figure" }), ...shown.map(([label]) => element("th", { textContent: label }))),
    ...rows.map(([label, cell]) => element("tr", {}, element("th", { textContent: label }),
      ...shown.map(([, side]) => element("td", { textContent: cell(side) })))),
  );
}

function showProgram() {
  const program = currentProgram();
  $("#description").textContent = program.description || "";
  showFigures(program.figures);
  for (const side of document.querySelectorAll(".side")) {
    const versions = $("select[name=version]", side);
    versions.replaceChildren(...program.versions.map((v) => element("option", {
      value: v, textContent: v === program.version ? `${v} (served)` : v,
    })));
    versions.value = program.version;
  }
  const fields = $("#fields");
  fields.replaceChildren(element("legend", { textContent: "Inputs" }));
  const required = new Set(program.schema.required || []);
  for (const [name, spec] of Object.entries(program.schema.properties)) {
    fields.append(fieldFor(name, spec, required.has(name), choicesOf(program, name)));
  }
}

function choicesOf(program, name) { return (program.choices || {})[name]; }

function kindOf(spec, choices) {
  if (choices) return "choice";
  const options = spec.anyOf ? spec.anyOf.filter((s) => s.type !== "null") : [spec];
  const main = options[0] || {};
  if (main.type === "array" && (main.items || {}).type === "string") return "lines";
  if (["string", "integer", "number", "boolean"].includes(main.type)) return main.type;
  return "json";
}

function fieldFor(name, spec, required, choices) {
  const kind = kindOf(spec, choices);
  const id = `input-${name}`;
  const hint = { lines: "one item per line", json: "JSON", integer: "a whole number" }[kind];
  const label = element("label", { htmlFor: id, textContent: spec.title || name });
  let control;
  if (kind === "boolean") {
    control = element("input", { type: "checkbox", id, name });
  } else if (kind === "choice") {
    // Option values are indexes into the choices, so each is sent as its JSON type.
    control = element("select", { id, name, required });
    if (!required) control.append(element("option", { value: "", textContent: "(none)" }));
    choices.forEach((choice, index) => control.append(element("option", { value: String(index), textContent: String(choice) })));
  } else if (kind === "integer" || kind === "number") {
    control = element("input", { type: "number", id, name, step: kind === "integer" ? "1" : "any", required });
  } else {
    control = element("textarea", { id, name, required, rows: kind === "string" ? 3 : 4 });
  }
  control.dataset.kind = kind;
  const wrapper = element("div", { className: "field" }, label, control);
  const text = [spec.description, hint, required ? "" : "optional"].filter(Boolean).join(" · ");
  if (text) wrapper.append(element("small", { textContent: text }));
  return wrapper;
}

function collectInputs() {
  const inputs = {};
  for (const control of document.querySelectorAll("#fields [data-kind]")) {
    const kind = control.dataset.kind;
    if (kind === "boolean") { inputs[control.name] = control.checked; continue; }
    const value = control.value.trim();
    if (value === "") continue;
    if (kind === "integer") inputs[control.name] = Number.parseInt(value, 10);
    else if (kind === "number") inputs[control.name] = Number(value);
    else if (kind === "lines") inputs[control.name] = value.split("\n").map((s) => s.trim()).filter(Boolean);
    else if (kind === "json") inputs[control.name] = JSON.parse(value);
    else if (kind === "choice") inputs[control.name] = choicesOf(currentProgram(), control.name)[Number(value)];
    else inputs[control.name] = control.value;
  }
  return inputs;
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    if (body && body.error) return `${body.error.type}: ${body.error.message}`;
  } catch { /* not JSON */ }
  return `HTTP ${response.status}`;
}

function resultCard(side, title) {
  const card = $(`.result[data-side=${side}]`);
  card.hidden = false;
  card.replaceChildren(element("h2", { textContent: title }));
  const outputs = {};
  for (const name of currentProgram().outputs) {
    outputs[name] = element("pre");
    card.append(element("h3", { textContent: name }), outputs[name]);
  }
  return { card, outputs };
}

function showError(card, message) {
  card.append(element("p", { className: "error", role: "alert", textContent: message }));
}

function answeredBy(envelope) {
  const model = (envelope.metadata || {}).model || {};
  return model.requested_id ? `${model.id} (fallback from ${model.requested_id})` : model.id;
}

function showEnvelope(card, outputs, envelope, timing) {
  for (const [name, value] of Object.entries(envelope.data || {})) {
    if (outputs[name]) outputs[name].textContent = typeof value === "string" ? value : JSON.stringify(value, null, 1);
  }
  const meta = envelope.metadata || {};
  const perf = meta.performance || {};
  const tokens = perf.tokens || {};
  const rows = [
    ["version", (meta.program || {}).version],
    ["model", answeredBy(envelope)],
    ["tokens", tokens.total === undefined ? "—" : `${tokens.input} in + ${tokens.output} out = ${tokens.total} (${tokens.method})`],
    ["cost", tokens.cost_usd === null || tokens.cost_usd === undefined ? "unknown" : `$${Number(tokens.cost_usd).toFixed(6)}`],
    ["first token", timing.first === null ? "—" : `${timing.first.toFixed(0)} ms`],
    ["total", `${timing.total.toFixed(0)} ms`],
    ["trace id", perf.trace_id || "—"],
    ["execution id", meta.execution_id || "—"],
  ];
  const table = element("table", { className: "meta" });
  for (const [label, value] of rows) {
    table.append(element("tr", {}, element("th", { scope: "row", textContent: label }), element("td", { textContent: value ?? "—" })));
  }
  card.append(table);
}

async function runSide(side, inputs, stream) {
  const fieldset = $(`.side[data-side=${side}]`);
  const version = $("select[name=version]", fieldset).value;
  const model = $("select[name=model]", fieldset).value;
  const program = currentProgram();
  const title = (on) => `${program.name} ${version} on ${on}`;
  const { card, outputs } = resultCard(side, title(model));
  const started = performance.now();
  let first = null;
  const record = { at: new Date().toISOString(), program: program.id, version, model, inputs, ok: false };
  try {
    const response = await fetch(`${base}/api/run/${encodeURIComponent(program.id)}`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ inputs, model_id: model, version, stream }),
    });
    if (!response.ok) throw new Error(await errorMessage(response));
    let envelope = null;
    if ((response.headers.get("content-type") || "").startsWith("text/event-stream")) {
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const frame = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const event = (frame.match(/^event: ?(.*)$/m) || [])[1];
          const data = frame.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.replace(/^data: ?/, "")).join("\n");
          if (!event || !data) continue;
          const payload = JSON.parse(data);
          if (event === "delta") {
            if (first === null) first = performance.now() - started;
            if (outputs[payload.field]) outputs[payload.field].textContent += payload.text;
          } else if (event === "done") {
            envelope = payload;
          } else if (event === "error") {
            throw new Error(`${payload.error.type}: ${payload.error.message}`);
          }
        }
      }
    } else {
      envelope = await response.json();
    }
    if (!envelope) throw new Error("the stream ended without an answer");
    showEnvelope(card, outputs, envelope, { first, total: performance.now() - started });
    record.answered = answeredBy(envelope) || model;
    $("h2", card).textContent = title(record.answered);
    record.ok = true;
    record.tokens = ((envelope.metadata || {}).performance || {}).tokens || null;
  } catch (error) {
    showError(card, error.message);
    record.error = error.message;
  }
  remember(record);
}

function history() {
  try { return JSON.parse(localStorage.getItem(HISTORY_KEY)) || []; } catch { return []; }
}

function remember(record) {
  const items = [record, ...history()].slice(0, 20);
  localStorage.setItem(HISTORY_KEY, JSON.stringify(items));
  showHistory();
}

function showHistory() {
  const list = $("#history");
  list.replaceChildren(...history().map((item) => {
    const label = `${item.at.slice(11, 19)} ${item.program} ${item.version} on ${item.answered || item.model}: ${item.ok ? "ok" : item.error}`;
    const button = element("button", { type: "button", textContent: label, title: "Put these inputs back in the form" });
    button.addEventListener("click", () => restore(item));
    return element("li", {}, button);
  }));
}

function restore(item) {
  $("#program").value = item.program;
  showProgram();
  for (const control of document.querySelectorAll("#fields [data-kind]")) {
    const value = item.inputs[control.name];
    if (value === undefined) continue;
    if (control.dataset.kind === "boolean") control.checked = Boolean(value);
    else if (control.dataset.kind === "choice") control.value = String(choicesOf(currentProgram(), control.name).indexOf(value));
    else if (Array.isArray(value) && control.dataset.kind === "lines") control.value = value.join("\n");
    else control.value = typeof value === "string" || typeof value === "number" ? value : JSON.stringify(value);
  }
}

$("#program").addEventListener("change", showProgram);
$("#compare").addEventListener("change", (event) => {
  $(".side[data-side=b]").hidden = !event.target.checked;
  if (!event.target.checked) $(".result[data-side=b]").hidden = true;
});
$("#clear-history").addEventListener("click", () => { localStorage.removeItem(HISTORY_KEY); showHistory(); });
let running = false;
$("#form").addEventListener("submit", async (event) => {
  event.preventDefault();
  if (running) return;
  let inputs;
  try { inputs = collectInputs(); } catch (error) { status(`Inputs: ${error.message}`); return; }
  // aria-disabled, not disabled: a disabled button loses the focus (it falls to <body>), so
  // keyboard and screen-reader users would have to find their way back after every run.
  const button = $("#run");
  running = true;
  button.setAttribute("aria-disabled", "true");
  $("#results").setAttribute("aria-busy", "true"); // a screen reader reads the results once, at the end
  status("Running…");
  const sides = $("#compare").checked ? ["a", "b"] : ["a"];
  if (sides.length === 1) $(".result[data-side=b]").hidden = true;
  try {
    await Promise.all(sides.map((side) => runSide(side, inputs, $("#stream").checked)));
  } finally {
    running = false;
    button.removeAttribute("aria-disabled");
    $("#results").setAttribute("aria-busy", "false");
  }
  status("Done.");
});

showHistory();
loadCatalog().catch((error) => status(`Could not load the programs: ${error.message}`));
