// Livestream cold-chain widget: plain ES2020, no build step, no external resources.
// Reads a LotView (hub/traceability/model.py) from the hub's public API, live over Server-Sent
// Events, with short polling as the fallback, and keeps the last known state when the hub is away.
"use strict";

(() => {
  const params = new URLSearchParams(window.location.search);
  const LOT = (params.get("lot") || "").trim();
  const LANG = params.get("lang") === "en" ? "en" : "zh";
  const LAYOUT = params.get("layout") === "landscape" ? "landscape" : "portrait";
  const TRANSPARENT = params.get("transparent") === "1";
  // page=1: opened from the lot's QR code in a phone browser (scrolls, reading-sized type).
  const PAGE = params.get("page") === "1";
  // Base URL of the hub; empty means the origin that served this page.
  const API = (params.get("api") || "").replace(/\/+$/, "");

  const POLL_MS = 5000; // fallback polling period
  const STALE_AFTER_MS = 10000; // no contact with the hub for this long: show "connection lost"
  const SSE_FAILURES_BEFORE_GIVING_UP = 3; // consecutive EventSource errors without a message
  const SSE_RETRY_AFTER_MS = 60000; // after giving up, try the push channel again this much later
  const SSE_OPEN = 1; // EventSource.readyState values (the constructor may be missing)
  const SSE_CLOSED = 2;

  const TEXT = {
    zh: {
      title: "冷链温度",
      badge: {
        intact: "冷链完好",
        excursion_compensated: "温度异常·已赔付",
        excursion: "温度异常·处理中",
      },
      kind: {
        farm: "产地",
        packhouse: "包装厂",
        cold_store: "冷库",
        reefer_truck: "冷藏车",
        courier_box: "快递箱",
        unknown: "途中",
      },
      now: "当前位置",
      qr: "扫码查看全程温度",
      stale: "数据更新中断，显示最近状态",
      loading: "正在获取冷链数据…",
      unreachable: "暂时无法连接冷链数据，正在重试…",
      notFound: "未找到该批次的冷链记录",
      missingLot: "缺少参数 lot（批次号）",
      excursion: "温度异常",
      noBand: "暂无温度",
      locale: "zh-CN",
    },
    en: {
      title: "Cold chain",
      badge: {
        intact: "Cold chain intact",
        excursion_compensated: "Excursion, compensated",
        excursion: "Excursion, being handled",
      },
      kind: {
        farm: "Farm",
        packhouse: "Packhouse",
        cold_store: "Cold store",
        reefer_truck: "Reefer truck",
        courier_box: "Courier box",
        unknown: "In transit",
      },
      now: "Now at",
      qr: "Scan for the full temperature trail",
      stale: "Connection lost — showing last known state",
      loading: "Loading cold-chain data…",
      unreachable: "Cannot reach the cold-chain data, retrying…",
      notFound: "No cold-chain record for this lot",
      missingLot: "Missing parameter: lot",
      excursion: "Excursion",
      noBand: "No readings yet",
      locale: "en-GB",
    },
  }[LANG];

  // Line icons (24x24, stroke = currentColor); constants only, never built from data.
  const ICONS = {
    farm: '<path d="M12 21v-9"/><path d="M12 12C12 7 8 4 3 4c0 5 4 8 9 8z"/><path d="M12 11c0-4 3-7 9-7 0 5-3 7-9 7"/><path d="M5 21h14"/>',
    packhouse: '<path d="M3 11l9-7 9 7"/><path d="M5 10v10h14V10"/><path d="M10 20v-6h4v6"/>',
    cold_store:
      '<path d="M12 2v20M3.5 7l17 10M20.5 7l-17 10"/><path d="M9 3.5l3 2.5 3-2.5M9 20.5l3-2.5 3 2.5"/>',
    reefer_truck:
      '<path d="M2 5h12v11H2z"/><path d="M14 9h4l4 4v3h-8z"/><circle cx="6" cy="18" r="2"/><circle cx="17" cy="18" r="2"/>',
    courier_box: '<path d="M3 7l9-4 9 4v10l-9 4-9-4z"/><path d="M3 7l9 4 9-4M12 11v10"/><path d="M7.5 5l9 4"/>',
    unknown: '<circle cx="12" cy="12" r="5"/>',
  };
  const WARN_ICON =
    '<svg viewBox="0 0 24 24" aria-hidden="true"><path d="M12 2.5L1.5 21h21z" fill="currentColor"/>' +
    '<path d="M12 9v6M12 17.5v1" stroke="#111" stroke-width="2.5" stroke-linecap="round"/></svg>';

  const $ = (id) => document.getElementById(id);
  const icon = (kind) =>
    '<svg class="icon" viewBox="0 0 24 24" aria-hidden="true" fill="none" stroke="currentColor" stroke-width="2" ' +
    'stroke-linecap="round" stroke-linejoin="round">' +
    (ICONS[kind] || ICONS.unknown) +
    "</svg>";
  const fmt = (c) => (typeof c === "number" && Number.isFinite(c) ? c.toFixed(1) : "--");
  const kindLabel = (kind) => TEXT.kind[kind] || TEXT.kind.unknown;

  function clockTime(ms) {
    const d = new Date(ms);
    const opts = { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false };
    if (Date.now() - ms > 20 * 3600 * 1000) Object.assign(opts, { month: "2-digit", day: "2-digit" });
    return d.toLocaleString(TEXT.locale, opts);
  }

  // ---- state -------------------------------------------------------------------------------
  let view = null; // last LotView received
  let lastContactMs = 0; // last time the hub answered (SSE open or message, poll success)
  let source = null; // the EventSource, while we use it
  let sseFailures = 0;
  let sseRetryAtMs = 0;
  let pollInFlight = false;

  const lotUrl = (suffix) => `${API}/public/v1/lots/${encodeURIComponent(LOT)}${suffix}`;

  function placeholder(text) {
    const el = $("placeholder");
    el.textContent = text;
    el.hidden = view !== null;
  }

  function receive(json) {
    let next;
    try {
      next = JSON.parse(json);
    } catch (err) {
      return; // a truncated message: the next one will do
    }
    if (!next || typeof next !== "object" || !Array.isArray(next.legs)) return;
    lastContactMs = Date.now();
    // SSE and a poll may cross: never go back to an older state.
    if (view && typeof next.updated_ms === "number" && next.updated_ms < view.updated_ms) return;
    view = next;
    render();
  }

  // ---- rendering (textContent only: product names come from shops) --------------------------
  function render() {
    const root = $("widget");
    root.dataset.status = view.status;
    $("placeholder").hidden = true;

    $("product").textContent = (LANG === "en" ? view.product_en || view.product_zh : view.product_zh) || view.lot_id;

    const badge = $("badge");
    badge.className = `badge badge-${view.status}`;
    badge.dataset.status = view.status;
    badge.textContent = TEXT.badge[view.status] || view.status;

    $("temp").textContent = fmt(view.current_temperature_c);
    const node = $("node");
    node.dataset.kind = view.current_node_kind;
    node.innerHTML = icon(view.current_node_kind);
    const label = document.createElement("span");
    label.className = "node-label";
    label.textContent = kindLabel(view.current_node_kind);
    node.appendChild(label);

    const chain = $("chain");
    chain.replaceChildren(...view.legs.map(renderLeg));

    const qr = $("qr");
    if (view.qr_svg_url) {
      // A relative URL is the hub's: resolve it against the api base when one is given.
      const src = new URL(view.qr_svg_url, API ? `${API}/` : window.location.href).href;
      if (qr.getAttribute("src") !== src) qr.src = src;
      qr.hidden = false;
    }
    $("qr-caption").textContent = TEXT.qr;
    updateStale();
  }

  function renderLeg(leg) {
    const li = document.createElement("li");
    const kind = leg.node && leg.node.kind ? leg.node.kind : "unknown";
    const excursions = Array.isArray(leg.excursions) ? leg.excursions : [];
    li.className = "leg";
    li.dataset.kind = kind;
    if (leg.end_ms === null || leg.end_ms === undefined) li.classList.add("leg-current");
    if (excursions.length) li.classList.add("leg-excursion");
    li.innerHTML = icon(kind);

    const text = document.createElement("div");
    text.className = "leg-text";
    const name = document.createElement("div");
    name.className = "leg-name";
    const nodeLabel = LANG === "en" ? leg.node && leg.node.label_en : leg.node && leg.node.label_zh;
    name.textContent = nodeLabel || kindLabel(kind);
    const band = document.createElement("div");
    band.className = "leg-band";
    band.textContent = leg.band ? `${fmt(leg.band.min_c)}–${fmt(leg.band.max_c)} °C` : TEXT.noBand;
    text.append(name, band);
    li.appendChild(text);

    if (excursions.length) {
      const warn = document.createElement("span");
      warn.className = "warn";
      warn.setAttribute("role", "img");
      const peaks = excursions.map((e) => e.peak_c).filter((p) => typeof p === "number");
      warn.title = peaks.length ? `${TEXT.excursion} ${fmt(Math.max(...peaks))} °C` : TEXT.excursion;
      warn.setAttribute("aria-label", warn.title);
      warn.innerHTML = WARN_ICON;
      li.appendChild(warn);
    }
    return li;
  }

  // "Stale": we have a state, the push channel is not open, and the hub has been silent for a while.
  function updateStale() {
    const sseOpen = source !== null && source.readyState === SSE_OPEN;
    const stale = view !== null && !sseOpen && Date.now() - lastContactMs > STALE_AFTER_MS;
    const el = $("stale");
    $("widget").dataset.connection = stale ? "lost" : "live";
    if (stale) {
      const at = typeof view.updated_ms === "number" ? view.updated_ms : lastContactMs;
      const time = document.createElement("span");
      time.className = "stale-time";
      time.textContent = clockTime(at);
      el.replaceChildren(`${TEXT.stale} · `, time);
    }
    el.hidden = !stale;
    document.body.classList.toggle("is-stale", stale);
  }

  // ---- transports --------------------------------------------------------------------------
  function openEventSource() {
    if (typeof window.EventSource !== "function") return;
    source = new EventSource(lotUrl("/events"));
    source.onopen = () => {
      lastContactMs = Date.now();
      updateStale();
    };
    const onMessage = (event) => {
      sseFailures = 0;
      receive(event.data);
    };
    source.addEventListener("lot", onMessage);
    source.onmessage = onMessage; // tolerate unnamed events too
    source.onerror = () => {
      // EventSource reconnects by itself; give up on it only when it keeps failing or is closed
      // for good (HTTP error, wrong content type). Polling covers the gap meanwhile.
      sseFailures += 1;
      if (source.readyState === SSE_CLOSED || sseFailures >= SSE_FAILURES_BEFORE_GIVING_UP) {
        source.close();
        source = null;
        sseRetryAtMs = Date.now() + SSE_RETRY_AFTER_MS;
      }
      updateStale();
    };
  }

  async function poll() {
    if (pollInFlight) return;
    pollInFlight = true;
    try {
      // no-cache: revalidate with the ETag every time (a 304 comes back here as the cached 200).
      const response = await fetch(lotUrl(""), { cache: "no-cache", headers: { Accept: "application/json" } });
      if (response.status === 404) {
        lastContactMs = Date.now();
        placeholder(TEXT.notFound);
      } else if (response.ok) {
        receive(await response.text());
      } else if (!view) {
        placeholder(TEXT.unreachable);
      }
    } catch (err) {
      if (!view) placeholder(TEXT.unreachable); // network error: keep whatever we show
    } finally {
      pollInFlight = false;
      updateStale();
    }
  }

  // Every POLL_MS: poll unless the push channel is open; reopen the push channel when it is due.
  function tick() {
    if (source === null && typeof window.EventSource === "function" && Date.now() >= sseRetryAtMs) {
      sseFailures = 0;
      openEventSource();
    }
    if (source === null || source.readyState !== SSE_OPEN) poll();
  }

  function start() {
    document.documentElement.lang = LANG === "en" ? "en" : "zh-CN";
    document.title = `${TEXT.title} · ${LOT}`;
    document.body.className = `layout-${LAYOUT}${TRANSPARENT ? " transparent" : ""}${PAGE ? " page" : ""}`;
    document.documentElement.classList.toggle("page", PAGE);
    $("qr-caption").textContent = TEXT.qr;
    if (!LOT) {
      placeholder(TEXT.missingLot);
      return;
    }
    placeholder(TEXT.loading);
    openEventSource();
    poll(); // first paint without waiting for the first push (and the only way without EventSource)
    window.setInterval(tick, POLL_MS);
    window.setInterval(updateStale, 1000);
  }

  start();
})();
