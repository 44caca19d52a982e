// logitlab explorer: the page around Engine. State -> URL hash -> DOM; every shown number has
// a data-key and a data-value at full precision (String(x): the shortest round-trip decimal).
"use strict";

(function () {
  var COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
    "#7f7f7f", "#bcbd22", "#17becf"];
  var RANGE = 10;  // the bars and sliders show logits in [−10, 10]; typed values may be anything
  var MAP_INFO = {
    softmax: ["softmax", "exp(s) / Σ exp(s)"],
    standard: ["x/Σx", "f(s) / Σ f(s), f the positivity"],
    sparsemax: ["sparsemax", "argmin ‖p − s‖², p ∈ Δ"],
    entmax15: ["1.5-entmax", "[s/2 − τ]₊², exact"],
    entmax: ["α-entmax", "[(α−1)s − τ]₊^{1/(α−1)}"],
    spherical_softmax: ["spherical", "(s² + ε) / Σ(s² + ε), ε = 1e-6"],
    taylor_softmax: ["Taylor", "t(s) / Σ t(s), t = Σⱼ sʲ/j!"],
    sigmoid: ["sigmoid", "1 / (1 + e^{−s}) per class (not on Δ)"],
  };
  var LOSS_INFO = {
    cross_entropy: ["cross-entropy", "softmax", "−log q_y"],
    label_smoothed_ce: ["label-smoothed CE", "softmax", "−Σ p log q"],
    focal: ["focal (γ)", "softmax", "−(1 − q_y)^γ log q_y"],
    brier: ["Brier", "div", "Σ (p − q)²"],
    kl: ["KL(p ‖ q)", "div", "Σ p log(p/q)"],
    reverse_kl: ["KL(q ‖ p)", "div", "Σ q log(q/p)"],
    js: ["Jensen–Shannon", "div", "β = ½"],
    alpha: ["Amari α-div.", "div", "α = ½"],
    renyi: ["Rényi", "div", "order ½"],
    tv: ["total variation", "div", "½ Σ |p − q|"],
    hellinger: ["Hellinger²", "div", "½ Σ (√p − √q)²"],
    sparsemax_loss: ["sparsemax loss", "sparsemax", "Fenchel–Young"],
    entmax15_loss: ["1.5-entmax loss", "entmax15", "Fenchel–Young"],
    entmax_loss: ["α-entmax loss", "entmax", "Fenchel–Young"],
    binary_cross_entropy: ["binary CE", "sigmoid", "Σ_k BCE(p_k, σ(s_k))"],
  };
  var DIVERGENCE_MODELS = ["softmax", "standard", "sparsemax", "entmax15", "entmax", "spherical_softmax",
    "taylor_softmax"];
  var DEFAULTS = { logits: [2, 1, 0.5, -1], temperature: 1, alpha: 1.5, target: 0, smoothing: 0, gamma: 2,
    positivity: "softplus", order: 2, divergenceNormalizer: "softmax", units: "nats", beta: 0.5,
    amariAlpha: 0.5, renyiAlpha: 0.5, softTarget: null, guide: "", c: 1, margin: 10, z: 2, n: 150, p: 0.5,
    base: [0.5, 1, 1.5, 2] };
  var state = clone(DEFAULTS);

  function clone(x) { return JSON.parse(JSON.stringify(x)); }
  function $(id) { return document.getElementById(id); }
  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    for (var key in attrs || {}) node.setAttribute(key, attrs[key]);
    if (text !== undefined) node.textContent = text;
    return node;
  }
  function parseNumber(text) {
    var t = String(text).trim().toLowerCase().replace("−", "-").replace("∞", "inf");
    if (t === "-inf" || t === "-infinity") return -Infinity;
    if (t === "inf" || t === "+inf" || t === "infinity") return Infinity;
    if (!/^[-+]?(\d+\.?\d*|\.\d+)(e[-+]?\d+)?$/.test(t)) return NaN;
    return Number(t);
  }
  function fmt(v) {
    if (v === Infinity) return "+∞";
    if (v === -Infinity) return "−∞";
    if (Number.isNaN(v)) return "NaN";
    if (v === 0) return "0";
    var a = Math.abs(v);
    if (a < 1e-4 || a >= 1e5) return v.toExponential(2).replace("-", "−");
    return v.toFixed(a >= 100 ? 2 : 4).replace("-", "−");
  }
  function dataValue(node, key, value) {
    node.setAttribute("data-key", key);
    node.setAttribute("data-value", String(value));
    return node;
  }

  // ---- state <-> URL hash (#logits=1,2,-inf,3&T=0.5&alpha=1.5&y=0&eps=0.1&...) ----
  var HASH = { T: "temperature", alpha: "alpha", y: "target", eps: "smoothing", gamma: "gamma",
    pos: "positivity", order: "order", dn: "divergenceNormalizer", units: "units", guide: "guide",
    c: "c", m: "margin", z: "z", n: "n", p: "p", beta: "beta", amari: "amariAlpha", renyi: "renyiAlpha" };
  var STRINGS = ["positivity", "divergenceNormalizer", "units", "guide"];
  function readHash() {
    var text = window.location.hash.replace(/^#/, "");
    var next = clone(DEFAULTS), problems = [];
    text.split("&").forEach(function (part) {
      if (!part) return;
      var kv = part.split("="), key = decodeURIComponent(kv[0]), value = decodeURIComponent(kv[1] || "");
      if (key === "soft") {
        var weights = value.split(",").map(parseNumber);
        if (!validSoft(weights)) problems.push("soft: expected K non-negative finite weights with a positive sum, got " + value);
        else next.softTarget = weights;
      } else if (key === "logits" || key === "base") {
        var values = value.split(",").map(parseNumber);
        if (values.length < 2 || values.length > 10 || values.some(function (v) { return Number.isNaN(v) || v === Infinity; }))
          problems.push(key + ": expected 2 to 10 numbers (or -inf), got " + value);
        else next[key] = values;
      } else if (HASH[key]) {
        var name = HASH[key];
        if (STRINGS.indexOf(name) >= 0) next[name] = value;
        else {
          var number = parseNumber(value);
          if (!isFinite(number)) problems.push(key + ": expected a finite number, got " + value);
          else next[name] = number;
        }
      } else problems.push("unknown key " + key);
    });
    if (next.softTarget && next.softTarget.length !== next.logits.length) {
      problems.push("soft: " + next.softTarget.length + " weights for " + next.logits.length + " logits");
      next.softTarget = null;
    }
    next.target = Math.min(Math.max(Math.round(next.target), 0), next.logits.length - 1);
    next.order = Math.max(2, 2 * Math.round(next.order / 2));
    if (!(next.temperature > 0)) { problems.push("T must be > 0"); next.temperature = 1; }
    if (!(next.alpha > 1)) { problems.push("alpha must be > 1"); next.alpha = 1.5; }
    next.smoothing = Math.min(Math.max(next.smoothing, 0), 1);
    next.gamma = Math.max(next.gamma, 0);
    if (["none", "softplus", "relu", "abs"].indexOf(next.positivity) < 0) next.positivity = "softplus";
    if (DIVERGENCE_MODELS.indexOf(next.divergenceNormalizer) < 0) next.divergenceNormalizer = "softmax";
    state = next;
    var box = $("hash-problems");
    if (box) box.textContent = problems.join("; ");
  }
  function validSoft(weights) {
    return weights.length >= 2 && weights.every(function (w) { return isFinite(w) && w >= 0; }) &&
      weights.reduce(function (a, b) { return a + b; }, 0) > 0;
  }
  function writeHash() {
    var parts = ["logits=" + state.logits.map(function (v) { return v === -Infinity ? "-inf" : String(v); }).join(",")];
    if (state.softTarget) parts.push("soft=" + state.softTarget.join(","));
    for (var key in HASH) {
      var value = state[HASH[key]];
      if (value !== DEFAULTS[HASH[key]]) parts.push(key + "=" + encodeURIComponent(String(value)));
    }
    history.replaceState(null, "", "#" + parts.join("&"));
  }

  // ---- inputs ----
  function buildLogitRows() {
    var body = $("logit-table").querySelector("tbody");
    body.innerHTML = "";
    state.logits.forEach(function (value, i) {
      var row = el("tr");
      var label = el("td"), swatch = el("span", { class: "swatch", style: "background:" + COLORS[i] });
      label.appendChild(swatch);
      label.appendChild(document.createTextNode(" z" + (i + 1)));
      row.appendChild(label);
      var slider = el("input", { type: "range", min: -RANGE, max: RANGE, step: "0.01", class: "logit-slider",
        "data-i": i, "aria-label": "logit " + (i + 1) });
      var number = el("input", { type: "text", class: "number logit-number", "data-i": i, "aria-label": "logit " + (i + 1) + " value" });
      var cell = el("td"); cell.appendChild(slider); row.appendChild(cell);
      cell = el("td"); cell.appendChild(number); row.appendChild(cell);
      var exclude = el("button", { type: "button", class: "exclude", "data-i": i, title: "set this logit to −∞ (exclude the class)" }, "−∞");
      cell = el("td"); cell.appendChild(exclude); row.appendChild(cell);
      var radio = el("input", { type: "radio", name: "target", class: "target", value: i, "aria-label": "target class " + (i + 1) });
      cell = el("td"); cell.appendChild(radio); row.appendChild(cell);
      body.appendChild(row);
      slider.addEventListener("input", function () { setLogit(i, Number(slider.value), slider); });
      number.addEventListener("change", function () {
        var v = parseNumber(number.value);
        if (Number.isNaN(v) || v === Infinity) { number.classList.add("bad"); return; }
        number.classList.remove("bad");
        setLogit(i, v, number);
      });
      exclude.addEventListener("click", function () {
        setLogit(i, state.logits[i] === -Infinity ? 0 : -Infinity, exclude);
      });
      radio.addEventListener("change", function () { state.target = i; update(); });
    });
  }
  function setLogit(i, value, source) {  // a logit moved by hand: the guided view (which owns the logits) ends
    state.logits[i] = value;
    state.guide = "";
    update(source);
  }
  function syncInputs(source) {
    $("k").value = state.logits.length;
    document.querySelectorAll(".logit-slider").forEach(function (slider) {
      var v = state.logits[Number(slider.dataset.i)];
      if (slider !== source) slider.value = v === -Infinity ? -RANGE : Math.max(-RANGE, Math.min(RANGE, v));
      slider.disabled = v === -Infinity;
    });
    document.querySelectorAll(".logit-number").forEach(function (number) {
      var v = state.logits[Number(number.dataset.i)];
      if (number !== source) number.value = v === -Infinity ? "-inf" : String(v);
      dataValue(number, "logit." + number.dataset.i, v);
    });
    document.querySelectorAll(".exclude").forEach(function (button) {
      button.classList.toggle("on", state.logits[Number(button.dataset.i)] === -Infinity);
    });
    document.querySelectorAll("input.target").forEach(function (radio) {
      radio.checked = Number(radio.value) === state.target;
    });
    [["temperature", "temperature"], ["alpha", "alpha"], ["smoothing", "smoothing"], ["gamma", "gamma"]].forEach(function (pair) {
      var slider = $(pair[0]), number = $(pair[0] + "-number"), v = state[pair[1]];
      if (slider !== source) slider.value = v;
      if (number !== source) number.value = String(v);
      dataValue(number, "input." + pair[1], v);
    });
    var softBox = $("soft-target");
    if (softBox !== source) softBox.value = state.softTarget ? state.softTarget.join(", ") : "";
    softBox.setAttribute("data-key", "input.soft");
    softBox.setAttribute("data-value", state.softTarget ? state.softTarget.join(",") : "");
    document.querySelectorAll("input.target").forEach(function (radio) { radio.disabled = state.softTarget !== null; });
    $("positivity").value = state.positivity;
    $("order").value = String(state.order);
    $("divergence-normalizer").value = state.divergenceNormalizer;
    $("units").value = state.units;
  }
  function bindScalar(id, name, low, high) {
    var slider = $(id), number = $(id + "-number");
    slider.addEventListener("input", function () { state[name] = Number(slider.value); update(slider); });
    number.addEventListener("change", function () {
      var v = parseNumber(number.value);
      if (!(v >= low && v <= high)) { number.classList.add("bad"); return; }
      number.classList.remove("bad");
      state[name] = v;
      update(number);
    });
  }

  // ---- the draggable bars ----
  var BAR_H = 150, BAR_W = 34, GAP = 8;
  function yOf(v) { var c = Math.max(-RANGE, Math.min(RANGE, v)); return BAR_H / 2 - c / RANGE * (BAR_H / 2 - 4); }
  function drawBars() {
    var svg = $("logit-bars"), k = state.logits.length, width = k * (BAR_W + GAP) + GAP;
    svg.setAttribute("width", width);
    svg.setAttribute("height", BAR_H + 18);
    svg.setAttribute("viewBox", "0 0 " + width + " " + (BAR_H + 18));
    var parts = ['<line x1="0" x2="' + width + '" y1="' + BAR_H / 2 + '" y2="' + BAR_H / 2 + '" class="axis"/>'];
    state.logits.forEach(function (v, i) {
      var x = GAP + i * (BAR_W + GAP);
      parts.push('<rect class="hit" data-i="' + i + '" x="' + x + '" y="0" width="' + BAR_W + '" height="' + BAR_H + '"/>');
      if (v === -Infinity) {
        parts.push('<text class="neginf" x="' + (x + BAR_W / 2) + '" y="' + (BAR_H - 4) + '">−∞</text>');
      } else {
        var y = yOf(v), top = Math.min(y, BAR_H / 2), h = Math.max(Math.abs(y - BAR_H / 2), 1);
        parts.push('<rect class="bar" data-i="' + i + '" x="' + x + '" y="' + top + '" width="' + BAR_W + '" height="' + h +
          '" fill="' + COLORS[i] + '"/>');
      }
      parts.push('<text class="barlabel" x="' + (x + BAR_W / 2) + '" y="' + (BAR_H + 14) + '">' +
        (i === state.target ? "y=" : "") + "z" + (i + 1) + '</text>');
    });
    svg.innerHTML = parts.join("");
  }
  function bindDrag() {
    var svg = $("logit-bars"), dragging = null;
    function valueAt(event) {
      var box = svg.getBoundingClientRect(), y = (event.clientY - box.top) * (BAR_H + 18) / box.height;
      var v = (BAR_H / 2 - y) / (BAR_H / 2 - 4) * RANGE;
      return Math.round(Math.max(-RANGE, Math.min(RANGE, v)) * 100) / 100;
    }
    function indexAt(event) {
      var box = svg.getBoundingClientRect(), x = (event.clientX - box.left) * svg.viewBox.baseVal.width / box.width;
      var i = Math.floor((x - GAP / 2) / (BAR_W + GAP));
      return Math.max(0, Math.min(state.logits.length - 1, i));
    }
    svg.addEventListener("pointerdown", function (event) {
      dragging = indexAt(event);
      if (svg.setPointerCapture) { try { svg.setPointerCapture(event.pointerId); } catch (e) { /* synthetic events */ } }
      setLogit(dragging, valueAt(event), null);
      event.preventDefault();
    });
    svg.addEventListener("pointermove", function (event) {
      if (dragging !== null) setLogit(dragging, valueAt(event), null);
    });
    function stop() { dragging = null; }
    svg.addEventListener("pointerup", stop);
    svg.addEventListener("pointercancel", stop);
  }

  // ---- outputs ----
  function drawMaps(result) {
    var grid = $("map-grid");
    grid.innerHTML = "";
    Engine.MAPS.forEach(function (name) {
      var card = el("div", { class: "card" }), info = MAP_INFO[name], out = result.maps[name];
      var title = el("h3", {}, info[0]);
      if (name === "entmax") title.textContent = "α-entmax (α = " + state.alpha + ")";
      if (name === "standard") title.textContent = "x/Σx (" + state.positivity + ")";
      if (name === "taylor_softmax") title.textContent = "Taylor (order " + state.order + ")";
      card.appendChild(title);
      card.appendChild(el("div", { class: "formula" }, info[1]));
      if (out.error) {
        card.appendChild(dataValue(el("div", { class: "error", "data-error": out.error }, out.error), "map." + name, "error"));
      } else {
        out.probs.forEach(function (p, i) {
          var row = el("div", { class: "prob" + (p === 0 ? " zero" : "") });
          row.appendChild(el("span", { class: "cls" }, "" + (i + 1)));
          var track = el("span", { class: "track" });
          track.appendChild(el("span", { class: "fill", style: "width:" + (100 * p) + "%;background:" + COLORS[i] }));
          row.appendChild(track);
          row.appendChild(dataValue(el("span", { class: "val" }, p === 0 ? "0 (exact)" : fmt(p)), "map." + name + "." + i, p));
          card.appendChild(row);
        });
        var total = out.probs.reduce(function (a, b) { return a + b; }, 0);
        var support = out.probs.filter(function (p) { return p > 0; }).length;
        card.appendChild(el("div", { class: "note" }, "Σ = " + fmt(total) + ", support " + support + " of " + out.probs.length));
      }
      grid.appendChild(card);
    });
  }
  function drawLosses(result) {
    var body = $("loss-table").querySelector("tbody"), top = 0;
    body.innerHTML = "";
    Engine.LOSSES.forEach(function (name) {
      var loss = result.losses[name];
      if (loss.grad) loss.grad.forEach(function (g) { if (isFinite(g)) top = Math.max(top, Math.abs(g)); });
    });
    top = top || 1;
    Engine.LOSSES.forEach(function (name) {
      var loss = result.losses[name], info = LOSS_INFO[name], row = el("tr");
      var modelName = info[1] === "div" ? state.divergenceNormalizer : info[1];
      var cell = el("td", {}, info[0]);
      cell.appendChild(el("div", { class: "formula" }, info[2]));
      row.appendChild(cell);
      row.appendChild(el("td", { class: "model" }, modelName));
      if (loss.error) {
        row.appendChild(dataValue(el("td", { class: "error", colspan: 3, "data-error": loss.error }, loss.error), "loss." + name, "error"));
        body.appendChild(row);
        return;
      }
      row.appendChild(dataValue(el("td", { class: "num" }, fmt(loss.value)), "loss." + name, loss.value));
      cell = el("td", { class: "grads" });
      loss.grad.forEach(function (g, i) {
        var box = el("span", { class: "gbox", title: "∂L/∂z" + (i + 1) + " = " + g });
        var h = Math.min(Math.abs(g) / top, 1) * 50;
        box.appendChild(el("span", { class: "gbar", style: "height:" + h + "%;" + (g >= 0 ? "bottom:50%" : "top:50%") +
          ";background:" + COLORS[i] }));
        cell.appendChild(dataValue(box, "grad." + name + "." + i, g));
      });
      row.appendChild(cell);
      row.appendChild(dataValue(el("td", { class: "num" }, fmt(loss.norm)), "gradnorm." + name, loss.norm));
      body.appendChild(row);
    });
  }
  function drawDecomposition(result) {
    var body = $("dec-body"), d = result.decomposition, unit = state.units === "bits" ? Math.LN2 : 1;
    body.innerHTML = "";
    if (!d) { body.appendChild(dataValue(el("div", { class: "error" }, result.decompositionError), "dec", "error")); return; }
    var h = d.entropy / unit, klv = d.kl / unit, cross = d.cross_entropy / unit, total = isFinite(cross) ? cross : h + 1;
    var bar = el("div", { class: "stack" });
    bar.appendChild(el("span", { class: "seg entropy", style: "width:" + (100 * h / (total || 1)) + "%" }));
    bar.appendChild(el("span", { class: "seg kl", style: "width:" + (isFinite(klv) ? 100 * klv / (total || 1) : 100) + "%" }));
    body.appendChild(bar);
    var legend = el("div", { class: "legend" });
    [["dec.entropy", "H(p)", h, "entropy"], ["dec.kl", "KL(p ‖ q)", klv, "kl"], ["dec.cross_entropy", "H(p, q)", cross, ""]].forEach(function (item) {
      var span = el("span", { class: "item " + item[3] });
      span.appendChild(document.createTextNode(item[1] + " = "));
      var value = dataValue(el("b", {}, fmt(item[2])), item[0], item[2]);
      value.setAttribute("data-unit", state.units);
      span.appendChild(value);
      span.appendChild(document.createTextNode(" " + state.units));
      legend.appendChild(span);
    });
    body.appendChild(legend);
  }

  // ---- guided views ----
  var GUIDES = {
    scale: function () {
      state.positivity = "none"; state.temperature = 1; state.base = state.base || [0.5, 1, 1.5, 2];
      applyGuide();
    },
    wrong: function () {
      state.target = 0; state.temperature = 1; state.smoothing = 0; state.divergenceNormalizer = "softmax";
      state.softTarget = null;
      applyGuide();
    },
    sigmoid: function () { state.temperature = 1; state.target = 1; state.smoothing = 0; state.softTarget = null; applyGuide(); },
    underflow: function () { applyGuide(); },
  };
  function applyGuide() {  // the guide's own slider sets the logits
    var k, i;
    if (state.guide === "scale") state.logits = state.base.map(function (b) { return state.c * b; });
    if (state.guide === "wrong") {  // class 1 is the target, class 2 has the margin
      state.target = 0;
      state.softTarget = null;
      k = state.logits.length >= 3 ? state.logits.length : 4;
      state.logits = [];
      for (i = 0; i < k; i++) state.logits.push(i === 1 ? state.margin : 0);
    }
    if (state.guide === "sigmoid") {
      state.logits = [0, state.z];
      state.target = Math.min(state.target, 1);
    }
    if (state.softTarget && state.softTarget.length !== state.logits.length) state.softTarget = null;
  }
  function guideSlider(label, name, min, max, step) {
    var row = el("div", { class: "row" });
    row.appendChild(el("label", { for: "guide-" + name }, label));
    var slider = el("input", { id: "guide-" + name, type: "range", min: min, max: max, step: step });
    slider.value = state[name];
    var shown = dataValue(el("b", {}, String(state[name])), "guide." + name, state[name]);
    slider.addEventListener("input", function () {
      state[name] = Number(slider.value);
      shown.textContent = String(state[name]);
      dataValue(shown, "guide." + name, state[name]);
      applyGuide();
      rebuildIfNeeded();
      update(slider);
    });
    row.appendChild(slider);
    row.appendChild(shown);
    return row;
  }
  function line(parts) {
    var p = el("p");
    parts.forEach(function (part) {
      if (typeof part === "string") p.appendChild(document.createTextNode(part));
      else p.appendChild(dataValue(el("b", {}, part.length > 2 ? part[2] : fmt(part[1])), part[0], part[1]));
    });
    return p;
  }
  function drawGuide(result) {
    var panel = $("guide-panel");
    document.querySelectorAll("[data-guide]").forEach(function (b) { b.classList.toggle("on", b.dataset.guide === state.guide); });
    if (!state.guide) { panel.innerHTML = '<p class="hint">Each view sets the inputs for one question; the panels below follow.</p>'; return; }
    if (!panel.firstChild || panel.getAttribute("data-for") !== state.guide) {
      panel.innerHTML = "";
      panel.setAttribute("data-for", state.guide);
      if (state.guide === "scale") panel.appendChild(guideSlider("scale c", "c", 0.1, 10, 0.1));
      if (state.guide === "wrong") panel.appendChild(guideSlider("margin m", "margin", 0, 30, 0.5));
      if (state.guide === "sigmoid") panel.appendChild(guideSlider("z", "z", -10, 10, 0.1));
      if (state.guide === "underflow") {
        panel.appendChild(guideSlider("examples n", "n", 1, 2000, 1));
        panel.appendChild(guideSlider("likelihood of each", "p", 0.01, 0.99, 0.01));
      }
      panel.appendChild(el("div", { class: "guide-text" }));
    }
    var text = panel.querySelector(".guide-text");
    text.innerHTML = "";
    var maps = result.maps;
    if (state.guide === "scale") {
      var soft = maps.softmax.probs, std = maps.standard.probs;
      text.appendChild(line(["Logits c·(" + state.base.join(", ") + "). Largest softmax probability ",
        ["guide.softmax_max", Math.max.apply(null, soft)], ", largest x/Σx probability ", ["guide.standard_max", Math.max.apply(null, std)],
        ". Softmax sharpens as c grows (towards argmax) and flattens as c → 0; x/Σx is scale-invariant: c cancels in the ratio."]));
    }
    if (state.guide === "wrong") {
      var ce = result.losses.cross_entropy, br = result.losses.brier;
      text.appendChild(line(["Target class 1, the model puts margin m on class 2. ‖∇ cross-entropy‖ = ", ["guide.ce_norm", ce.norm],
        " (→ √2 = 1.4142: q − onehot(y) stays large), ‖∇ Brier‖ = ", ["guide.brier_norm", br.norm],
        " (vanishes like e^−m: softmax's Jacobian is ≈ 0 where it is confident, so squared error stops learning)."]));
    }
    if (state.guide === "sigmoid") {
      var sg = maps.sigmoid.probs[1], sm = maps.softmax.probs[1];
      text.appendChild(line(["σ(z) = ", ["guide.sigmoid", sg], ", softmax((0, z))₂ = ", ["guide.softmax", sm],
        ", difference ", ["guide.difference", sg - sm], ": e^z / (e^0 + e^z) = 1 / (1 + e^−z). The sigmoid is the two-class softmax with one logit pinned at 0."]));
    }
    if (state.guide === "underflow") {
      var u = Engine.underflow(state.p, state.n);
      var at = function (key, n) {  // the first n whose product is 0 (NaN: not within these n)
        return n === null ? [key, NaN, "beyond " + state.n] : [key, n, String(n)];
      };
      text.appendChild(line(["Π of n likelihoods in float32: ", ["guide.product32", u.product32], " (0 from n = ",
        at("guide.zero_at32", u.zeroAt32), "), in float64: ", ["guide.product64", u.product64], " (0 from n = ",
        at("guide.zero_at64", u.zeroAt64), "); Σ log = ", ["guide.log_sum", u.logSum],
        ", a moderate number. Training sums logs (cross-entropy) because the product leaves the floats."]));
    }
  }

  // ---- the update loop ----
  function rebuildIfNeeded() {
    if (document.querySelectorAll(".logit-slider").length !== state.logits.length) buildLogitRows();
  }
  function update(source) {
    rebuildIfNeeded();
    syncInputs(source);
    var result = Engine.evaluate(state);
    $("target-text").textContent = "(" + result.target.map(fmt).join(", ") + ")";
    drawBars();
    drawMaps(result);
    drawLosses(result);
    drawDecomposition(result);
    drawGuide(result);
    writeHash();
    window.explorerResult = result;  // for the console; the tests read the DOM
    document.body.setAttribute("data-updates", String(Number(document.body.getAttribute("data-updates") || 0) + 1));
  }

  function init() {
    var select = $("divergence-normalizer");
    DIVERGENCE_MODELS.forEach(function (name) { select.appendChild(el("option", { value: name }, name)); });
    var problems = el("p", { id: "hash-problems", class: "error" });
    $("controls").appendChild(problems);
    readHash();
    buildLogitRows();
    bindScalar("temperature", "temperature", 1e-6, 1e6);
    bindScalar("alpha", "alpha", 1.000001, 100);
    bindScalar("smoothing", "smoothing", 0, 1);
    bindScalar("gamma", "gamma", 0, 100);
    $("k").addEventListener("change", function () {
      var k = Math.max(2, Math.min(10, Math.round(Number($("k").value)) || 4));
      while (state.logits.length < k) state.logits.push(0);
      if (state.softTarget && state.softTarget.length !== k) state.softTarget = null;
      state.logits.length = k;
      state.target = Math.min(state.target, k - 1);
      state.guide = "";
      update();
    });
    $("soft-target").addEventListener("change", function () {
      var box = $("soft-target"), text = box.value.trim();
      if (!text) { state.softTarget = null; box.classList.remove("bad"); update(box); return; }
      var weights = text.split(/[\s,]+/).map(parseNumber);
      if (!validSoft(weights) || weights.length !== state.logits.length) { box.classList.add("bad"); return; }
      box.classList.remove("bad");
      state.softTarget = weights;
      update(box);
    });
    $("reset").addEventListener("click", function () { state = clone(DEFAULTS); update(); });
    [["positivity", "positivity", String], ["order", "order", Number], ["divergence-normalizer", "divergenceNormalizer", String],
      ["units", "units", String]].forEach(function (item) {
      $(item[0]).addEventListener("change", function () { state[item[1]] = item[2]($(item[0]).value); update(); });
    });
    document.querySelectorAll("[data-guide]").forEach(function (button) {
      button.addEventListener("click", function () {
        state.guide = button.dataset.guide;
        GUIDES[state.guide]();
        update();
      });
    });
    bindDrag();
    window.addEventListener("hashchange", function () { readHash(); applyGuide(); update(); });
    applyGuide();
    update();
    document.body.setAttribute("data-ready", "1");
  }
  init();
})();
