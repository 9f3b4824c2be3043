// The console's entry point: sign-in, the navigation and a router over the URL's fragment
// (#/jobs/<id>, #/runs/<id>, ...), so every page is one HTML document with no inline script.

import { ApiError, api, features, hooks, session } from "./api.js";
import { clear, h, say } from "./dom.js";
import { activityPage, keysPage } from "./admin.js";
import { clusterPage } from "./cluster.js";
import { editorPage } from "./editor.js";
import { jobPage } from "./job.js";
import { runPage } from "./run.js";
import { schedulePage } from "./schedule.js";

const RANK = { viewer: 1, operator: 2, admin: 3 };

/** Who is signed in; pages ask `may(role)` to hide what the key's role may not do. */
export const me = { name: "", role: "", features: {} };
export const may = (role) => (RANK[me.role] || 0) >= RANK[role];

const ROUTES = [
  [/^\/?$/, "schedule", () => schedulePage],
  [/^\/jobs\/new$/, "schedule", () => (ctx) => editorPage(ctx, null, "create")],
  [/^\/jobs\/([^/]+)\/edit$/, "schedule", () => (ctx, id) => editorPage(ctx, id, "edit")],
  [/^\/jobs\/([^/]+)\/clone$/, "schedule", () => (ctx, id) => editorPage(ctx, id, "clone")],
  [/^\/jobs\/([^/]+)$/, "schedule", () => jobPage],
  [/^\/runs\/([^/]+)$/, "schedule", () => runPage],
  [/^\/cluster$/, "cluster", () => clusterPage],
  [/^\/activity$/, "activity", () => activityPage],
  [/^\/keys$/, "keys", () => keysPage],
];

let leaving = null; // the current page's clean-up (timers, streams)

function main() {
  return document.getElementById("main");
}

function signInPage(message) {
  document.title = "Sign in · cronbus";
  const root = clear(main());
  const error = h("p", { id: "key-error", class: "field-error", role: "alert", text: message || "" });
  const input = h("input", {
    id: "key", name: "key", type: "password", autocomplete: "off", spellcheck: "false",
    required: true, "aria-describedby": "key-help key-error",
  });
  const form = h("form", { class: "card narrow", "aria-labelledby": "sign-in-title" },
    h("h1", { id: "sign-in-title", text: "Sign in" }),
    h("label", { for: "key", text: "API key" }),
    input,
    h("p", { id: "key-help", class: "muted",
      text: "`cronbus up` prints an admin key. The key is kept in this tab until you sign out or close it." }),
    error,
    h("button", { type: "submit", text: "Sign in" }));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.textContent = "";
    const key = input.value.trim();
    try {
      const who = await api("GET", "/v1/whoami", { key });
      session.signIn(key);
      await signedIn(who);
      if (!location.hash || location.hash === "#/signin") location.hash = "#/";
      else route();
    } catch (exc) {
      input.setAttribute("aria-invalid", "true");
      error.textContent = exc instanceof ApiError && exc.status === 401
        ? "This key is unknown, expired or revoked."
        : `Could not sign in: ${exc.message}`;
      input.focus();
    }
  });
  root.append(form);
  input.focus();
}

async function signedIn(who) {
  me.name = who.name;
  me.role = who.role;
  me.features = await features();
  document.getElementById("who-name").textContent = `${who.name} · ${who.role}`;
  document.getElementById("who").hidden = false;
  const nav = document.getElementById("nav");
  nav.hidden = false;
  for (const link of nav.querySelectorAll("[data-needs]")) {
    link.hidden = !(may("admin") && me.features[link.dataset.needs]);
  }
}

function signOut(message) {
  if (leaving) leaving();
  leaving = null;
  session.signOut();
  me.name = "";
  me.role = "";
  document.getElementById("who").hidden = true;
  document.getElementById("nav").hidden = true;
  signInPage(message);
}

async function route() {
  if (leaving) leaving();
  leaving = null;
  if (!session.key()) {
    signInPage();
    return;
  }
  const path = decodeURIComponent(location.hash.replace(/^#/, "")) || "/";
  for (const [pattern, section, page] of ROUTES) {
    const match = path.match(pattern);
    if (!match) continue;
    for (const link of document.querySelectorAll("#nav a")) {
      if (link.dataset.page === section) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
    const controller = new AbortController();
    const timers = [];
    const ctx = {
      root: clear(main()),
      signal: controller.signal,
      /** Calls `fn` every `ms` until the page is left. */
      every: (ms, fn) => timers.push(setInterval(fn, ms)),
    };
    leaving = () => {
      controller.abort();
      timers.forEach(clearInterval);
    };
    try {
      await page()(ctx, ...match.slice(1));
    } catch (exc) {
      if (controller.signal.aborted) return;
      ctx.root.append(h("p", { class: "error", role: "alert", text: exc.message }));
    }
    return;
  }
  clear(main()).append(h("h1", { text: "Not found" }), h("p", {}, h("a", { href: "#/", text: "Back to the schedule" })));
}

async function start() {
  hooks.unauthenticated = () => signOut("Your key stopped working (revoked or expired): sign in again.");
  document.getElementById("sign-out").addEventListener("click", () => {
    signOut("Signed out.");
    history.replaceState(null, "", "#/");
  });
  window.addEventListener("hashchange", route);
  const key = session.key();
  if (key) {
    try {
      await signedIn(await api("GET", "/v1/whoami"));
    } catch (exc) {
      if (!(exc instanceof ApiError && exc.status === 401)) say(exc.message, "error");
      return;
    }
  }
  route();
}

start();
