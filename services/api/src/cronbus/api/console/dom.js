// A few DOM and formatting helpers shared by the pages.

/** An element: attrs may hold `class`, `text`, `on<event>` handlers and plain attributes. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") el.className = value;
    else if (name === "text") el.textContent = value;
    else if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "value") el.value = value;
    else if (name === "checked") el.checked = Boolean(value);
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function clear(el) {
  while (el.firstChild) el.firstChild.remove();
  return el;
}

export const browserZone = Intl.DateTimeFormat().resolvedOptions().timeZone;

const formats = new Map();
function format(zone) {
  let f = formats.get(zone);
  if (!f) {
    try {
      f = new Intl.DateTimeFormat("en-CA", {
        timeZone: zone, year: "numeric", month: "2-digit", day: "2-digit",
        hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23", timeZoneName: "short",
      });
    } catch {
      f = format("UTC");
    }
    formats.set(zone, f);
  }
  return f;
}

/** `iso` as wall time in `zone` (default: the browser's), e.g. "2027-03-28 03:00:00 GMT+2". */
export function when(iso, zone = browserZone) {
  if (!iso) return "—";
  const parts = Object.fromEntries(format(zone).formatToParts(new Date(iso)).map((p) => [p.type, p.value]));
  return `${parts.year}-${parts.month}-${parts.day} ${parts.hour}:${parts.minute}:${parts.second} ${parts.timeZoneName}`;
}

/** How long ago (or from now) `iso` is, in words. */
export function ago(iso, now = Date.now()) {
  if (!iso) return "";
  const s = Math.round((now - new Date(iso).getTime()) / 1000);
  const abs = Math.abs(s);
  const text = abs < 60 ? `${abs}s` : abs < 3600 ? `${Math.round(abs / 60)}m` : abs < 86400 ? `${Math.round(abs / 3600)}h` : `${Math.round(abs / 86400)}d`;
  return s >= 0 ? `${text} ago` : `in ${text}`;
}

export function ms(value) {
  if (value === null || value === undefined) return "—";
  if (value < 1000) return `${Math.round(value)} ms`;
  if (value < 60000) return `${(value / 1000).toFixed(1)} s`;
  return `${Math.floor(value / 60000)}m ${Math.round((value % 60000) / 1000)}s`;
}

export function bytes(value) {
  if (value === null || value === undefined) return "—";
  const units = ["B", "KiB", "MiB", "GiB"];
  let v = value;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  return `${i === 0 ? v : v.toFixed(1)} ${units[i]}`;
}

export function statusBadge(status) {
  return h("span", { class: `badge s-${status || "none"}`, text: status || "never run" });
}

const toast = () => document.getElementById("toast");
let toastTimer = 0;
/** A short message at the bottom of the page, read out by screen readers. */
export function say(text, kind = "info") {
  const el = toast();
  el.textContent = text;
  el.className = `show ${kind}`;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { el.className = ""; }, 5000);
}

/** A modal confirmation (a <dialog>): resolves true when confirmed. */
export function confirmDialog(question, action = "Confirm") {
  return new Promise((resolve) => {
    const dialog = h("dialog", { class: "confirm", "aria-label": question });
    const done = (answer) => { dialog.close(); dialog.remove(); resolve(answer); };
    append(dialog, [
      h("p", { text: question }),
      h("div", { class: "actions" },
        h("button", { type: "button", class: "danger", onclick: () => done(true), text: action }),
        h("button", { type: "button", onclick: () => done(false), text: "Cancel" })),
    ]);
    dialog.addEventListener("cancel", (e) => { e.preventDefault(); done(false); });
    document.body.append(dialog);
    dialog.showModal();
  });
}
