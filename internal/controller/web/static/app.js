// Corral dashboard: actions through /ui/api (the REST API with the session
// and a CSRF token), live refresh of the current view on every event.
"use strict";
(() => {
  const csrf = document.querySelector('meta[name="csrf-token"]')?.content || "";
  const view = document.getElementById("view");

  function flash(msg, bad) {
    const box = document.getElementById("flash");
    if (!box) return;
    const d = document.createElement("div");
    d.textContent = msg;
    if (bad) d.className = "bad";
    box.appendChild(d);
    setTimeout(() => d.remove(), bad ? 8000 : 3500);
  }

  async function api(method, path, body) {
    const opts = { method, headers: { "X-CSRF-Token": csrf }, credentials: "same-origin" };
    if (body !== undefined) {
      opts.headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(body);
    }
    const r = await fetch("/ui" + path, opts);
    if (r.status === 401) { location.href = "/login?next=" + encodeURIComponent(location.pathname + location.search); throw new Error("log in again"); }
    let env;
    try { env = await r.json(); } catch { throw new Error("HTTP " + r.status); }
    if (env.status !== "OK") throw new Error(env.message || "HTTP " + r.status);
    return env.body;
  }

  function b64(s) { return btoa(String.fromCharCode(...new TextEncoder().encode(s))); }

  function formBody(form) {
    const body = {};
    for (const el of form.elements) {
      if (!el.name || el.name === "csrf" || el.disabled) continue;
      const t = el.dataset.type;
      if (t === "bool") { body[el.name] = el.checked; continue; }
      const v = el.value.trim();
      if (v === "") continue;
      if (t === "int") body[el.name] = parseInt(v, 10);
      else if (t === "b64") body[el.name] = b64(el.value);
      else if (t === "list") (body[el.name] = body[el.name] || []).push(v);
      else body[el.name] = v;
    }
    return body;
  }

  function done(el, result) {
    let msg = el.dataset.done || "Done";
    if (Array.isArray(result)) msg = msg.replace("{n}", result.length);
    flash(msg);
    refresh(true);
  }

  document.addEventListener("click", async (e) => {
    const b = e.target.closest("button[data-path]");
    if (b && !b.form?.dataset.path) {
      e.preventDefault();
      if (b.dataset.confirm && !confirm(b.dataset.confirm)) return;
      b.disabled = true;
      try { done(b, await api(b.dataset.method, b.dataset.path, b.dataset.body ? JSON.parse(b.dataset.body) : undefined)); }
      catch (err) { flash(err.message, true); }
      finally { b.disabled = false; }
      return;
    }
    const bulk = e.target.closest("button[data-bulk]");
    if (bulk) {
      e.preventDefault();
      const ids = [...view.querySelectorAll('input[name="sel"]:checked')].map((x) => x.value);
      if (!ids.length) { flash("Select instances first", true); return; }
      if (!confirm(`Terminate ${ids.length} instance(s)?`)) return;
      let failed = 0;
      for (const id of ids) { try { await api("DELETE", "/api/v1/vm", { id }); } catch (err) { failed++; flash(id.slice(0, 8) + ": " + err.message, true); } }
      flash(`Terminating ${ids.length - failed} instance(s)`);
      selected.clear();
      refresh(true);
      return;
    }
    const all = e.target.closest("input[data-select-all]");
    if (all) for (const c of view.querySelectorAll('input[name="sel"]')) { c.checked = all.checked; track(c); }
    const one = e.target.closest('input[name="sel"]');
    if (one) track(one);
  });

  document.addEventListener("submit", async (e) => {
    const f = e.target;
    if (!f.dataset.path) return;
    e.preventDefault();
    const btn = f.querySelector("button");
    if (btn) btn.disabled = true;
    try { done(f, await api(f.dataset.method, f.dataset.path, formBody(f))); if (f.id === "start-form") f.closest("details").open = false; }
    catch (err) { flash(err.message, true); }
    finally { if (btn) btn.disabled = false; }
  });

  // Selection survives refreshes.
  const selected = new Set();
  function track(c) { if (c.checked) selected.add(c.value); else selected.delete(c.value); }

  let busy = false, again = false;
  async function refresh(now) {
    if (!view || !view.dataset.src) return;
    const a = document.activeElement;
    if (!now && a && view.contains(a) && a.matches("input, select, textarea")) return; // someone is typing
    if (!now && view.querySelector("details[open] form")) return; // a form is open
    if (busy) { again = true; return; }
    busy = true;
    try {
      const r = await fetch(view.dataset.src + location.search, { credentials: "same-origin", headers: { "Accept": "text/html" } });
      if (r.status === 401) { location.href = "/login?next=" + encodeURIComponent(location.pathname + location.search); return; }
      if (!r.ok) return;
      const html = await r.text();
      const open = [...view.querySelectorAll("details[open]")].map((d) => d.id).filter(Boolean);
      view.innerHTML = html;
      for (const id of open) { const d = document.getElementById(id); if (d) d.open = true; }
      for (const c of view.querySelectorAll('input[name="sel"]')) c.checked = selected.has(c.value);
      view.dispatchEvent(new CustomEvent("refreshed", { bubbles: true }));
    } finally {
      busy = false;
      if (again) { again = false; setTimeout(refresh, 200); }
    }
  }
  window.corralRefresh = refresh;

  let timer = null;
  function soon() { clearTimeout(timer); timer = setTimeout(refresh, 250); }
  if (view && view.dataset.src && window.EventSource) {
    const live = document.getElementById("live");
    const es = new EventSource("/ui/stream");
    es.onopen = () => live && live.classList.add("on");
    es.onerror = () => live && live.classList.remove("on");
    es.onmessage = soon;
  }
  setInterval(refresh, 10000); // progress (pulls) and anything the log does not record
})();
