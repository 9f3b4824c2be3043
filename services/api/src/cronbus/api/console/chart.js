// Small SVG charts drawn here: bars over the last runs, and a success-rate ring.

const NS = "http://www.w3.org/2000/svg";

function svg(tag, attrs = {}) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  return el;
}

/** Bars of `values` (oldest left; null leaves a gap), scaled to the largest, with its label. */
export function barChart(title, values, { unit = "ms", format = (v) => `${Math.round(v)} ${unit}`, classOf = () => "" } = {}) {
  const width = 320;
  const height = 120;
  const top = 14;
  const max = Math.max(1, ...values.filter((v) => v !== null));
  const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", class: "chart", "aria-label": `${title}: ${values.length} runs, highest ${format(max)}` });
  const t = svg("title");
  t.textContent = title;
  root.append(t);
  root.append(svg("line", { x1: 0, y1: height - 0.5, x2: width, y2: height - 0.5, class: "axis" }));
  const label = svg("text", { x: 2, y: 10, class: "chart-label" });
  label.textContent = `max ${format(max)}`;
  root.append(label);
  const step = width / Math.max(values.length, 12); // a few runs do not make one wide slab
  values.forEach((v, i) => {
    if (v === null) return;
    const bar = Math.max(1, ((height - top) * v) / max);
    const rect = svg("rect", { x: i * step + 1, y: height - bar, width: Math.max(1, step - 2), height: bar, class: `bar ${classOf(i)}` });
    const tip = svg("title");
    tip.textContent = format(v);
    rect.append(tip);
    root.append(rect);
  });
  return root;
}

/** A ring showing `ok` of `total`, with the percentage inside. */
export function rateRing(title, ok, total) {
  const r = 40;
  const c = 2 * Math.PI * r;
  const share = total ? ok / total : 0;
  const root = svg("svg", { viewBox: "0 0 100 100", role: "img", class: "chart ring", "aria-label": `${title}: ${ok} of ${total}` });
  const t = svg("title");
  t.textContent = title;
  root.append(t);
  root.append(svg("circle", { cx: 50, cy: 50, r, class: "ring-back" }));
  root.append(svg("circle", { cx: 50, cy: 50, r, class: "ring-ok", "stroke-dasharray": `${c * share} ${c}`, transform: "rotate(-90 50 50)" }));
  const text = svg("text", { x: 50, y: 55, "text-anchor": "middle", class: "ring-text" });
  text.textContent = total ? `${Math.round(share * 100)}%` : "—";
  root.append(text);
  return root;
}
