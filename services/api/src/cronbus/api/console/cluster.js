// The cluster: the scheduler's leader and progress, and the runners. Refreshes itself.

import { api } from "./api.js";
import { ago, append, clear, h, ms, when } from "./dom.js";

export async function clusterPage(ctx) {
  document.title = "Cluster · cronbus";
  const scheduler = h("section", { class: "card", "aria-labelledby": "sched-title" });
  const runners = h("section", { "aria-labelledby": "runners-title" });
  const history = h("section", { class: "card", "aria-labelledby": "history-title" });
  const updated = h("span", { class: "muted", "aria-live": "off" });
  append(ctx.root, [h("div", { class: "title" }, h("h1", { text: "Cluster" }), updated),
    h("div", { class: "columns" }, scheduler, history), runners]);

  async function load() {
    const status = await api("GET", "/v1/status", { signal: ctx.signal });
    const row = (k, v) => [h("dt", { text: k }), h("dd", {}, v ?? "—")];
    const s = status.scheduler;
    clear(scheduler).append(h("h2", { id: "sched-title", text: "Scheduler" }), s
      ? h("dl", {},
        row("Leader", h("strong", { id: "leader", text: s.leader })), row("Lease revision", String(s.lease_revision)),
        row("Jobs", String(s.jobs)), row("Watermark", s.watermark ? `${when(s.watermark)} (${ago(s.watermark)})` : null),
        row("Dispatch lag", ms(s.dispatch_lag_ms)), row("Dispatched", String(s.dispatched_total)),
        row("Reported", ago(s.updated_at)),
        row("Schedule errors", Object.keys(s.schedule_errors).length
          ? h("ul", {}, Object.entries(s.schedule_errors).map(([job, reason]) => h("li", {}, h("a", { href: `#/jobs/${job}`, text: job.slice(0, 8) }), `: ${reason}`)))
          : "none"))
      : h("p", { class: "warn", text: "No scheduler leader has reported yet." }));
    const hist = status.history;
    clear(history).append(h("h2", { id: "history-title", text: "History" }), hist
      ? h("dl", {}, row("Rejected events", String(hist.rejected_events)), row("Cleaned events", String(hist.sanitized_events)),
        row("Last rejected", hist.last_rejected_at ? when(hist.last_rejected_at) : "never"))
      : h("p", { class: "warn", text: "The history database cannot be read right now." }));
    clear(runners).append(h("h2", { id: "runners-title", text: `Runners (${status.runners.length})` }),
      h("div", { class: "scroll" }, h("table", {},
        h("thead", {}, h("tr", {}, ["Runner", "Host", "Pools", "Load", "Version", "Started", "Last seen"].map((t) => h("th", { scope: "col", text: t })))),
        h("tbody", {}, status.runners.length ? status.runners.map((r) => h("tr", {},
          h("td", { text: r.id }), h("td", { text: `${r.host} (pid ${r.pid})` }), h("td", { text: r.pools.join(", ") }),
          h("td", { title: r.http_slots ? `${r.slots} slots + ${r.http_slots} for HTTP runs` : "" },
            h("meter", { min: 0, max: r.capacity || 1, value: r.running, "aria-label": `load of ${r.id}` }), ` ${r.running}/${r.capacity}`),
          h("td", { text: r.version }), h("td", { text: ago(r.started_at) }), h("td", { text: ago(r.updated_at) })))
          : h("tr", {}, h("td", { colspan: 7, class: "warn", text: "No runner is alive: nothing will run." }))))));
    updated.textContent = `updated ${new Date().toLocaleTimeString()}`;
  }

  await load();
  ctx.every(2000, () => load().catch((exc) => { updated.textContent = `not updated: ${exc.message}`; }));
}
