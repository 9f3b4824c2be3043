// The schedule: every job, paged by the server, with search and filters, each row with its
// next fire (in the job's zone and the browser's), its last outcome and a pause/resume toggle.

import { api, withQuery } from "./api.js";
import { may, me } from "./app.js";
import { ago, append, browserZone, clear, h, say, statusBadge, when } from "./dom.js";

const PAGE = 50;

export async function schedulePage(ctx) {
  document.title = "Schedule · cronbus";
  const params = new URLSearchParams(location.hash.split("?")[1] || "");
  const filters = {
    q: params.get("q") || "", state: params.get("state") || "",
    pool: params.get("pool") || "", label: params.get("label") || "",
  };
  const cursors = [null]; // the cursor of each page seen, for "previous"
  const body = h("tbody");
  const pager = h("p", { class: "pager" });
  const count = h("span", { class: "muted", "aria-live": "polite" });

  const field = (name, label, input) => h("div", { class: "field" }, h("label", { for: `f-${name}`, text: label }), input);
  const search = h("input", { id: "f-q", type: "search", value: filters.q, placeholder: "name contains…" });
  const state = h("select", { id: "f-state" },
    ["", "scheduled", "paused", "finished", "failing"].map((s) =>
      h("option", { value: s, text: s || "any", selected: s === filters.state })));
  const pool = h("input", { id: "f-pool", value: filters.pool, placeholder: "default" });
  const label = h("input", { id: "f-label", value: filters.label, placeholder: "team=data" });
  const form = h("form", { class: "filters", role: "search", "aria-label": "Filter jobs" },
    field("q", "Search", search), field("state", "State", state), field("pool", "Pool", pool),
    field("label", "Label", label), h("button", { type: "submit", text: "Apply" }));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    filters.q = search.value.trim();
    filters.state = state.value;
    filters.pool = pool.value.trim();
    filters.label = label.value.trim();
    cursors.length = 1;
    const q = new URLSearchParams(Object.entries(filters).filter(([, v]) => v)).toString();
    history.replaceState(null, "", q ? `#/?${q}` : "#/");
    load(0);
  });
  state.addEventListener("change", () => form.requestSubmit());

  append(ctx.root, [
    h("div", { class: "title" },
      h("h1", { text: "Schedule" }),
      may("admin") ? h("a", { class: "button", href: "#/jobs/new", text: "New job" }) : null),
    me.features.filters ? form : h("p", { class: "muted", text: "This server cannot filter jobs yet." }),
    h("div", { class: "scroll" },
      h("table", { class: "jobs" },
        h("caption", { class: "sr-only", text: "Jobs" }),
        h("thead", {}, h("tr", {},
          ["Job", "Schedule", "State", `Next fire (job's zone / ${browserZone})`, "Last run", ""].map((t) => h("th", { scope: "col", text: t })))),
        body)),
    h("div", { class: "pager-row" }, count, pager),
  ]);

  let index = 0;
  async function load(at) {
    index = at;
    const page = await api("GET", withQuery("/v1/jobs", {
      limit: PAGE, cursor: cursors[at],
      ...(me.features.filters ? { q: filters.q, state: filters.state, pool: filters.pool, label: filters.label } : {}),
    }), { signal: ctx.signal });
    cursors[at + 1] = page.next;
    clear(body);
    if (!page.items.length) {
      body.append(h("tr", {}, h("td", { colspan: 6, class: "muted", text: at ? "No more jobs." : "No jobs match." })));
    }
    for (const job of page.items) body.append(row(job));
    count.textContent = `page ${at + 1} · ${page.items.length} job${page.items.length === 1 ? "" : "s"}`;
    clear(pager).append(
      h("button", { type: "button", disabled: at === 0, onclick: () => load(at - 1), text: "← Previous" }),
      h("button", { type: "button", disabled: !page.next, onclick: () => load(at + 1), text: "Next →" }));
  }

  function row(job) {
    const next = job.next_fires[0];
    const last = job.last_run;
    const tr = h("tr", { "data-job": job.id },
      h("td", {}, h("a", { href: `#/jobs/${job.id}`, text: job.name }),
        Object.entries(job.labels).map(([k, v]) => h("span", { class: "label", text: v ? `${k}=${v}` : k }))),
      h("td", {}, h("code", { text: job.schedule }), h("div", { class: "muted", text: `${job.timezone} · ${job.pool}` })),
      h("td", {}, h("span", { class: `state st-${job.state}`, text: job.state })),
      h("td", {}, next ? [h("div", { text: when(next, job.timezone) }), h("div", { class: "muted", text: `${when(next)} · ${ago(next)}` })] : h("span", { class: "muted", text: "—" })),
      h("td", {}, last ? [h("a", { href: `#/runs/${last.id}` }, statusBadge(last.status)), " ", h("span", { class: "muted", title: last.finished_at || last.slot, text: ago(last.finished_at || last.slot) })] : h("span", { class: "muted", text: "never run" })),
      h("td", {}, toggle(job)));
    return tr;
  }

  function toggle(job) {
    if (!may("operator")) return null;
    const paused = job.paused;
    return h("button", {
      type: "button", class: "small", "aria-pressed": String(paused),
      "aria-label": `${paused ? "Resume" : "Pause"} ${job.name}`,
      text: paused ? "Resume" : "Pause",
      onclick: async (e) => {
        e.target.disabled = true;
        try {
          const changed = await api("POST", `/v1/jobs/${job.id}/${paused ? "resume" : "pause"}`);
          e.target.closest("tr").replaceWith(row(changed));
          say(`${changed.name} ${changed.paused ? "paused" : "resumed"}.`);
        } catch (exc) {
          e.target.disabled = false;
          say(exc.message, "error");
        }
      },
    });
  }

  await load(0);
  ctx.every(10000, () => load(index).catch(() => {}));
}
