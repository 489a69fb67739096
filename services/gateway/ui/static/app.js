/* modelfleet web UI: the pages' scripts (no inline script anywhere: the CSP allows scripts from /ui/static only). */
"use strict";
(function () {
  const csrf = () => document.querySelector('meta[name="csrf-token"]').content;
  const GIB = 1024 * 1024 * 1024;

  function human(n) {
    if (n === null || n === undefined) return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (Math.abs(n) >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return i === 0 ? n.toFixed(0) + " B" : n.toFixed(1) + " " + units[i];
  }

  function seconds(s) {
    if (s === null || s === undefined) return "–";
    if (s < 90) return Math.round(s) + " s";
    if (s < 5400) return Math.round(s / 60) + " min";
    return (s / 3600).toFixed(1) + " h";
  }

  async function api(path, options) {
    const opts = Object.assign({ credentials: "same-origin", headers: {} }, options || {});
    if (opts.method && opts.method !== "GET") opts.headers["X-CSRF-Token"] = csrf();
    return fetch(path, opts);
  }

  // --- Hosts: live gauges and history charts ---------------------------------------------------------------------
  function drawChart(box, history) {
    if (!window.uPlot || !history.length) { box.textContent = "No stored samples yet."; return; }
    const xs = history.map((s) => Date.parse(s.occurred_at) / 1000);
    const data = [xs];
    const series = [{}];
    const gpuCount = Math.max(0, ...history.map((s) => (s.gpus || []).length));
    const colours = ["#2563eb", "#db2777", "#16a34a", "#ea580c", "#7c3aed", "#0891b2"];
    for (let i = 0; i < gpuCount; i++) {
      data.push(history.map((s) => (s.gpus && s.gpus[i] ? s.gpus[i].memory_used_bytes / GIB : null)));
      series.push({ label: "GPU " + i + " used", stroke: colours[i % colours.length], width: 2 });
    }
    data.push(history.map((s) => (s.memory_total_bytes - s.memory_available_bytes) / GIB));
    series.push({ label: "RAM used", stroke: "#6b7280", width: 2, dash: [4, 4] });
    box.textContent = "";
    const width = Math.max(260, box.clientWidth || 600);
    const plot = new window.uPlot({ width: width, height: 200, series: series,
      axes: [{}, { size: 70, values: (u, vals) => vals.map((v) => v.toFixed(1) + " GiB") }] }, data, box);
    window.addEventListener("resize", () => plot.setSize({ width: Math.max(260, box.clientWidth), height: 200 }));
  }

  async function hostsPage() {
    for (const box of document.querySelectorAll("[data-chart]")) {
      const id = encodeURIComponent(box.dataset.chart);
      try {
        const r = await api("/ui/api/hosts/" + id + "?last=60");
        if (!r.ok) { box.textContent = "History unavailable (" + r.status + ")."; continue; }
        drawChart(box, (await r.json()).history);
      } catch (e) { box.textContent = "History unavailable: " + e; }
    }
    setInterval(async () => {
      const r = await api("/ui/api/hosts");
      if (!r.ok) return;
      for (const h of (await r.json()).hosts) {
        const card = document.querySelector('section.host[data-host="' + CSS.escape(h.host_id) + '"]');
        if (!card) continue;
        const age = card.querySelector('[data-field="age"]');
        if (age) age.textContent = Math.round(h.age_s);
        for (const g of h.sample.gpus || []) {
          const li = card.querySelector('li.gpu[data-gpu="' + g.index + '"]');
          if (!li) continue;
          li.querySelector("meter").value = g.memory_used_bytes;
          li.querySelector('[data-field="gpu-text"]').textContent =
            human(g.memory_used_bytes) + " of " + human(g.memory_total_bytes) + " used";
        }
      }
    }, 5000);
  }

  // --- Provisioning: progress per host x model from the server-sent events ---------------------------------------
  function provisionPage(root) {
    const state = document.getElementById("provision-state");
    const body = document.querySelector("#progress tbody");
    const rows = new Map();
    function row(host, model) {
      const key = host + "\u0000" + model;
      if (!rows.has(key)) {
        const tr = document.createElement("tr");
        tr.dataset.host = host; tr.dataset.model = model;
        for (const name of ["host", "model", "status", "bar", "bytes", "rate", "eta"]) {
          const td = document.createElement("td"); td.className = "c-" + name; tr.appendChild(td);
        }
        tr.querySelector(".c-host").textContent = host;
        tr.querySelector(".c-model").textContent = model;
        const bar = document.createElement("progress");
        bar.max = 100; bar.value = 0; bar.setAttribute("aria-label", "progress of " + model + " on " + host);
        tr.querySelector(".c-bar").appendChild(bar);
        body.appendChild(tr); rows.set(key, tr);
      }
      return rows.get(key);
    }
    function set(tr, status, done, total, rate, eta) {
      tr.querySelector(".c-status").textContent = status;
      const bar = tr.querySelector("progress");
      if (total) { bar.max = total; bar.value = done; bar.textContent = Math.round((100 * done) / total) + " %"; }
      tr.querySelector(".c-bytes").textContent = total ? human(done) + " / " + human(total) + " (" + Math.floor((100 * done) / total) + " %)" : human(done);
      tr.querySelector(".c-rate").textContent = rate ? human(rate) + "/s" : "–";
      tr.querySelector(".c-eta").textContent = seconds(eta);
    }
    function addActions(actions) {
      const tb = document.querySelector("#actions tbody");
      tb.textContent = "";
      for (const a of actions) {
        const tr = document.createElement("tr");
        for (const v of [a.target_host, a.role || "–", a.model, a.action, a.reason || ""]) {
          const td = document.createElement("td"); td.textContent = v; tr.appendChild(td);
        }
        tr.children[3].className = "action";
        tb.appendChild(tr);
      }
    }
    const url = "/ui/api/models/provision/" + root.dataset.request + "/events?since=" + encodeURIComponent(root.dataset.since);
    const source = new EventSource(url);
    source.addEventListener("progress", (e) => {
      const d = JSON.parse(e.data);
      if (d.target_host === "*") { state.textContent = d.status; return; } // the request as a whole
      state.textContent = "running";
      set(row(d.target_host, d.model), d.status, d.completed_bytes || 0, d.total_bytes, d.rate_bytes_per_s, d.eta_s);
    });
    // A pinned import is reported pulled under its Ollama name (hf.co/owner/repo:QUANT-<commit>): the row of its
    // reference (hf.co/owner/repo:QUANT@<commit>) on that host is the one it finishes.
    function pulledRow(host, model) {
      if (rows.has(host + "\u0000" + model)) return [rows.get(host + "\u0000" + model), "pulled"];
      const repo = model.slice(0, model.lastIndexOf(":"));
      for (const tr of rows.values()) {
        if (tr.dataset.host === host && repo && tr.dataset.model.startsWith(repo + ":")) return [tr, "pulled as " + model];
      }
      return [row(host, model), "pulled"];
    }
    source.addEventListener("pulled", (e) => {
      const d = JSON.parse(e.data);
      const [tr, words] = pulledRow(d.target_host, d.model);
      const size = d.size_bytes || Number(tr.querySelector("progress").max) || 0;
      set(tr, words, size, size || null, null, 0);
    });
    source.addEventListener("failed", (e) => {
      const d = JSON.parse(e.data);
      const tr = row(d.target_host, d.model);
      tr.querySelector(".c-status").textContent = "failed: " + d.reason;
      tr.classList.add("failed");
    });
    // The request's audit rows, read once it completed (the provisioner writes them as each action is decided).
    async function refreshAudit() {
      const status = document.getElementById("audit-state");
      const tb = document.querySelector("#audit tbody");
      if (!tb || root.dataset.admin !== "true") return;
      const r = await api("/ui/api/provision/audit?request_id=" + encodeURIComponent(root.dataset.request));
      if (!r.ok) { status.textContent = "audit trail unavailable (" + r.status + ")"; return; }
      const entries = (await r.json()).entries;
      tb.textContent = "";
      for (const a of entries) {
        const tr = document.createElement("tr");
        tr.dataset.model = a.model; tr.dataset.action = a.action; tr.dataset.result = a.result;
        const cells = [a.at.slice(0, 19).replace("T", " "), a.actor, a.action, a.host, a.model, a.result,
          (a.revision || "–").slice(0, 12), (a.sha256 || "–").slice(0, 12), a.detail || ""];
        cells.forEach((v, i) => {
          const td = document.createElement("td");
          if (i === 6 || i === 7) { const c = document.createElement("code"); c.textContent = v; td.appendChild(c); } else td.textContent = v;
          if (i === 5) td.className = "result";
          tr.appendChild(td);
        });
        tb.appendChild(tr);
      }
      status.textContent = entries.length ? entries.length + " audit row(s)" : "no audit rows yet";
    }
    source.addEventListener("completed", (e) => {
      const d = JSON.parse(e.data);
      source.close();
      addActions(d.actions || []);
      state.textContent = "completed";
      root.dataset.done = "true";
      refreshAudit();
    });
    source.onerror = () => {
      if (root.dataset.done !== "true") state.textContent = "connection lost; retrying…";
    };
  }

  // --- Chat: stream an answer through /v1/chat/completions -------------------------------------------------------
  function chatPage() {
    const form = document.getElementById("chat-form");
    const out = document.getElementById("chat-answer");
    const status = document.getElementById("chat-status");
    const field = (id, v) => { document.getElementById(id).textContent = v; };
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const role = document.getElementById("chat-role").value;
      const prompt = document.getElementById("chat-prompt").value;
      out.textContent = ""; status.textContent = "asking " + role + "…";
      for (const id of ["chat-backend", "chat-route", "chat-overhead", "chat-ttft", "chat-total", "chat-tokens"]) field(id, "–");
      const started = performance.now();
      let first = null;
      let r;
      try {
        r = await api("/ui/v1/chat/completions", { method: "POST", headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ model: role, stream: true, stream_options: { include_usage: true },
            messages: [{ role: "user", content: prompt }] }) });
      } catch (e) { status.textContent = "failed: " + e; return; }
      if (!r.ok) {
        let msg = r.status + "";
        try { const b = await r.json(); msg += " " + ((b.error && b.error.message) || b.detail || ""); } catch (e) { /* not JSON */ }
        status.textContent = "failed: " + msg; return;
      }
      field("chat-backend", r.headers.get("x-modelfleet-backend") || "–");
      field("chat-route", r.headers.get("x-modelfleet-route-reason") || "–");
      const overhead = r.headers.get("x-modelfleet-overhead-ms");
      field("chat-overhead", overhead ? Number(overhead).toFixed(1) + " ms" : "–");
      status.textContent = "streaming…";
      const reader = r.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const event = buffer.slice(0, cut); buffer = buffer.slice(cut + 2);
          for (const line of event.split("\n")) {
            if (!line.startsWith("data: ")) continue;
            const data = line.slice(6);
            if (data === "[DONE]") continue;
            const chunk = JSON.parse(data);
            if (chunk.error) { status.textContent = "failed mid-answer: " + chunk.error.message; continue; }
            for (const c of chunk.choices || []) {
              const text = c.delta && c.delta.content;
              if (text) {
                if (first === null) { first = performance.now(); field("chat-ttft", (first - started).toFixed(0) + " ms"); }
                out.textContent += text;
              }
            }
            if (chunk.usage) field("chat-tokens", chunk.usage.prompt_tokens + " in, " + chunk.usage.completion_tokens + " out");
          }
        }
      }
      field("chat-total", (performance.now() - started).toFixed(0) + " ms");
      if (!status.textContent.startsWith("failed")) status.textContent = "done";
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    const page = document.body.dataset.page;
    if (page === "hosts") hostsPage();
    const prov = document.getElementById("provision");
    if (prov && prov.dataset.done !== "true") provisionPage(prov);
    if (page === "chat") chatPage();
  });
})();

/* Roles: a manifest file is sent as it is to POST /api/v1/catalog/import (through /ui/api, with the CSRF header). */
document.addEventListener("DOMContentLoaded", () => {
  const form = document.getElementById("manifest-import");
  if (!form) return;
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const out = document.getElementById("manifest-result");
    const file = document.getElementById("manifest-file").files[0];
    if (!file) { out.textContent = "pick a file"; return; }
    out.textContent = "importing " + file.name + "…";
    const token = document.querySelector('meta[name="csrf-token"]').content;
    const type = file.name.endsWith(".json") ? "application/json" : file.name.endsWith(".toml") ? "application/toml" : "text/plain";
    const r = await fetch("/ui/api/catalog/import?filename=" + encodeURIComponent(file.name), {
      method: "POST", credentials: "same-origin", headers: { "Content-Type": type, "X-CSRF-Token": token },
      body: await file.text() });
    const body = await r.json().catch(() => ({}));
    if (!r.ok) { out.textContent = "refused (" + r.status + "): " + (body.detail || ""); return; }
    const count = body.model_count !== null && body.model_count !== undefined ? body.model_count : (body.models || []).length;
    out.textContent = "imported " + body.filename + " (" + body.format + "): " + count + " models, profile sets " +
      ((body.profile_sets || []).join(", ") || "none") + ((body.warnings || []).length ? "; warnings: " + body.warnings.join("; ") : "");
  });
});
