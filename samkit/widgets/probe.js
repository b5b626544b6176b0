// samkit prompt probe: the browser half. It draws what Python sends (the `view` trait and
// bit-packed masks) and reports gestures as messages; every rule lives in Python.
// Plain ES module, no build step: anywidget loads this file as it is.

const DRAG_PX = 5; // a press that moves further than this is a box drag, not a click
const MASK_ALPHA = 0.5;
const NAME_RGB = [255, 140, 0]; // the class name prompt's mask: orange, apart from the candidates' palette
const NAME_ALPHA = 0.4;
const THUMB_PX = 132;

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

function bytesOf(value) {
  // ipywidgets hands binary traits over as DataView (or ArrayBuffer / typed array).
  if (!value) return new Uint8Array(0);
  if (value instanceof Uint8Array) return value;
  if (value instanceof ArrayBuffer) return new Uint8Array(value);
  if (ArrayBuffer.isView(value)) return new Uint8Array(value.buffer, value.byteOffset, value.byteLength);
  return new Uint8Array(0);
}

// One bit-packed mask (numpy packbits order: most significant bit first) -> an RGBA canvas.
function maskCanvas(bytes, index, width, height, rgb, alpha = MASK_ALPHA) {
  const canvas = el("canvas");
  canvas.width = width;
  canvas.height = height;
  const context = canvas.getContext("2d");
  const image = context.createImageData(width, height);
  const pixels = new Uint32Array(image.data.buffer);
  const stride = Math.ceil((width * height) / 8);
  const start = index * stride;
  const colour = ((Math.round(alpha * 255) << 24) | (rgb[2] << 16) | (rgb[1] << 8) | rgb[0]) >>> 0; // little-endian RGBA
  const total = width * height;
  for (let byteIndex = 0; byteIndex < stride; byteIndex++) {
    const byte = bytes[start + byteIndex];
    if (byte === 0) continue;
    const base = byteIndex * 8;
    for (let bit = 0; bit < 8; bit++) {
      if (byte & (128 >> bit) && base + bit < total) pixels[base + bit] = colour;
    }
  }
  context.putImageData(image, 0, 0);
  return canvas;
}

// Jitter frequency map (uint8, 0 = never, 255 = always): stable pixels blue, uncertain ones red.
function spreadCanvas(bytes, width, height) {
  const canvas = el("canvas");
  canvas.width = width;
  canvas.height = height;
  const context = canvas.getContext("2d");
  const image = context.createImageData(width, height);
  for (let i = 0; i < width * height; i++) {
    const value = bytes[i];
    if (!value) continue;
    const o = i * 4;
    if (value === 255) {
      image.data.set([30, 144, 255, 110], o);
    } else {
      const uncertainty = 4 * (value / 255) * (1 - value / 255); // 1 when half the samples cover it
      image.data.set([230, 40, 40, Math.round(90 + 165 * uncertainty)], o);
    }
  }
  context.putImageData(image, 0, 0);
  return canvas;
}

function fmt(value, digits = 3) {
  return value === undefined || value === null ? "" : Number(value).toFixed(digits);
}

function render({ model, el: host }) {
  const viewId = Math.random().toString(36).slice(2, 10);
  let seq = 0;
  const pending = new Map(); // seq -> performance.now() of the gesture
  let shown = null; // candidate shown on the main canvas (null = SAM's result)
  let image = null; // HTMLImageElement of the current image
  let overlays = []; // 4 mask canvases at image resolution: 3 candidates + single
  let variantOverlays = [];
  let variantOverlaysKey = null;
  let spreadOverlay = null;
  let nameOverlay = null; // the class name prompt's mask, drawn over the clicks' answer
  let drag = null;

  const root = el("div", { class: "samkit-probe", tabindex: "0", "data-lm-suppress-shortcuts": "true" });
  const status = el("div", { class: "sp-status" });
  const message = el("div", { class: "sp-message" });
  const canvas = el("canvas", { class: "sp-canvas" });
  const cards = el("div", { class: "sp-cards" });
  const timing = el("div", { class: "sp-timing", text: "click on the image" });
  const jitterPanel = el("div", { class: "sp-jitter" });
  const variantsPanel = el("div", { class: "sp-variants" });
  const textArea = el("textarea", { class: "sp-text", rows: "10", spellcheck: "false" });
  const ioTitle = el("div", { class: "sp-io-title" });
  const importButton = el("button", { class: "sp-do-import", text: "Load these prompts" });
  const ioPanel = el("div", { class: "sp-io", hidden: "" }, ioTitle, textArea,
    el("div", { class: "sp-row" }, importButton, el("button", { text: "Close", onclick: () => showIO(null) })));

  const button = (label, title, onClick) => el("button", { text: label, title, onclick: onClick });
  const undoButton = button("Undo", "z", () => send({ type: "undo" }));
  const redoButton = button("Redo", "y", () => send({ type: "redo" }));
  const multimask = el("input", { type: "checkbox", class: "sp-multimask" });
  const feed = el("input", { type: "checkbox", class: "sp-feed" });
  const jitter = el("input", { type: "range", class: "sp-jitter-slider", min: "0", max: "20", step: "0.5", value: "0" });
  const jitterLabel = el("span", { class: "sp-jitter-value", text: "0 px" });
  const variantName = el("input", { type: "text", class: "sp-variant-name", placeholder: "variant name", size: "10" });
  const nameInput = el("input", { type: "text", class: "sp-name-input", placeholder: "class name, e.g. crab", size: "16" });
  const nameInfo = el("span", { class: "sp-name-info" });
  const sendName = () => send({ type: "name", name: nameInput.value.trim() || null });
  nameInput.addEventListener("keydown", (event) => { if (event.key === "Enter") sendName(); });
  const nameRow = el("div", { class: "sp-row sp-name-row", hidden: "" },
    el("span", { text: "prompt by name: " }), nameInput,
    el("button", { text: "Segment", title: "Enter: the text model's mask for this class name", onclick: sendName }),
    el("button", { text: "Remove name", onclick: () => { nameInput.value = ""; sendName(); } }), nameInfo);
  multimask.addEventListener("change", () => send({ type: "options", multimask: multimask.checked }));
  feed.addEventListener("change", () => send({ type: "options", feed_mask: feed.checked }));
  jitter.addEventListener("input", () => { jitterLabel.textContent = `${jitter.value} px`; });
  jitter.addEventListener("change", () => send({ type: "options", jitter: Number(jitter.value) }));

  const toolbar = el("div", { class: "sp-toolbar" },
    undoButton, redoButton,
    button("Clear", "c", () => send({ type: "clear" })),
    button("Remove box", "x", () => send({ type: "remove_box" })),
    el("label", { title: "m" }, multimask, " multimask"),
    el("label", { title: "f: pass the previous result's low-res mask as mask_input" }, feed, " feed previous mask"),
    el("label", { class: "sp-jitter-control", title: "std of the noise added to every click and box corner" },
      "jitter σ ", jitter, " ", jitterLabel),
    variantName,
    button("Save variant", "s", () => saveVariant()),
    el("span", { class: "sp-spacer" }),
    button("Export", "JSON: image hash, model, prompts, options, scores", () => showIO("export")),
    button("Import", "paste an export", () => showIO("import")),
    button("Copy as Python", "the predictor.predict(...) call", () => showIO("python")),
  );
  const help = el("div", { class: "sp-help", text:
    "left click: positive point · right or shift-click: negative · drag: box · click a point: remove it · " +
    "keys (widget focused): z undo, y redo, c clear, m multimask, f feed mask, x remove box, 1-4 show a candidate, s save variant" +
    " · with a text model: type a class name, Enter" });

  root.append(status, toolbar, nameRow,
    el("div", { class: "sp-body" }, el("div", { class: "sp-main" }, canvas), cards),
    timing, message, jitterPanel, variantsPanel, ioPanel, help);
  host.append(root);

  // `event`: the gesture's DOM event; its timeStamp (same clock as performance.now()) starts the
  // click-to-drawn timer, so the time the browser took to dispatch the event counts too.
  function send(content, event = null) {
    seq += 1;
    pending.set(seq, event ? event.timeStamp : performance.now());
    model.send({ ...content, origin: viewId, seq });
  }

  function saveVariant() {
    send({ type: "save_variant", name: variantName.value.trim() || null });
    variantName.value = "";
  }

  function showIO(kind) {
    ioPanel.hidden = kind === null;
    importButton.hidden = kind !== "import";
    const view = model.get("view") || {};
    if (kind === "export") {
      ioTitle.textContent = "Export: prompts as JSON (copied to the clipboard when the browser allows it)";
      textArea.value = view.export_json || "";
    } else if (kind === "python") {
      ioTitle.textContent = "Copy as Python: the call that reproduces this view";
      textArea.value = view.python_code || "";
    } else if (kind === "import") {
      ioTitle.textContent = "Import: paste an export here, then load it";
      textArea.value = "";
    }
    if (kind === "export" || kind === "python") {
      textArea.select();
      navigator.clipboard?.writeText(textArea.value).catch(() => {});
    }
    if (kind !== null) textArea.focus();
  }
  importButton.addEventListener("click", () => send({ type: "import", json: textArea.value }));

  // ---- geometry: the canvas keeps the image's aspect ratio, so one scale maps both axes
  function displaySize() {
    const view = model.get("view") || {};
    const { width = 1, height = 1 } = view.image || {};
    const cssWidth = Math.min(view.display_width || 480, Math.max(160, root.clientWidth - THUMB_PX * 2 - 40));
    return { cssWidth, cssHeight: (cssWidth * height) / width, width, height };
  }

  function canvasPoint(event) {
    const rect = canvas.getBoundingClientRect();
    return { x: event.clientX - rect.left, y: event.clientY - rect.top, rect };
  }

  // ---- drawing
  function rebuildOverlays() {
    const view = model.get("view") || {};
    const { width, height } = view.image || {};
    const colors = view.colors || [[30, 144, 255]];
    const masks = bytesOf(model.get("masks"));
    overlays = [];
    if (view.result && masks.length) {
      for (let i = 0; i < 4; i++) overlays.push(maskCanvas(masks, i, width, height, colors[i % colors.length]));
    }
    const variantBytes = bytesOf(model.get("variant_masks"));
    const variantsKey = JSON.stringify(view.variants || []) + `${width}x${height}`;
    if (variantsKey !== variantOverlaysKey) {
      variantOverlaysKey = variantsKey;
      variantOverlays = (view.variants || []).map((_, i) =>
        maskCanvas(variantBytes, i, width, height, colors[(4 + i) % colors.length]));
    }
    const nameBytes = bytesOf(model.get("name_mask"));
    nameOverlay = view.name?.name && nameBytes.length ? maskCanvas(nameBytes, 0, width, height, NAME_RGB, NAME_ALPHA) : null;
    const spread = bytesOf(model.get("spread"));
    spreadOverlay = view.jitter && spread.length ? spreadCanvas(spread, view.jitter.width, view.jitter.height) : null;
  }

  function drawImageWith(context, w, h, overlay) {
    context.imageSmoothingEnabled = true;
    if (image && image.complete) context.drawImage(image, 0, 0, w, h);
    if (overlay) {
      context.imageSmoothingEnabled = false; // crisp mask edges
      context.drawImage(overlay, 0, 0, w, h);
    }
  }

  function drawPrompts(context, view, scale) {
    if (view.box) {
      const [x0, y0, x1, y1] = view.box.map((v) => v * scale);
      context.lineWidth = 2;
      context.strokeStyle = "#2ca02c";
      context.strokeRect(x0, y0, x1 - x0, y1 - y0);
    }
    (view.points || []).forEach(([x, y], i) => {
      const positive = view.labels[i] === 1;
      context.beginPath();
      context.arc(x * scale, y * scale, 6, 0, 2 * Math.PI);
      context.fillStyle = positive ? "#2ca02c" : "#d62728";
      context.fill();
      context.lineWidth = 1.5;
      context.strokeStyle = "white";
      context.stroke();
      context.fillStyle = "white";
      context.fillRect(x * scale - 3.5, y * scale - 0.75, 7, 1.5); // minus sign
      if (positive) context.fillRect(x * scale - 0.75, y * scale - 3.5, 1.5, 7); // plus sign
    });
  }

  function drawMain() {
    const view = model.get("view") || {};
    const { cssWidth, cssHeight, width } = displaySize();
    const ratio = window.devicePixelRatio || 1;
    canvas.style.width = `${cssWidth}px`;
    canvas.style.height = `${cssHeight}px`;
    canvas.width = Math.round(cssWidth * ratio);
    canvas.height = Math.round(cssHeight * ratio);
    canvas.dataset.imageWidth = view.image?.width;
    canvas.dataset.imageHeight = view.image?.height;
    const context = canvas.getContext("2d");
    context.setTransform(ratio, 0, 0, ratio, 0, 0);
    const result = view.result;
    const index = result ? (shown ?? result.shown) : null;
    drawImageWith(context, cssWidth, cssHeight, index !== null ? overlays[index] : null);
    if (nameOverlay) {
      context.imageSmoothingEnabled = false;
      context.drawImage(nameOverlay, 0, 0, cssWidth, cssHeight);
    }
    drawPrompts(context, view, cssWidth / width);
    if (drag && drag.moved) {
      context.setLineDash([5, 4]);
      context.strokeStyle = "#2ca02c";
      context.lineWidth = 2;
      context.strokeRect(drag.x0, drag.y0, drag.x1 - drag.x0, drag.y1 - drag.y0);
      context.setLineDash([]);
    }
  }

  function thumb(overlay, view) {
    const { width, height } = view.image;
    const thumbCanvas = el("canvas", { class: "sp-thumb" });
    const ratio = window.devicePixelRatio || 1;
    const w = THUMB_PX;
    const h = Math.round((THUMB_PX * height) / width);
    thumbCanvas.width = w * ratio;
    thumbCanvas.height = h * ratio;
    thumbCanvas.style.width = `${w}px`;
    thumbCanvas.style.height = `${h}px`;
    const context = thumbCanvas.getContext("2d");
    context.setTransform(ratio, 0, 0, ratio, 0, 0);
    drawImageWith(context, w, h, overlay);
    return thumbCanvas;
  }

  function drawCards(view) {
    cards.replaceChildren();
    const result = view.result;
    if (!result) {
      cards.append(el("div", { class: "sp-empty", text: "no prompts: click on the image" }));
      return;
    }
    const rows = [...result.candidates.map((c, i) => ({ ...c, label: `mask ${i + 1}`, index: i })),
      { ...result.single, label: "single", index: 3 }];
    const current = shown ?? result.shown;
    for (const row of rows) {
      const isPick = row.index === result.pick;
      const isResult = row.index === result.shown;
      const caption = el("div", { class: "sp-caption" },
        el("span", { class: "sp-name", text: `${isPick ? "★ " : ""}${row.label}` }),
        el("span", { class: "sp-score", text: ` ${fmt(row.score)}` }));
      const metrics = view.has_gt
        ? el("div", { class: "sp-gt", text: `IoU ${fmt(row.iou, 2)} · Dice ${fmt(row.dice, 2)}` }) : null;
      const card = el("div", {
        class: `sp-card${isResult ? " sp-result" : ""}${row.index === current ? " sp-shown" : ""}`,
        title: isPick ? "SAM's pick: highest predicted IoU" : (row.index === 3 ? "multimask=False output" : ""),
        "data-index": String(row.index),
        onclick: () => { shown = row.index; drawMain(); drawCards(model.get("view")); },
      }, thumb(overlays[row.index], view), caption, metrics,
      el("div", { class: "sp-area", text: `${row.area} px` }));
      cards.append(card);
    }
  }

  function drawJitter(view) {
    jitterPanel.replaceChildren();
    const stats = view.jitter;
    if (!stats) return;
    const changed = Math.round(stats.changed * stats.samples);
    jitterPanel.append(thumb(spreadOverlay, view), el("div", { class: "sp-jitter-stats" },
      el("div", { text: `jitter σ = ${stats.sigma} px, ${stats.samples} samples (blue: every sample, red: some)` }),
      el("div", { class: "sp-jitter-iou", text:
        `IoU to the unjittered mask: mean ${fmt(stats.iou_mean)}, min ${fmt(stats.iou_min)}, max ${fmt(stats.iou_max)}` }),
      el("div", { text: `${changed}/${stats.samples} samples changed the mask (IoU < ${stats.changed_iou})` })));
  }

  let strip = null; // the variants' thumbnails, rebuilt only when the variants change
  let stripKey = null;
  function drawVariants(view) {
    const variants = view.variants || [];
    const key = JSON.stringify(variants);
    if (key !== stripKey || !strip) {
      stripKey = key;
      strip = variantStrip(view, variants);
    }
    variantsPanel.replaceChildren();
    if (!variants.length) return;
    const { names, matrix } = view.variant_ious;
    const table = el("table", { class: "sp-iou-table" },
      el("tr", {}, el("th", { text: "IoU" }), ...names.map((n) => el("th", { text: n }))),
      ...matrix.map((row, i) => el("tr", {}, el("th", { text: names[i] }),
        ...row.map((v, j) => el("td", { text: i === j ? "" : fmt(v, 2) })))));
    variantsPanel.append(strip, table);
  }

  function variantStrip(view, variants) {
    const strip = el("div", { class: "sp-variant-strip" });
    variants.forEach((variant, i) => {
      const details = `${variant.points} pts${variant.box ? " + box" : ""} · ${fmt(variant.score)}` +
        (view.has_gt ? ` · IoU ${fmt(variant.iou, 2)}` : "");
      strip.append(el("div", { class: "sp-card sp-variant", title: "click: load these prompts" },
        thumb(variantOverlays[i], view),
        el("div", { class: "sp-caption" }, el("span", { class: "sp-name", text: variant.name }),
          el("button", { class: "sp-remove", text: "×", title: "remove",
            onclick: (event) => { event.stopPropagation(); send({ type: "remove_variant", name: variant.name }); } })),
        el("div", { class: "sp-gt", text: details })));
      strip.lastChild.addEventListener("click", () => send({ type: "load_variant", name: variant.name }));
    });
    return strip;
  }

  function drawAll() {
    const view = model.get("view") || {};
    if (!view.image) return;
    multimask.checked = !!view.options?.multimask;
    feed.checked = !!view.options?.feed_mask;
    jitter.max = String(view.options?.jitter_max ?? 20);
    if (document.activeElement !== jitter) {
      jitter.value = String(view.options?.jitter ?? 0);
      jitterLabel.textContent = `${jitter.value} px`;
    }
    undoButton.disabled = !view.can_undo;
    redoButton.disabled = !view.can_redo;
    message.textContent = view.message || "";
    message.classList.toggle("sp-error", !!view.error);
    drawMain();
    drawCards(view);
    drawJitter(view);
    drawVariants(view);
    root.dataset.version = String(view.version);
    root.dataset.points = String((view.points || []).length);
    root.dataset.hasBox = String(!!view.box);
    const name = view.name || {};
    nameRow.hidden = !name.available;
    if (document.activeElement !== nameInput) nameInput.value = name.name || "";
    nameInfo.textContent = name.name
      ? ` '${name.name}': ${name.area} px` + (name.iou !== undefined ? ` · IoU ${fmt(name.iou)} · Dice ${fmt(name.dice)}` : "")
      : "";
    root.dataset.nameArea = name.name ? String(name.area) : "";
  }

  function timingLine(view, browser) {
    const t = view.timing || {};
    const split = [`decode ${fmt(t.decode_ms, 1)}`];
    if (t.jitter_ms >= 0.05) split.push(`jitter ${fmt(t.jitter_ms, 1)}`);
    split.push(`encode ${fmt(t.encode_ms, 1)}`);
    const parts = [`kernel ${fmt(t.python_ms, 1)} ms (${split.join(", ")})`];
    if (browser) {
      parts.push(`transfer ${fmt(browser.transfer_ms, 1)} ms`, `draw ${fmt(browser.draw_ms, 1)} ms`,
        `click→drawn ${fmt(browser.total_ms, 1)} ms`);
    } else {
      parts.push("(update from Python)");
    }
    return parts.join(" · ");
  }

  function onView() {
    const received = performance.now();
    const view = model.get("view") || {};
    const sent = view.origin === viewId ? pending.get(view.seq) : undefined;
    if (sent !== undefined) pending.delete(view.seq);
    shown = null; // a new answer: show SAM's result again
    rebuildOverlays();
    drawAll();
    const drawn = performance.now();
    // Report after the frame is painted: the time a learner waits, click to masks on screen.
    requestAnimationFrame(() => {
      const painted = performance.now();
      if (sent === undefined) {
        timing.textContent = timingLine(view, null);
        return;
      }
      const python = view.timing?.python_ms ?? 0;
      const browser = {
        transfer_ms: Math.max(0, received - sent - python),
        draw_ms: painted - received,
        total_ms: painted - sent,
        build_ms: drawn - received,
      };
      timing.textContent = timingLine(view, browser);
      root.dataset.kernelMs = String(python);
      root.dataset.totalMs = String(browser.total_ms);
      model.send({ type: "drawn", origin: viewId, seq: view.seq, ...browser });
    });
  }

  function onImage() {
    const source = model.get("image_png");
    if (!source) return;
    const next = new Image();
    next.onload = () => { image = next; stripKey = null; drawAll(); };
    next.src = source;
  }

  function onStatus() {
    const view = model.get("view") || {};
    const size = view.image ? `${view.image.width} × ${view.image.height}` : "";
    status.textContent = [view.model, size, model.get("status")].filter(Boolean).join(" · ");
    status.classList.toggle("sp-busy", (model.get("status") || "").startsWith("encoding"));
  }

  // ---- gestures
  canvas.addEventListener("contextmenu", (event) => { event.preventDefault(); event.stopPropagation(); });
  canvas.addEventListener("pointerdown", (event) => {
    event.preventDefault();
    root.focus({ preventScroll: true });
    const { x, y } = canvasPoint(event);
    drag = { x0: x, y0: y, x1: x, y1: y, moved: false, button: event.button, shift: event.shiftKey,
      pointer: event.pointerId };
    canvas.setPointerCapture(event.pointerId);
  });
  canvas.addEventListener("pointermove", (event) => {
    if (!drag || drag.pointer !== event.pointerId) return;
    const { x, y } = canvasPoint(event);
    drag.x1 = x;
    drag.y1 = y;
    if (drag.button === 0 && !drag.shift && Math.hypot(x - drag.x0, y - drag.y0) > DRAG_PX) drag.moved = true;
    if (drag.moved) drawMain();
  });
  canvas.addEventListener("pointerup", (event) => {
    if (!drag || drag.pointer !== event.pointerId) return;
    const { rect } = canvasPoint(event);
    const size = [rect.height, rect.width];
    const gesture = drag;
    drag = null;
    if (gesture.moved) {
      send({ type: "box", x0: gesture.x0, y0: gesture.y0, x1: gesture.x1, y1: gesture.y1, canvas: size }, event);
    } else if (gesture.button === 0 || gesture.button === 2) {
      const negative = gesture.button === 2 || gesture.shift;
      send({ type: "click", x: gesture.x0, y: gesture.y0, label: negative ? 0 : 1, canvas: size }, event);
    }
  });
  canvas.addEventListener("pointercancel", () => { drag = null; drawMain(); });

  // ---- keys: handled here, and never passed on, so JupyterLab sees none of them
  const onKey = (event) => {
    event.stopPropagation();
    const typing = ["INPUT", "TEXTAREA", "SELECT"].includes(event.target.tagName) && event.target.type !== "checkbox"
      && event.target.type !== "range";
    if (event.type !== "keydown") return;
    if (event.key === "Escape") {
      if (drag) { drag = null; drawMain(); }
      showIO(null);
      root.focus({ preventScroll: true });
      return;
    }
    if (typing) return;
    const key = event.key.toLowerCase();
    const command = event.ctrlKey || event.metaKey;
    const actions = {
      z: () => send({ type: command && event.shiftKey ? "redo" : "undo" }),
      y: () => send({ type: "redo" }),
      c: () => !command && send({ type: "clear" }),
      m: () => send({ type: "options", multimask: !multimask.checked }),
      f: () => send({ type: "options", feed_mask: !feed.checked }),
      x: () => send({ type: "remove_box" }),
      s: () => saveVariant(),
      1: () => showCandidate(0), 2: () => showCandidate(1), 3: () => showCandidate(2), 4: () => showCandidate(3),
    };
    if (actions[key]) {
      event.preventDefault();
      actions[key]();
    }
  };
  function showCandidate(index) {
    if (!(model.get("view") || {}).result) return;
    shown = index;
    drawMain();
    drawCards(model.get("view"));
  }
  for (const type of ["keydown", "keyup", "keypress"]) root.addEventListener(type, onKey);
  // Clicks inside the widget are the widget's: the notebook must not select or drag cells on them.
  for (const type of ["mousedown", "pointerdown", "click", "dblclick", "contextmenu"]) {
    root.addEventListener(type, (event) => event.stopPropagation());
  }

  let lastWidth = -1;
  const resize = new ResizeObserver(() => {
    if (root.clientWidth !== lastWidth) { lastWidth = root.clientWidth; drawAll(); } // width decides the canvas size
  });
  resize.observe(root);
  model.on("change:view", onView);
  model.on("change:image_png", onImage);
  model.on("change:status", onStatus);
  model.on("change:view", onStatus);
  onImage();
  rebuildOverlays();
  onStatus();
  drawAll();

  return () => {
    resize.disconnect();
    model.off("change:view", onView);
    model.off("change:image_png", onImage);
    model.off("change:status", onStatus);
    model.off("change:view", onStatus);
  };
}

export default { render };
