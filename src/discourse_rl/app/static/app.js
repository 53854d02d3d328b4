"use strict";
// The page talks to /api/info and /api/label only; every node is built with textContent, so an
// essay's text is never parsed as HTML.
(function () {
  const $ = (id) => document.getElementById(id);
  let info = null;
  const DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document";

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

  function f1Of(type) {
    const s = info && info.scores[info.stage];
    return s && type in s.per_type ? s.per_type[type] : null;
  }

  function reliability(f1) {
    if (f1 === null) return "unknown";
    if (f1 < info.thresholds.guess_below) return "a guess";
    return f1 >= info.thresholds.reliable_from ? "reliable" : "fair";
  }

  function renderLegend() {
    const ul = $("legend");
    ul.replaceChildren();
    for (const [type, colour] of Object.entries(info.colours)) {
      const li = el("li", { "data-type": type });
      const sw = el("span", { class: "swatch" });
      sw.style.background = colour;
      li.append(sw, el("strong", {}, type));
      const f1 = f1Of(type);
      if (f1 !== null) {
        const word = reliability(f1);
        li.append(" — held-out F1 " + f1.toFixed(2) + ": ");
        li.append(el("span", word === "a guess" ? { class: "guess" } : {}, word));
      }
      ul.append(li);
    }
    $("legend-box").hidden = false;
  }

  function renderEssay(text, elements) {
    const view = $("essay-view");
    view.replaceChildren();
    let pos = 0;
    const sorted = elements.map((e, i) => [e, i]).sort((a, b) => a[0].char_start - b[0].char_start);
    const unsure = new Set(lastSummary.unsure);
    for (const [e, i] of sorted) {
      view.append(text.slice(pos, e.char_start));
      const mark = el("mark", {
        class: "element" + (unsure.has(i) ? " unsure" : ""),
        "data-type": e.type,
        "data-confidence": e.confidence.toFixed(2),
        tabindex: "0",
        title: e.type + " — confidence " + e.confidence.toFixed(2) +
          (unsure.has(i) ? " (unsure)" : ""),
      });
      mark.style.background = info.colours[e.type];
      mark.append(el("span", { class: "tag" }, e.type), e.text);
      view.append(mark);
      pos = e.char_end;
    }
    view.append(text.slice(pos));
    $("result").hidden = false;
  }

  let lastSummary = null;

  function renderSummary(result) {
    const s = result.summary;
    const box = $("summary-body");
    box.replaceChildren();
    const present = Object.entries(s.counts).filter(([, n]) => n > 0);
    box.append(el("p", {}, result.elements.length + " elements in " + result.n_words +
      " words; types present: " + (present.map(([t]) => t).join(", ") || "none") + "."));
    const table = el("table", { class: "counts" });
    table.append(el("tr", {}));
    table.lastChild.append(el("th", {}, "type"), el("th", {}, "count"), el("th", {}, "model on this type"));
    for (const [type, n] of Object.entries(s.counts)) {
      const tr = el("tr", { "data-type": type });
      const word = s.reliability[type];
      tr.append(el("td", {}, type), el("td", {}, String(n)),
        el("td", word === "a guess" ? { class: "guess" } : {}, word));
      table.append(tr);
    }
    box.append(table);
    if (s.missing.length) {
      box.append(el("h3", {}, "Missing"));
      const ul = el("ul", { class: "missing" });
      for (const line of s.missing) ul.append(el("li", {}, line));
      box.append(ul);
    } else {
      box.append(el("p", {}, "Every element type is present and every Claim has Evidence after it."));
    }
    if (s.unsure.length) {
      box.append(el("h3", {}, "The model is unsure of"));
      const ul = el("ul", { class: "unsure" });
      const shown = 8;
      for (const i of s.unsure.slice(0, shown)) {
        const e = result.elements[i];
        const words = e.text.split(/\s+/);
        const short = words.slice(0, 10).join(" ") + (words.length > 10 ? " …" : "");
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

  async function label() {
    const text = $("essay").value;
    if (!text.trim()) {
      status("Paste an essay first.", true);
      return;
    }
    $("go").disabled = true;
    status("Labelling…", false);
    try {
      const res = await fetch("/api/label", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ text: text }),
      });
      const body = await res.json().catch(() => ({ error: "unreadable answer (" + res.status + ")" }));
      if (!res.ok) {
        status(body.error || "error " + res.status, true);
        return;
      }
      lastSummary = body.summary;
      renderSummary(body);
      renderEssay(text, body.elements);
      status("Done: " + body.elements.length + " elements (stage " + body.stage + ").", false);
    } catch (err) {
      status("Could not reach the server: " + err, true);
    } finally {
      $("go").disabled = false;
    }
  }

  async function openDocx(file) {
    status("Reading " + file.name + "…", false);
    try {
      const res = await fetch("/api/docx", {
        method: "POST",
        headers: { "Content-Type": DOCX },
        body: await file.arrayBuffer(),
      });
      const body = await res.json().catch(() => ({ error: "unreadable answer (" + res.status + ")" }));
      if (!res.ok) {
        status(body.error || "error " + res.status, true);
        return;
      }
      $("essay").value = body.text;
      status("Loaded " + file.name + ".", false);
    } catch (err) {
      status("Could not reach the server: " + err, true);
    }
  }

  function openFile(ev) {
    const file = ev.target.files[0];
    if (!file) return;
    if (file.name.toLowerCase().endsWith(".docx")) {
      openDocx(file);
      return;
    }
    const reader = new FileReader();
    reader.onload = () => {
      $("essay").value = reader.result;
      status("Loaded " + file.name + ".", false);
    };
    reader.onerror = () => status("Could not read " + file.name + ".", true);
    reader.readAsText(file, "utf-8");
  }

  async function start() {
    $("go").addEventListener("click", label);
    $("file").addEventListener("change", openFile);
    try {
      info = await (await fetch("/api/info")).json();
      renderLegend();
      $("footer").textContent = "Model: stage " + info.stage + ". " + info.licence;
    } catch (err) {
      status("Could not load the model's description: " + err, true);
    }
  }

  start();
})();
