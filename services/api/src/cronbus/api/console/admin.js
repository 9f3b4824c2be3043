// Admin pages, shown only when the server has the endpoints: the activity (audit) log and
// API keys (a new key's secret is shown once, right after it is made).

import { api, withQuery } from "./api.js";
import { ago, append, clear, confirmDialog, h, say, when } from "./dom.js";

export async function activityPage(ctx) {
  document.title = "Activity · cronbus";
  const body = h("tbody");
  const pager = h("p", { class: "pager" });
  const filters = { actor: "", action: "", job_id: "" };
  const inputs = Object.fromEntries(Object.keys(filters).map((k) => [k, h("input", { id: `a-${k}`, name: k })]));
  const form = h("form", { class: "filters", role: "search", "aria-label": "Filter activity" },
    [["actor", "Who"], ["action", "Action"], ["job_id", "Job id"]].map(([k, label]) =>
      h("div", { class: "field" }, h("label", { for: `a-${k}`, text: label }), inputs[k])),
    h("button", { type: "submit", text: "Apply" }));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    for (const k of Object.keys(filters)) filters[k] = inputs[k].value.trim();
    cursors.length = 1;
    load(0).catch((exc) => say(exc.message, "error"));
  });
  append(ctx.root, [h("h1", { text: "Activity" }), form,
    h("div", { class: "scroll" }, h("table", {},
      h("thead", {}, h("tr", {}, ["When", "Who", "What", "Job", "Detail"].map((t) => h("th", { scope: "col", text: t })))), body)), pager]);

  const cursors = [null];
  async function load(at) {
    const page = await api("GET", withQuery("/v1/audit", { ...filters, cursor: cursors[at], limit: 50 }), { signal: ctx.signal });
    cursors[at + 1] = page.next;
    clear(body);
    if (!page.items.length) body.append(h("tr", {}, h("td", { colspan: 5, class: "muted", text: "Nothing recorded." })));
    for (const item of page.items) {
      body.append(h("tr", {},
        h("td", { title: item.at, text: `${when(item.at)} (${ago(item.at)})` }), h("td", { text: item.actor }),
        h("td", {}, h("code", { text: item.action })),
        h("td", {}, item.job_id ? h("a", { href: `#/jobs/${item.job_id}`, text: `${item.job_id.slice(0, 8)}${item.revision ? ` r${item.revision}` : ""}` }) : "—"),
        h("td", {}, h("code", { class: "detail", text: item.detail && Object.keys(item.detail).length ? JSON.stringify(item.detail) : "" }))));
    }
    clear(pager).append(
      h("button", { type: "button", disabled: at === 0, onclick: () => load(at - 1), text: "← Newer" }),
      h("button", { type: "button", disabled: !page.next, onclick: () => load(at + 1), text: "Older →" }));
  }
  await load(0);
}

export async function keysPage(ctx) {
  document.title = "API keys · cronbus";
  const body = h("tbody");
  const shown = h("div", { "aria-live": "polite" });
  const error = h("p", { class: "field-error", role: "alert" });
  const name = h("input", { id: "k-name", name: "name", required: true, autocomplete: "off" });
  const role = h("select", { id: "k-role", name: "role" }, ["viewer", "operator", "admin"].map((r) => h("option", { value: r, text: r })));
  const expires = h("input", { id: "k-expires", name: "expires_at", placeholder: "2030-01-01T00:00:00Z (optional)" });
  const form = h("form", { class: "filters", "aria-label": "New API key" },
    h("div", { class: "field" }, h("label", { for: "k-name", text: "Name" }), name),
    h("div", { class: "field" }, h("label", { for: "k-role", text: "Role" }), role),
    h("div", { class: "field" }, h("label", { for: "k-expires", text: "Expires at" }), expires),
    h("button", { type: "submit", text: "Create key" }));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    error.textContent = "";
    try {
      const made = await api("POST", "/v1/keys", { body: { name: name.value.trim(), role: role.value, expires_at: expires.value.trim() || null } });
      clear(shown).append(h("div", { class: "card secret" },
        h("p", {}, "Key ", h("strong", { text: made.name }), ` (${made.role}). Copy it now: it is not shown again.`),
        h("input", { readonly: true, value: made.key, "aria-label": "the new key", class: "key", onfocus: (ev) => ev.target.select() })));
      form.reset();
      await load();
    } catch (exc) {
      error.textContent = exc.fields.length ? exc.fields.map((f) => `${f.field}: ${f.reason}`).join("; ") : exc.message;
    }
  });
  append(ctx.root, [h("h1", { text: "API keys" }), form, error, shown,
    h("div", { class: "scroll" }, h("table", {},
      h("thead", {}, h("tr", {}, ["Name", "Role", "Created", "Expires", "State", ""].map((t) => h("th", { scope: "col", text: t })))), body))]);

  async function load() {
    const items = [];
    let cursor = null;
    for (let i = 0; i < 20; i += 1) {
      const page = await api("GET", withQuery("/v1/keys", { cursor, limit: 200 }), { signal: ctx.signal });
      items.push(...page.items);
      cursor = page.next;
      if (!cursor) break;
    }
    clear(body);
    if (!items.length) body.append(h("tr", {}, h("td", { colspan: 6, class: "muted", text: "Only the bootstrap admin key exists." })));
    for (const key of items) {
      const expired = key.expires_at && new Date(key.expires_at) < new Date();
      body.append(h("tr", {},
        h("td", { text: key.name }), h("td", { text: key.role }),
        h("td", { text: `${when(key.created_at)}${key.created_by ? ` by ${key.created_by}` : ""}` }),
        h("td", { text: key.expires_at ? when(key.expires_at) : "never" }),
        h("td", { text: key.revoked_at ? `revoked ${ago(key.revoked_at)}` : expired ? "expired" : "active" }),
        h("td", {}, key.revoked_at ? null : h("button", {
          type: "button", class: "small danger", "aria-label": `Revoke ${key.name}`, text: "Revoke",
          onclick: async () => {
            if (!(await confirmDialog(`Revoke the key ${key.name}? Whoever uses it is refused from now on.`, "Revoke"))) return;
            try {
              await api("DELETE", `/v1/keys/${key.id}`);
              say(`${key.name} revoked.`);
              await load();
            } catch (exc) {
              say(exc.message, "error");
            }
          },
        }))));
    }
  }
  await load();
}
