"use strict";
// The labelling page: a class set of essays, each shown with its elements marked; the teacher's
// corrections; downloads; a print view; saved class sets. Every node is built with textContent,
// so an essay's text is never parsed as HTML. Everything comes from this server (/api/...).
(function () {
  const $ = (id) => document.getElementById(id);
  const TYPES = ["Lead", "Position", "Claim", "Counterclaim", "Rebuttal", "Evidence",
    "Concluding Statement"];
  const DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document";
  const SCHEMA_VERSION = 1;

  let info = null; // /api/info, or null if it could not be read
  let token = null;
  let pending = []; // essays from opened files: {name, text}
  // The class set on screen: essays with the model's elements and the teacher's corrections.
  let set = null; // {name, stage, savedId, essays: [{name, text, elements, summary, corrected, csummary}]}
  let current = -1; // the essay shown
  let selected = -1; // the element open in the editor (index into the essay's labels)

  // --- small helpers ---------------------------------------------------------------------------
  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function status(text, isError) {
    $("status").textContent = text;
    $("status").className = isError ? "error" : "";
  }

  function typeClass(type) {
    return "t-" + type.toLowerCase().replace(/ /g, "-");
  }

  class ApiFailure extends Error {}

  // fetch + JSON + one readable message for every way it can fail (never "TypeError").
  async function api(path, options) {
    const opts = Object.assign({}, options || {});
    opts.headers = Object.assign({}, opts.headers || {});
    if (token) opts.headers["Authorization"] = "Bearer " + token;
    let res;
    try {
      res = await fetch(path, opts);
    } catch (err) {
      throw new ApiFailure("Could not reach the server (it may have stopped, or the network is " +
        "down). Start it again with discourse-rl serve, then reload this page.");
    }
    let body = null;
    try {
      body = await res.json();
    } catch (err) {
      body = null;
    }
    if (res.status === 401) {
      $("token-box").hidden = false;
      throw new ApiFailure((body && body.error) || "This server needs its access token.");
    }
    if (!res.ok) {
      const why = body && typeof body.error === "string" ? body.error : "no explanation given";
      throw new ApiFailure("The server answered " + res.status + ": " + why);
    }
    if (body === null) throw new ApiFailure("The server's answer was not readable (HTTP " + res.status + ").");
    return body;
  }

  function postJSON(path, payload, method) {
    return api(path, {
      method: method || "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(payload),
    });
  }

  function download(filename, text, mime) {
    const blob = new Blob([text], { type: mime });
    const a = el("a", { href: URL.createObjectURL(blob), download: filename }, filename);
    document.body.append(a);
    a.click();
    // Out of the page at once (a link left in it would be read out, and is a bare link to a
    // blob); the URL lives a moment longer for the download to start.
    a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 1000);
  }

  function words(text) {
    // [start, end) of each word of text.split() (whitespace-separated), as the server counts.
    const out = [];
    const re = /\S+/g;
    let m;
    while ((m = re.exec(text)) !== null) out.push([m.index, m.index + m[0].length]);
    return out;
  }

  // --- scores and definitions ------------------------------------------------------------------
  function stageScores() {
    return info && info.scores ? info.scores[info.stage] : null;
  }

  function reliability(f1) {
    if (f1 === null || f1 === undefined || !info) return "unknown";
    if (f1 < info.thresholds.guess_below) return "a guess";
    return f1 >= info.thresholds.reliable_from ? "reliable" : "fair";
  }

  function findsAbout(type) {
    const s = stageScores();
    if (!s || !(type in (s.recall || {}))) return null;
    const tenths = Math.round(10 * s.recall[type]);
    if (tenths >= 10) return "finds nearly all of them";
    if (tenths <= 0) return "finds almost none of them";
    return "finds about " + tenths + " in 10";
  }

  function renderLegend() {
    const ul = $("legend");
    ul.replaceChildren();
    const s = stageScores();
    for (const type of TYPES) {
      const li = el("li", { "data-type": type });
      li.append(el("span", { class: "swatch " + typeClass(type), "aria-hidden": "true" }));
      li.append(el("strong", {}, type));
      if (info && info.definitions && info.definitions[type]) {
        li.append(": " + info.definitions[type] + ".");
      }
      const f1 = s && type in s.per_type ? s.per_type[type] : null;
      if (f1 !== null) {
        const word = reliability(f1);
        const line = el("span", { class: "score" });
        line.append("Held-out F1 " + f1.toFixed(2) + ": ");
        line.append(el("span", word === "a guess" ? { class: "guess" } : {}, word));
        const finds = findsAbout(type);
        if (finds) line.append("; the model " + finds + ".");
        li.append(" ", line);
      }
      ul.append(li);
    }
  }

  // --- the class set ---------------------------------------------------------------------------
  function labelsOf(essay) {
    return essay.corrected !== null ? essay.corrected : essay.elements;
  }

  function summaryOf(essay) {
    return essay.corrected !== null && essay.csummary ? essay.csummary : essay.summary;
  }

  function renderTable() {
    const table = $("set-table");
    const head = el("tr", {});
    head.append(el("th", { scope: "col" }, "Essay"), el("th", { scope: "col" }, "Words"));
    for (const type of TYPES) {
      const th = el("th", { scope: "col", class: "count" });
      th.append(el("span", { class: "swatch " + typeClass(type), "aria-hidden": "true" }), type);
      head.append(th);
    }
    head.append(el("th", { scope: "col" }, "Not found"), el("th", { scope: "col" }, "Unsure"),
      el("th", { scope: "col" }, "Corrected"));
    table.tHead.replaceChildren(head);
    const body = table.tBodies[0];
    body.replaceChildren();
    set.essays.forEach((essay, i) => {
      const s = summaryOf(essay);
      const tr = el("tr", { "data-index": String(i) });
      if (i === current) tr.className = "current";
      const th = el("th", { scope: "row" });
      const open = el("button", { type: "button", class: "open-essay" }, essay.name);
      if (i === current) open.setAttribute("aria-current", "true");
      open.addEventListener("click", (ev) => { ev.stopPropagation(); showEssay(i, true); });
      th.append(open);
      tr.append(th, el("td", {}, String(essay.text.split(/\s+/).filter(Boolean).length)));
      for (const type of TYPES) tr.append(el("td", { class: "count" }, String(s.counts[type])));
      tr.append(el("td", {}, s.not_found.join(", ") || "—"));
      tr.append(el("td", {}, String(s.unsure.length)));
      tr.append(el("td", {}, essay.corrected !== null ? "yes" : ""));
      tr.addEventListener("click", () => showEssay(i, true));
      body.append(tr);
    });
    $("classset").hidden = false;
  }

  function showEssay(i, focusTitle) {
    current = i;
    selected = -1;
    renderTable();
    renderSummary();
    renderEssay();
    if (focusTitle) {
      $("essay-title").setAttribute("tabindex", "-1");
      $("essay-title").focus();
    }
  }

  function renderSummary() {
    const essay = set.essays[current];
    const s = summaryOf(essay);
    const labels = labelsOf(essay);
    $("essay-title").textContent = essay.name + (essay.corrected !== null ? " (corrected)" : "");
    const box = $("summary-body");
    box.replaceChildren();
    const present = TYPES.filter((t) => s.counts[t] > 0);
    box.append(el("p", {}, labels.length + " elements in " + words(essay.text).length +
      " words; types present: " + (present.join(", ") || "none") + "."));
    if (s.missing.length) {
      box.append(el("h3", {}, "Not found"));
      const ul = el("ul", { class: "missing" });
      for (const line of s.missing) ul.append(el("li", {}, line));
      box.append(ul);
    } else {
      box.append(el("p", {}, "Every element type was found and every Claim has Evidence after it."));
    }
    if (s.unsure.length) {
      box.append(el("h3", {}, "The model is unsure of"));
      const ul = el("ul", { class: "unsure" });
      const shown = 8;
      for (const i of s.unsure.slice(0, shown)) {
        const e = labels[i];
        const ws = e.text.split(/\s+/);
        const short = ws.slice(0, 10).join(" ") + (ws.length > 10 ? " …" : "");
        ul.append(el("li", {}, e.type + " (confidence " + e.confidence.toFixed(2) + "): “" + short + "”"));
      }
      if (s.unsure.length > shown) {
        ul.append(el("li", {}, "… and " + (s.unsure.length - shown) +
          " more (dashed outlines in the essay below)"));
      }
      box.append(ul);
    }
    $("summary").hidden = false;
  }

  function tipText(e, unsure) {
    if (e.changed === "added") return e.type + " · marked by you";
    const conf = e.confidence === null || e.confidence === undefined ? "" :
      " · confidence " + e.confidence.toFixed(2) + (unsure ? " (unsure)" : "");
    const was = e.changed === "type" ? " · the model said " + e.model_type : "";
    return e.type + conf + was;
  }

  // The essay with each element marked: a tag with its type, a tip with its confidence shown on
  // focus, hover and tap, and text spans that remember their offset (for marking a selection).
  function markEssay(container, essay, interactive) {
    container.replaceChildren();
    const labels = labelsOf(essay);
    const unsure = new Set(summaryOf(essay).unsure);
    const text = essay.text;
    const order = labels.map((e, i) => [e, i]).sort((a, b) => a[0].char_start - b[0].char_start);
    let pos = 0;
    const plain = (from, to) => {
      if (to > from) container.append(el("span", { "data-at": String(from) }, text.slice(from, to)));
    };
    for (const [e, i] of order) {
      plain(pos, e.char_start);
      const cls = "element " + typeClass(e.type) + (unsure.has(i) ? " unsure" : "") +
        (e.changed ? " changed" : "");
      const attrs = { class: cls, "data-type": e.type, "data-index": String(i) };
      if (e.confidence !== null && e.confidence !== undefined) {
        attrs["data-confidence"] = e.confidence.toFixed(2);
      }
      if (interactive) Object.assign(attrs, { tabindex: "0", role: "button", title: tipText(e, unsure.has(i)) });
      const mark = el("mark", attrs);
      mark.append(el("span", { class: "tag" }, e.type + (unsure.has(i) ? " ?" : "")));
      mark.append(el("span", { "data-at": String(e.char_start) }, text.slice(e.char_start, e.char_end)));
      if (interactive) mark.append(el("span", { class: "tip" }, tipText(e, unsure.has(i))));
      container.append(mark);
      pos = Math.max(pos, e.char_end);
    }
    plain(pos, text.length);
  }

  function renderEssay() {
    const view = $("essay-view");
    markEssay(view, set.essays[current], true);
    $("editor").hidden = true;
    $("result").hidden = false;
  }

  function openEditor(i, mark) {
    const essay = set.essays[current];
    const e = labelsOf(essay)[i];
    selected = i;
    for (const m of document.querySelectorAll("#essay-view mark.open")) m.classList.remove("open");
    if (mark) mark.classList.add("open");
    const unsure = summaryOf(essay).unsure.includes(i);
    const ws = e.text.split(/\s+/);
    $("editor-info").textContent = tipText(e, unsure) + " — words " + (e.word_start + 1) + "–" +
      e.word_end + ": “" + ws.slice(0, 12).join(" ") + (ws.length > 12 ? " …" : "") + "”";
    $("editor-type").value = e.type;
    $("editor").hidden = false;
  }

  // --- corrections -----------------------------------------------------------------------------
  function startCorrecting(essay) {
    if (essay.corrected === null) essay.corrected = essay.elements.map((e) => Object.assign({}, e));
    return essay.corrected;
  }

  // Re-summarise the corrected essay, show it again, and put the keyboard focus back on the
  // element at `wordStart` (or the editor's nearest control) so that a keyboard user stays put.
  async function afterCorrection(message, wordStart) {
    const essay = set.essays[current];
    essay.corrected.sort((a, b) => a.word_start - b.word_start);
    try {
      essay.csummary = await postJSON("/api/summary", { elements: essay.corrected });
    } catch (err) {
      status(err.message, true);
    }
    showEssay(current, false);
    status(message, false);
    const k = essay.corrected.findIndex((e) => e.word_start === wordStart);
    const mark = k < 0 ? null : document.querySelector('#essay-view mark[data-index="' + k + '"]');
    if (mark) mark.focus();
    else $("add-from").focus();
  }

  function applyType() {
    if (selected < 0) return;
    const labels = startCorrecting(set.essays[current]);
    const e = labels[selected];
    const type = $("editor-type").value;
    if (type === e.type) return;
    const original = e.changed === "type" ? e.model_type : e.type;
    if (e.changed !== "added") {
      if (type === original) {
        delete e.changed;
        delete e.model_type;
      } else {
        e.changed = "type";
        e.model_type = original;
      }
    }
    e.type = type;
    afterCorrection("Changed to " + type + ".", e.word_start);
  }

  function removeSelected() {
    if (selected < 0) return;
    const labels = startCorrecting(set.essays[current]);
    const gone = labels.splice(selected, 1)[0];
    afterCorrection("Removed the " + gone.type + ".", -1);
  }

  function addElement() {
    const essay = set.essays[current];
    const spans = words(essay.text);
    const from = parseInt($("add-from").value, 10);
    const to = parseInt($("add-to").value, 10);
    if (!(from >= 1 && to >= from && to <= spans.length)) {
      status("Give the first and last word's numbers, between 1 and " + spans.length + ".", true);
      return;
    }
    const labels = startCorrecting(essay);
    const ws = from - 1;
    const we = to;
    for (let i = labels.length - 1; i >= 0; i--) {
      if (labels[i].word_start < we && labels[i].word_end > ws) labels.splice(i, 1);
    }
    const cs = spans[ws][0];
    const ce = spans[we - 1][1];
    const type = $("add-type").value;
    labels.push({
      type: type, word_start: ws, word_end: we, char_start: cs, char_end: ce,
      text: essay.text.slice(cs, ce), confidence: null, changed: "added",
    });
    afterCorrection("Marked words " + from + "–" + to + " as " + type + ".", ws);
  }

  function revert() {
    const essay = set.essays[current];
    essay.corrected = null;
    essay.csummary = null;
    showEssay(current, false);
    status("Back to the model's labels for " + essay.name + ".", false);
  }

  // The word numbers of a selection in the essay view.
  function selectionWords() {
    const sel = window.getSelection();
    if (!sel || sel.rangeCount === 0 || sel.isCollapsed || current < 0) return;
    const view = $("essay-view");
    const range = sel.getRangeAt(0);
    if (!view.contains(range.startContainer) || !view.contains(range.endContainer)) return;
    const offset = (node, off) => {
      const host = node.nodeType === Node.TEXT_NODE ? node.parentElement : node;
      const at = host && host.closest("[data-at]");
      if (at && view.contains(at) && node.nodeType === Node.TEXT_NODE) {
        return parseInt(at.getAttribute("data-at"), 10) + off;
      }
      const mark = host && host.closest("mark.element");
      if (mark) {
        const e = labelsOf(set.essays[current])[parseInt(mark.getAttribute("data-index"), 10)];
        return e ? e.char_start : null;
      }
      return null;
    };
    const a = offset(range.startContainer, range.startOffset);
    const b = offset(range.endContainer, range.endOffset);
    if (a === null || b === null) return;
    const spans = words(set.essays[current].text);
    const first = spans.findIndex(([, e]) => e > a);
    let last = -1;
    spans.forEach(([s], k) => { if (s < b) last = k; });
    if (first < 0 || last < first) return;
    $("add-from").value = String(first + 1);
    $("add-to").value = String(last + 1);
  }

  // --- labelling -------------------------------------------------------------------------------
  function newSet(result, name) {
    set = {
      name: name,
      stage: result.stage,
      savedId: null,
      essays: result.essays.map((e) => ({
        name: e.name, text: e.text, elements: e.elements, summary: e.summary,
        corrected: null, csummary: null,
      })),
    };
    $("set-name").value = name;
    showEssay(0, false);
  }

  async function label() {
    const text = $("essay").value;
    let payload;
    if (pending.length) {
      payload = { essays: pending };
    } else if (text.trim()) {
      payload = { text: text, separator: $("separator").value || "===" };
    } else {
      status("Paste an essay or open files first.", true);
      return;
    }
    $("go").disabled = true;
    status("Labelling…", false);
    try {
      const result = await postJSON("/api/label-batch", payload);
      const stamp = new Date().toISOString().slice(0, 16).replace("T", " ");
      newSet(result, "Class set " + stamp);
      const n = result.essays.length;
      status("Done: " + n + (n === 1 ? " essay" : " essays") + " labelled (stage " + result.stage + ").", false);
    } catch (err) {
      status(err.message, true);
    } finally {
      $("go").disabled = false;
    }
  }

  function readText(file) {
    return new Promise((resolve, reject) => {
      const reader = new FileReader();
      reader.onload = () => resolve(String(reader.result).replace(/^\ufeff/, ""));
      reader.onerror = () => reject(new ApiFailure("Could not read " + file.name + "."));
      reader.readAsText(file, "utf-8");
    });
  }

  async function openFiles(ev) {
    const files = Array.from(ev.target.files || []);
    if (!files.length) return;
    pending = [];
    const skipped = [];
    status("Reading " + files.length + (files.length === 1 ? " file…" : " files…"), false);
    for (const file of files) {
      const lower = file.name.toLowerCase();
      try {
        if (lower.endsWith(".zip")) {
          const body = await api("/api/unpack", {
            method: "POST", headers: { "Content-Type": "application/zip" }, body: await file.arrayBuffer(),
          });
          pending.push(...body.essays);
          for (const s of body.skipped) skipped.push(s.name + " (" + s.reason + ")");
        } else if (lower.endsWith(".docx")) {
          const body = await api("/api/docx", {
            method: "POST", headers: { "Content-Type": DOCX }, body: await file.arrayBuffer(),
          });
          pending.push({ name: file.name, text: body.text });
        } else {
          const text = await readText(file);
          if (text.trim()) pending.push({ name: file.name, text: text });
          else skipped.push(file.name + " (empty)");
        }
      } catch (err) {
        skipped.push(file.name + " (" + err.message + ")");
      }
    }
    $("clear-files").hidden = pending.length === 0;
    const ready = pending.length + (pending.length === 1 ? " essay" : " essays") +
      " ready: press Label.";
    const skip = skipped.length ? " Skipped: " + skipped.join("; ") + "." : "";
    status(pending.length ? ready + skip : "No essay in the files." + skip, pending.length === 0);
  }

  function clearFiles() {
    pending = [];
    $("file").value = "";
    $("clear-files").hidden = true;
    status("The opened files are forgotten; Label uses the pasted text.", false);
  }

  // --- downloads -------------------------------------------------------------------------------
  function csvCell(v) {
    const s = String(v);
    return /[",\n\r]/.test(s) || /^[=+\-@]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s;
  }

  function tableCSV() {
    const rows = [["essay", "words", ...TYPES, "not found", "unsure", "corrected"]];
    for (const essay of set.essays) {
      const s = summaryOf(essay);
      rows.push([essay.name, words(essay.text).length, ...TYPES.map((t) => s.counts[t]),
        s.not_found.join("; "), s.unsure.length, essay.corrected !== null ? "yes" : "no"]);
    }
    return "\ufeff" + rows.map((r) => r.map(csvCell).join(",")).join("\r\n") + "\r\n";
  }

  function jsonl(corrected) {
    return set.essays.map((essay) => JSON.stringify({
      schema_version: SCHEMA_VERSION,
      id: essay.name,
      stage: set.stage,
      corrected: corrected && essay.corrected !== null,
      elements: corrected ? labelsOf(essay) : essay.elements,
    }) + "\n").join("");
  }

  function fileStem() {
    return (set.name || "class-set").replace(/[^\w.-]+/g, "-").replace(/^-+|-+$/g, "") || "class-set";
  }

  // --- print view ------------------------------------------------------------------------------
  function printView() {
    const area = $("print-area");
    area.replaceChildren();
    const bar = el("div", { class: "row screen-only" });
    const print = el("button", { type: "button", id: "print-now" }, "Print");
    print.addEventListener("click", () => window.print());
    const back = el("button", { type: "button", id: "print-back" }, "Back to the page");
    back.addEventListener("click", closePrintView);
    bar.append(print, back);
    area.append(bar, el("h2", {}, set.name));
    const key = el("p", { class: "key" });
    key.append("Each element is framed and starts with its type; a “?” after the type: the model is unsure.");
    area.append(key);
    set.essays.forEach((essay) => {
      const art = el("article", { class: "printed" });
      const s = summaryOf(essay);
      art.append(el("h3", {}, essay.name + (essay.corrected !== null ? " (corrected by the teacher)" : "")));
      const counts = TYPES.filter((t) => s.counts[t] > 0).map((t) => t + " " + s.counts[t]);
      art.append(el("p", {}, "Found: " + (counts.join(", ") || "nothing") + "."));
      if (s.missing.length) {
        const ul = el("ul", {});
        for (const line of s.missing) ul.append(el("li", {}, line));
        art.append(ul);
      }
      const body = el("div", { class: "essay-print" });
      markEssay(body, essay, false);
      art.append(body);
      area.append(art);
    });
    document.body.classList.add("printing");
    area.hidden = false;
    print.focus();
  }

  function closePrintView() {
    document.body.classList.remove("printing");
    $("print-area").hidden = true;
    $("print-view").focus();
  }

  // --- saved class sets ------------------------------------------------------------------------
  function toDocument() {
    return {
      schema_version: SCHEMA_VERSION,
      name: $("set-name").value.trim() || set.name,
      stage: set.stage,
      essays: set.essays.map((e) => ({
        name: e.name, text: e.text, elements: e.elements, corrected: e.corrected,
      })),
    };
  }

  async function save() {
    if (!set) return;
    const doc = toDocument();
    try {
      const entry = set.savedId === null ?
        await postJSON("/api/class-sets", doc) :
        await postJSON("/api/class-sets/" + set.savedId, doc, "PUT");
      set.savedId = entry.id;
      set.name = entry.name;
      status("Saved “" + entry.name + "” on the server (" + entry.n_essays + " essays, " +
        entry.n_corrected + " corrected).", false);
      await listSaved();
    } catch (err) {
      status(err.message, true);
    }
  }

  async function listSaved() {
    if (!info || !info.store) return;
    let body;
    try {
      body = await api("/api/class-sets");
    } catch (err) {
      status(err.message, true);
      return;
    }
    $("saved-where").textContent = body.class_sets.length ?
      "Kept " + body.where + ". Open one to see it again, or delete it." :
      "None yet. Press Save after labelling: the class set and your corrections are kept " +
      body.where + ".";
    const ul = $("saved");
    ul.replaceChildren();
    for (const entry of body.class_sets) {
      const li = el("li", { "data-id": String(entry.id) });
      const when = new Date(entry.saved_at * 1000).toLocaleString();
      li.append(el("strong", {}, entry.name), " — " + entry.n_essays + " essays, " +
        entry.n_corrected + " corrected, saved " + when + " ");
      const open = el("button", { type: "button", class: "open-set" }, "Open");
      open.setAttribute("aria-label", "Open " + entry.name);
      open.addEventListener("click", () => openSaved(entry.id));
      const del = el("button", { type: "button", class: "delete-set" }, "Delete");
      del.setAttribute("aria-label", "Delete " + entry.name);
      del.addEventListener("click", () => deleteSaved(entry, del));
      li.append(open, " ", del);
      ul.append(li);
    }
    $("saved-box").hidden = false;
  }

  async function openSaved(id) {
    status("Opening…", false);
    try {
      const doc = await api("/api/class-sets/" + id);
      const essays = [];
      for (const e of doc.essays) {
        const summary = await postJSON("/api/summary", { elements: e.elements });
        const csummary = e.corrected === null ? null :
          await postJSON("/api/summary", { elements: e.corrected });
        essays.push({ name: e.name, text: e.text, elements: e.elements, summary: summary,
          corrected: e.corrected, csummary: csummary });
      }
      set = { name: doc.name, stage: doc.stage, savedId: doc.id, essays: essays };
      $("set-name").value = doc.name;
      showEssay(0, false);
      status("Opened “" + doc.name + "” (" + essays.length + " essays).", false);
    } catch (err) {
      status(err.message, true);
    }
  }

  async function deleteSaved(entry, button) {
    if (button.dataset.armed !== "yes") {
      button.dataset.armed = "yes";
      button.textContent = "Really delete?";
      setTimeout(() => { button.dataset.armed = ""; button.textContent = "Delete"; }, 6000);
      return;
    }
    try {
      await api("/api/class-sets/" + entry.id, { method: "DELETE" });
      if (set && set.savedId === entry.id) set.savedId = null;
      status("Deleted “" + entry.name + "”.", false);
      await listSaved();
    } catch (err) {
      status(err.message, true);
    }
  }

  // --- start -----------------------------------------------------------------------------------
  function fillTypeSelect(select) {
    select.replaceChildren();
    for (const type of TYPES) select.append(el("option", { value: type }, type));
  }

  function readToken() {
    const m = /(?:^|[#&])token=([^&]+)/.exec(window.location.hash);
    if (m) {
      token = decodeURIComponent(m[1]);
      sessionStorage.setItem("discourse-rl-token", token);
      history.replaceState(null, "", window.location.pathname + window.location.search);
    } else {
      token = sessionStorage.getItem("discourse-rl-token");
    }
  }

  async function loadInfo() {
    try {
      info = await api("/api/info");
      $("token-box").hidden = true;
      $("privacy").textContent = info.privacy;
      $("footer").textContent = "Model: stage " + info.stage + " (labels schema " +
        info.schema_version + "). " + info.licence;
      renderLegend();
      await listSaved();
      if (!info.store) $("save-row").hidden = true;
    } catch (err) {
      info = null;
      $("privacy").textContent = "Could not read how this page is served: " + err.message;
      status("The model's description could not be read. " + err.message, true);
      renderLegend();
    }
  }

  function start() {
    readToken();
    fillTypeSelect($("editor-type"));
    fillTypeSelect($("add-type"));
    $("go").addEventListener("click", label);
    $("file").addEventListener("change", openFiles);
    $("clear-files").addEventListener("click", clearFiles);
    $("dl-csv").addEventListener("click", () =>
      download(fileStem() + ".csv", tableCSV(), "text/csv;charset=utf-8"));
    $("dl-jsonl").addEventListener("click", () =>
      download(fileStem() + ".labels.jsonl", jsonl(false), "application/x-ndjson"));
    $("dl-corrected").addEventListener("click", () =>
      download(fileStem() + ".corrected.jsonl", jsonl(true), "application/x-ndjson"));
    $("print-view").addEventListener("click", printView);
    $("save").addEventListener("click", save);
    $("editor-apply").addEventListener("click", applyType);
    $("editor-remove").addEventListener("click", removeSelected);
    $("editor-close").addEventListener("click", () => {
      $("editor").hidden = true;
      const mark = document.querySelector('#essay-view mark[data-index="' + selected + '"]');
      if (mark) { mark.classList.remove("open"); mark.focus(); }
    });
    $("add-go").addEventListener("click", addElement);
    $("revert").addEventListener("click", revert);
    $("token-go").addEventListener("click", () => {
      token = $("token").value.trim();
      sessionStorage.setItem("discourse-rl-token", token);
      loadInfo();
    });
    const view = $("essay-view");
    const pick = (ev) => {
      const mark = ev.target.closest("mark.element");
      if (!mark) return;
      const sel = window.getSelection();
      if (ev.type === "click" && sel && !sel.isCollapsed) return; // selecting text, not picking
      openEditor(parseInt(mark.getAttribute("data-index"), 10), mark);
    };
    view.addEventListener("click", pick);
    view.addEventListener("keydown", (ev) => {
      if (ev.key === "Enter" || ev.key === " ") {
        ev.preventDefault();
        pick(ev);
      }
    });
    view.addEventListener("mouseup", selectionWords);
    view.addEventListener("keyup", selectionWords);
    document.addEventListener("keydown", (ev) => {
      if (ev.key === "Escape" && document.body.classList.contains("printing")) closePrintView();
    });
    renderLegend();
    loadInfo();
  }

  start();
})();
