// Evenflow dashboard: renders the snapshots that /events pushes about once a
// second. No framework and no build step; the DOM is rebuilt per listener,
// which at a handful of backends costs less than diffing it would.
"use strict";

const STATUS_CLASS = { "ready": "ready", "slow start": "slow-start", "draining": "draining", "ejected": "ejected", "unhealthy": "unhealthy" };

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  for (const child of children) node.append(child);
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  return node;
}

function stat(label, value) {
  return el("div", {}, el("b", {}, String(value)), el("span", {}, label));
}

// The imbalance ratio (max/mean of the weighted loads, 1 is even) over the
// last minutes; x is seconds before now (at least a minute shown, up to the
// five the server keeps), y runs from 1 up to the worst seen.
function chart(history) {
  const width = 300, height = 60;
  const span = Math.max(60, ...history.map(([ago]) => -ago));
  const top = Math.max(2, ...history.map(([, ratio]) => ratio));
  const y = (ratio) => height - 4 - ((Math.max(ratio, 1) - 1) / (top - 1)) * (height - 8);
  const node = svg("svg", { class: "chart", viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: "none", role: "img" });
  node.append(svg("line", { x1: 0, x2: width, y1: y(1), y2: y(1) }));
  const points = history.map(([ago, ratio]) => `${(width * (span + ago)) / span},${y(ratio)}`).join(" ");
  node.append(svg("polyline", { points }));
  const title = svg("title", {});
  const last = history.length ? history[history.length - 1][1] : 1;
  title.textContent = `imbalance ratio, last ${Math.round(span)} s; now ${last}, peak ${top}`;
  node.append(title);
  return node;
}

function describe(event) {
  const parts = [event.event];
  if (event.backend) parts.push(event.backend);
  if (event.reason) parts.push(`(${event.reason})`);
  if (event.for_seconds !== undefined) parts.push(`for ${event.for_seconds}s`);
  if (event.active !== undefined) parts.push(`${event.active} live`);
  return parts.join(" ");
}

function renderListener(listener, events) {
  const most = Math.max(1, ...listener.backends.map((b) => b.active));
  const card = el("section", { class: "listener", "data-listener": listener.name });
  card.append(
    el("div", { class: "listener-head" },
      el("h2", {}, listener.name),
      el("span", { class: "muted" }, `${listener.protocol} ${listener.listen} · ${listener.discovery.source || "routes"}`)),
  );
  const totals = listener.totals;
  card.append(el("div", { class: "totals" },
    stat("active", totals.active),
    stat("accepted", totals.accepted),
    stat("new / s", totals.accept_rate),
    stat("imbalance", listener.balance.imbalance_ratio),
    stat("backends", listener.backends.length)));
  if (listener.discovery.error) card.append(el("p", { class: "muted" }, `discovery: ${listener.discovery.error}`));
  card.append(el("h3", {}, "Active per backend"));
  for (const backend of listener.backends) {
    const bar = el("div", { class: "bar" });
    bar.style.width = `${(100 * backend.active) / most}%`;
    card.append(el("div", {
      class: `backend ${STATUS_CLASS[backend.status] || "ready"}`,
      "data-backend": backend.address,
      "data-status": backend.status,
      title: `${backend.address}: ${backend.active} active, ${backend.total} total, health ${backend.health}` + (backend.health_reason ? ` (${backend.health_reason})` : ""),
    },
    el("span", { class: "address" }, backend.address),
    el("span", { class: "state" }, backend.status),
    el("div", { class: "track" }, bar),
    el("span", { class: "count" }, String(backend.active))));
  }
  card.append(el("h3", {}, "Imbalance ratio"), chart(listener.imbalance_history));
  const mine = events.filter((e) => !e.listener || e.listener === listener.name);
  card.append(el("h3", {}, "Recent events"));
  const list = el("ol", { class: "events" });
  for (const event of mine.slice(0, 20)) {
    list.append(el("li", { "data-event": event.event },
      el("time", {}, new Date(event.ts * 1000).toLocaleTimeString()), describe(event)));
  }
  if (!mine.length) list.append(el("li", { class: "muted" }, "none yet"));
  card.append(list);
  return card;
}

function render(doc) {
  const main = document.getElementById("listeners");
  main.replaceChildren(...doc.listeners.map((listener) => renderListener(listener, doc.events)));
  document.getElementById("uptime").textContent = `up ${Math.round(doc.uptime)} s`;
}

function connect() {
  const status = document.getElementById("conn");
  const source = new EventSource("events");
  source.onopen = () => { status.dataset.state = "live"; status.textContent = "live"; };
  source.onerror = () => { status.dataset.state = "lost"; status.textContent = "reconnecting…"; };
  source.onmessage = (message) => render(JSON.parse(message.data));
}

connect();
