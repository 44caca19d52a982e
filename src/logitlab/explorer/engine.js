// logitlab explorer: the maps and losses of logitlab in float64 JavaScript, with gradients.
//
// The semantics follow the library (src/logitlab/normalizers, src/logitlab/losses): -inf marks
// an excluded class (probability exactly 0, no gradient), a row of all -inf maps to zeros, a
// loss that needs a class from such a row is an error. Gradients come from a small reverse-mode
// differentiation over scalars (K <= 10): every map is one node per output whose local
// derivatives are the map's Jacobian row, and every loss is written with the same branches as
// the library's kernels, so that a branch that gives no gradient there gives none here.
"use strict";

var Engine = (function () {
  var NEG_INF = -Infinity;
  var SPHERICAL_EPS = 1e-6;
  var COLD = -30.0;

  // ---- scalar reverse mode ----
  function Node(value, parents) { this.v = value; this.parents = parents || []; this.g = 0; }
  function constant(value) { return new Node(value, []); }
  function add(a, b) { return new Node(a.v + b.v, [[a, 1], [b, 1]]); }
  function sub(a, b) { return new Node(a.v - b.v, [[a, 1], [b, -1]]); }
  function mul(a, b) { return new Node(a.v * b.v, [[a, b.v], [b, a.v]]); }
  function scale(a, c) { return new Node(a.v * c, [[a, c]]); }
  function div(a, b) { return new Node(a.v / b.v, [[a, 1 / b.v], [b, -a.v / (b.v * b.v)]]); }
  function exp(a) { var e = Math.exp(a.v); return new Node(e, [[a, e]]); }
  function log(a) { return new Node(Math.log(a.v), [[a, 1 / a.v]]); }
  function expm1(a) { return new Node(Math.expm1(a.v), [[a, Math.exp(a.v)]]); }
  function log1p(a) { return new Node(Math.log1p(a.v), [[a, 1 / (1 + a.v)]]); }
  function square(a) { return new Node(a.v * a.v, [[a, 2 * a.v]]); }
  function abs(a) { return new Node(Math.abs(a.v), [[a, a.v > 0 ? 1 : (a.v < 0 ? -1 : 0)]]); }
  function pow(a, c) { return new Node(Math.pow(a.v, c), [[a, c * Math.pow(a.v, c - 1)]]); }
  function sum(nodes) {
    var total = 0;
    for (var i = 0; i < nodes.length; i++) total += nodes[i].v;
    return new Node(total, nodes.map(function (n) { return [n, 1]; }));
  }
  function logaddexp(a, b) {  // log(e^a + e^b); -inf (no gradient) where both are -inf
    if (a.v === NEG_INF && b.v === NEG_INF) return constant(NEG_INF);
    var top = Math.max(a.v, b.v);
    var out = top + Math.log1p(Math.exp(-Math.abs(a.v - b.v)));
    return new Node(out, [[a, Math.exp(a.v - out)], [b, Math.exp(b.v - out)]]);
  }
  function logsumexp(nodes) {
    var top = NEG_INF;
    nodes.forEach(function (n) { if (n.v > top) top = n.v; });
    if (top === NEG_INF) return constant(NEG_INF);
    var total = 0;
    nodes.forEach(function (n) { total += Math.exp(n.v - top); });
    var out = top + Math.log(total);
    return new Node(out, nodes.map(function (n) { return [n, Math.exp(n.v - out)]; }));
  }
  // A vector map: outputs[i] has local derivative jac[i][j] with respect to inputs[j].
  function vectorNodes(inputs, values, jac) {
    return values.map(function (value, i) {
      var parents = [];
      for (var j = 0; j < inputs.length; j++) if (jac[i][j] !== 0) parents.push([inputs[j], jac[i][j]]);
      return new Node(value, parents);
    });
  }
  // A node with the value and the gradient with respect to ``inputs`` given directly.
  function custom(value, inputs, grads) {
    return new Node(value, inputs.map(function (n, j) { return [n, grads[j]]; }));
  }
  function backward(root) {
    var order = [], seen = new Set(), stack = [[root, 0]];
    while (stack.length) {  // iterative post-order DFS
      var top = stack[stack.length - 1], node = top[0];
      if (top[1] === 0) {
        if (seen.has(node)) { stack.pop(); continue; }
        seen.add(node);
      }
      if (top[1] < node.parents.length) {
        var parent = node.parents[top[1]++][0];
        if (!seen.has(parent)) stack.push([parent, 0]);
      } else {
        stack.pop();
        order.push(node);
      }
    }
    order.forEach(function (n) { n.g = 0; });
    root.g = 1;
    for (var k = order.length - 1; k >= 0; k--) {
      var n = order[k];
      if (n.g === 0) continue;  // 0 times anything is 0 here (the library never makes 0 * inf)
      for (var p = 0; p < n.parents.length; p++) {
        var d = n.parents[p][1];
        if (d !== 0) n.parents[p][0].g += n.g * d;
      }
    }
  }

  // ---- maps: values and Jacobians with respect to their scores s ----
  function finiteIndex(s) {
    var idx = [];
    for (var i = 0; i < s.length; i++) if (s[i] !== NEG_INF) idx.push(i);
    return idx;
  }
  function zeros(n) { var out = []; for (var i = 0; i < n; i++) out.push(0); return out; }
  function zeroJac(n) { var out = []; for (var i = 0; i < n; i++) out.push(zeros(n)); return out; }

  function logSoftmax(s) {
    var n = s.length, idx = finiteIndex(s), out = { log: s.map(function () { return NEG_INF; }),
      probs: zeros(n), jacLog: zeroJac(n), jac: zeroJac(n) };
    if (!idx.length) return out;
    var top = NEG_INF;
    idx.forEach(function (i) { if (s[i] > top) top = s[i]; });
    var total = 0;
    idx.forEach(function (i) { total += Math.exp(s[i] - top); });
    var lse = top + Math.log(total);
    idx.forEach(function (i) { out.log[i] = s[i] - lse; out.probs[i] = Math.exp(s[i] - lse); });
    idx.forEach(function (i) {
      idx.forEach(function (j) {
        out.jacLog[i][j] = (i === j ? 1 : 0) - out.probs[j];
        out.jac[i][j] = out.probs[i] * ((i === j ? 1 : 0) - out.probs[j]);
      });
    });
    return out;
  }

  function sortedDesc(values) { return values.slice().sort(function (a, b) { return b - a; }); }

  // Jacobian of a threshold map p = [x − τ]_+^{1/(α−1)}, x = (α−1) s: diag(w) − w wᵀ / Σw, w = p^{2−α}.
  function thresholdJac(probs, alpha) {
    var n = probs.length, w = probs.map(function (p) { return p > 0 ? Math.pow(p, 2 - alpha) : 0; });
    var total = w.reduce(function (a, b) { return a + b; }, 0), jac = zeroJac(n);
    for (var i = 0; i < n; i++) for (var j = 0; j < n; j++)
      if (w[i] > 0 && w[j] > 0) jac[i][j] = (i === j ? w[i] : 0) - w[i] * w[j] / total;
    return jac;
  }

  function sparsemax(s) {  // sort-based: τ = (Σ_{k<=K} z_(k) − 1) / K, K the largest k with 1 + k z_(k) > Σ_{j<=k} z_(j)
    var n = s.length, idx = finiteIndex(s), probs = zeros(n);
    if (!idx.length) return { probs: probs, jac: zeroJac(n) };
    var z = sortedDesc(idx.map(function (i) { return s[i]; })), cum = 0, support = 0, cumSupport = 0;
    for (var k = 1; k <= z.length; k++) {
      cum += z[k - 1];
      if (1 + k * z[k - 1] > cum) { support = k; cumSupport = cum; }
    }
    var tau = (cumSupport - 1) / support;
    idx.forEach(function (i) { probs[i] = Math.max(s[i] - tau, 0); });
    return { probs: probs, jac: thresholdJac(probs, 2) };
  }

  function entmax15(s) {  // exact: x = s/2, τ from the support's sums of x and x² (a quadratic)
    var n = s.length, idx = finiteIndex(s), probs = zeros(n);
    if (!idx.length) return { probs: probs, jac: zeroJac(n) };
    var x = sortedDesc(idx.map(function (i) { return s[i] / 2; })), sum1 = 0, sum2 = 0, tau = 0;
    for (var k = 1; k <= x.length; k++) {
      sum1 += x[k - 1]; sum2 += x[k - 1] * x[k - 1];
      var mean = sum1 / k, delta = (1 - (sum2 / k - mean * mean) * k) / k;
      var tk = mean - Math.sqrt(Math.max(delta, 0));
      if (tk <= x[k - 1]) tau = tk; else break;
    }
    var total = 0;
    idx.forEach(function (i) { var u = Math.max(s[i] / 2 - tau, 0); probs[i] = u * u; total += probs[i]; });
    idx.forEach(function (i) { probs[i] /= total; });
    return { probs: probs, jac: thresholdJac(probs, 1.5) };
  }

  function entmaxAlpha(s, alpha) {  // any α > 1: τ by bisection on [max − 1, max − k^{1−α}] in x = (α−1) s
    var n = s.length, idx = finiteIndex(s), probs = zeros(n), q = 1 / (alpha - 1);
    if (!idx.length) return { probs: probs, jac: zeroJac(n), iterations: 0 };
    var x = idx.map(function (i) { return (alpha - 1) * s[i]; });
    var top = Math.max.apply(null, x);
    var mass = function (tau) {
      var total = 0;
      x.forEach(function (v) { if (v > tau) total += Math.pow(v - tau, q); });
      return total;
    };
    var lo = top - 1, hi = top - Math.pow(x.length, 1 - alpha), iterations = 0;
    while (iterations < 200) {
      var mid = lo + (hi - lo) / 2;
      if (mid <= lo || mid >= hi) break;
      if (mass(mid) >= 1) lo = mid; else hi = mid;
      iterations++;
    }
    var total = 0;
    idx.forEach(function (i, k) { probs[i] = x[k] > lo ? Math.pow(x[k] - lo, q) : 0; total += probs[i]; });
    idx.forEach(function (i) { probs[i] /= total; });
    return { probs: probs, jac: thresholdJac(probs, alpha), iterations: iterations };
  }

  function softplus(x) { return x > 20 ? x : Math.log1p(Math.exp(x)); }  // torch's threshold 20
  function sigmoidValue(x) {
    if (x === NEG_INF) return 0;
    if (x >= 0) return 1 / (1 + Math.exp(-x));
    var e = Math.exp(x);
    return e / (1 + e);
  }
  var POSITIVITY = {
    none: { f: function (x) { return x; }, df: function () { return 1; } },
    softplus: { f: softplus, df: function (x) { return x > 20 ? 1 : sigmoidValue(x); } },
    relu: { f: function (x) { return Math.max(x, 0); }, df: function (x) { return x > 0 ? 1 : 0; } },
    abs: { f: function (x) { return Math.abs(x); }, df: function (x) { return x > 0 ? 1 : (x < 0 ? -1 : 0); } },
  };

  function MapError(message) { this.message = message; }

  // A ratio map p_i = g(s_i) / Σ g(s_k), with gv[i] = g(s_i) and dg[i] = g'(s_i), both divided by
  // a common positive factor (the power-of-two scaling of large scores cancels in the ratio).
  function ratio(n, idx, gv, dg) {
    var probs = zeros(n), jac = zeroJac(n), total = 0;
    idx.forEach(function (i) { total += gv[i]; });
    var denominator = total === 0 ? 1 : total;
    idx.forEach(function (i) { probs[i] = gv[i] / denominator; });
    idx.forEach(function (i) {
      idx.forEach(function (j) { jac[i][j] = dg[j] * ((i === j ? 1 : 0) - probs[i]) / denominator; });
    });
    return { probs: probs, jac: jac, total: total };
  }

  function standard(s, positivity) {  // x / Σx after a positivity transform
    var n = s.length, idx = finiteIndex(s), f = POSITIVITY[positivity];
    if (!idx.length) return { probs: zeros(n), jac: zeroJac(n) };
    if (positivity === "none" && idx.some(function (i) { return s[i] < 0; }))
      throw new MapError("x/Σx needs non-negative scores: choose a positivity transform (softplus, relu, abs)");
    var top = Math.max.apply(null, idx.map(function (i) { return s[i]; }));
    if (positivity === "softplus" && top < COLD) {  // all scores below −30: softmax(log softplus(s))
      var logScores = s.map(function (v) {
        if (v === NEG_INF) return NEG_INF;
        return v < COLD ? v - Math.exp(v) / 2 : Math.log(softplus(v));
      });
      var slope = s.map(function (v) { return v < COLD ? 1 - Math.exp(v) / 2 : sigmoidValue(v) / softplus(v); });
      var soft = logSoftmax(logScores), jac = zeroJac(n);
      idx.forEach(function (i) { idx.forEach(function (j) { jac[i][j] = soft.jac[i][j] * slope[j]; }); });
      return { probs: soft.probs, jac: jac };
    }
    var gv = zeros(n), dg = zeros(n);
    idx.forEach(function (i) { gv[i] = f.f(s[i]); dg[i] = f.df(s[i]); });
    var out = ratio(n, idx, gv, dg);
    if (out.total === 0 && positivity !== "softplus")
      throw new MapError("x/Σx needs a positive sum of scores (every score is 0 after " + positivity + ")");
    return out;
  }

  function powerOfTwoAbove(idx, s) {  // 2^e > max |s| (e >= 0)
    var top = 0;
    idx.forEach(function (i) { top = Math.max(top, Math.abs(s[i])); });
    var e = top > 0 ? Math.floor(Math.log2(top)) + 1 : 0;
    return Math.pow(2, Math.max(e, 0));
  }

  function spherical(s, eps) {  // (s² + ε) / Σ(s² + ε)
    var n = s.length, idx = finiteIndex(s);
    if (!idx.length) return { probs: zeros(n), jac: zeroJac(n) };
    var big = idx.some(function (i) { return Math.abs(s[i]) > 1e100; });
    var m = big ? powerOfTwoAbove(idx, s) : 1, gv = zeros(n), dg = zeros(n);
    idx.forEach(function (i) { var a = s[i] / m; gv[i] = a * a + eps / m / m; dg[i] = 2 * a / m; });
    return ratio(n, idx, gv, dg);
  }

  // t_order(a, b) = Σ_j a^j b^(order−j) / j!  (homogeneous: t(s) / m^order with a = s/m, b = 1/m)
  function taylorPoly(a, b, order) {
    var value = Math.pow(b, 1) + a / order;
    for (var k = order - 1; k >= 1; k--) value = Math.pow(b, order - k + 1) + (a / k) * value;
    return value;
  }
  function taylor(s, order) {  // t(s) / Σ t(s), t the Taylor polynomial of exp of an even order
    var n = s.length, idx = finiteIndex(s);
    if (!idx.length) return { probs: zeros(n), jac: zeroJac(n) };
    var big = idx.some(function (i) { return Math.abs(s[i]) > Math.pow(1e250, 1 / order); });
    var m = big ? powerOfTwoAbove(idx, s) : 1, gv = zeros(n), dg = zeros(n);
    idx.forEach(function (i) {
      var a = s[i] / m, b = 1 / m;
      gv[i] = taylorPoly(a, b, order);
      dg[i] = (order - 1 === 0 ? b : taylorPoly(a, b, order - 1)) / m;  // t' = t_(order−1), over m^order
    });
    return ratio(n, idx, gv, dg);
  }

  function sigmoid(s) {
    var n = s.length, probs = s.map(sigmoidValue), jac = zeroJac(n);
    for (var i = 0; i < n; i++) if (s[i] !== NEG_INF) jac[i][i] = probs[i] * (1 - probs[i]);
    return { probs: probs, jac: jac };
  }

  var MAPS = ["softmax", "standard", "sparsemax", "entmax15", "entmax", "spherical_softmax",
    "taylor_softmax", "sigmoid"];
  function applyMap(name, s, opts) {
    switch (name) {
      case "softmax": var o = logSoftmax(s); return { probs: o.probs, jac: o.jac, log: o.log, jacLog: o.jacLog };
      case "standard": return standard(s, opts.positivity);
      case "sparsemax": return sparsemax(s);
      case "entmax15": return entmax15(s);
      case "entmax": return entmaxAlpha(s, opts.alpha);
      case "spherical_softmax": return spherical(s, opts.eps);
      case "taylor_softmax": return taylor(s, opts.order);
      case "sigmoid": return sigmoid(s);
    }
    throw new Error("unknown map " + name);
  }

  // ---- model distribution on nodes (losses.model_distribution) ----
  function safeLog(q) {  // log q with -inf (no gradient) where q == 0
    return q.map(function (node) { return node.v > 0 ? log(node) : constant(NEG_INF); });
  }
  function model(name, sNodes, opts) {
    var s = sNodes.map(function (n) { return n.v; });
    var out = applyMap(name, s, opts);
    if (name === "softmax") {  // log space: log_softmax, then exp
      var logq = vectorNodes(sNodes, out.log, out.jacLog).map(function (node, i) {
        return s[i] === NEG_INF ? constant(NEG_INF) : node;
      });
      return { q: logq.map(function (node) { return node.v === NEG_INF ? constant(0) : exp(node); }), logq: logq };
    }
    var q = vectorNodes(sNodes, out.probs, out.jac);
    return { q: q, logq: safeLog(q) };
  }

  // ---- divergence kernels (_divergence_rows.py), D(p ‖ q) on nodes ----
  function kl(p, lp, q, lq) {
    var infinite = false, terms = [];
    for (var i = 0; i < p.length; i++) {
      var support = lp[i].v > NEG_INF;
      if (support && lq[i].v === NEG_INF) infinite = true;
      if (support && lq[i].v > NEG_INF) {
        var diff = sub(lp[i], lq[i]);
        if (isFinite(diff.v)) terms.push(mul(p[i], diff));
      }
    }
    return infinite ? constant(Infinity) : sum(terms);
  }
  function js(p, lp, q, lq, beta) {
    var lm = [], m = [];
    for (var i = 0; i < p.length; i++) {
      lm.push(logaddexp(add(lp[i], constant(Math.log(beta))), add(lq[i], constant(Math.log1p(-beta)))));
      m.push(add(scale(p[i], beta), scale(q[i], 1 - beta)));
    }
    return add(scale(kl(p, lp, m, lm), beta), scale(kl(q, lq, m, lm), 1 - beta));
  }
  function finiteOrZero(node) { return isFinite(node.v) ? node : constant(0); }
  function logPowerSum(lp, lq, alpha) {
    var exponents = [], infinite = false;
    for (var i = 0; i < lp.length; i++) {
      var pz = lp[i].v === NEG_INF, qz = lq[i].v === NEG_INF;
      var zero = (pz && alpha > 0) || (qz && alpha < 1), infTerm = !zero && (pz || qz);
      if (infTerm) infinite = true;
      if (zero || infTerm) exponents.push(constant(NEG_INF));
      else exponents.push(add(scale(finiteOrZero(lp[i]), alpha), scale(finiteOrZero(lq[i]), 1 - alpha)));
    }
    var logSum = logsumexp(exponents);
    return { logSum: infinite ? constant(0) : logSum, infinite: infinite };
  }
  function powerSumMinusOne(p, lp, lq, alpha) {
    var usable = true, scaled = [], both = [];
    for (var i = 0; i < p.length; i++) {
      both.push(lp[i].v > NEG_INF && lq[i].v > NEG_INF);
      scaled.push(both[i] ? scale(sub(lp[i], lq[i]), alpha - 1) : constant(0));
      if (Math.abs(scaled[i].v) > 1) usable = false;
    }
    var terms = [];
    for (var k = 0; k < p.length; k++) {
      if (both[k]) terms.push(mul(p[k], expm1(usable ? scaled[k] : constant(0))));
      if (alpha < 1 && lp[k].v > NEG_INF && !both[k]) terms.push(scale(p[k], -1));
    }
    return { gain: sum(terms), usable: usable };
  }
  function amari(p, lp, q, lq, alpha) {
    if (alpha === 1) return kl(p, lp, q, lq);
    if (alpha === 0) return kl(q, lq, p, lp);
    if (alpha < 0.5) return amari(q, lq, p, lp, 1 - alpha);
    var ls = logPowerSum(lp, lq, alpha), near = powerSumMinusOne(p, lp, lq, alpha);
    var value = scale(near.usable ? near.gain : expm1(ls.logSum), 1 / (alpha * (alpha - 1)));
    return ls.infinite ? constant(Infinity) : value;
  }
  function renyi(p, lp, q, lq, alpha) {
    if (alpha === 1) return kl(p, lp, q, lq);
    var ls = logPowerSum(lp, lq, alpha), infinite = ls.infinite || ls.logSum.v === NEG_INF;
    var near = powerSumMinusOne(p, lp, lq, alpha);
    var usable = near.usable && !infinite && near.gain.v > -1;
    var value = usable ? log1p(near.gain) : finiteOrZero(ls.logSum);
    return infinite ? constant(Infinity) : scale(value, 1 / (alpha - 1));
  }
  function tv(p, lp, q) {
    var terms = [];
    for (var i = 0; i < p.length; i++) terms.push(abs(sub(p[i], q[i])));
    return scale(sum(terms), 0.5);
  }
  function hellinger(p, lp, q, lq) {
    var terms = [];
    for (var i = 0; i < p.length; i++) {
      var a = lp[i].v === NEG_INF ? constant(0) : exp(scale(lp[i], 0.5));
      var b = lq[i].v === NEG_INF ? constant(0) : exp(scale(lq[i], 0.5));
      terms.push(square(sub(a, b)));
    }
    return scale(sum(terms), 0.5);
  }
  function brier(p, lp, q) {
    var terms = [];
    for (var i = 0; i < p.length; i++) terms.push(square(sub(p[i], q[i])));
    return sum(terms);
  }

  // ---- regularizers Ω of the Fenchel–Young losses (values only: the gradient is ŷ − y) ----
  function omega(name, probs, alpha) {
    var a = name === "sparsemax" ? 2 : (name === "entmax15" ? 1.5 : alpha), total = 0;
    if (name === "sparsemax") { probs.forEach(function (p) { total += p * p; }); return 0.5 * total - 0.5; }
    probs.forEach(function (p) { if (p > 0) total += Math.pow(p, a); });
    return (total - 1) / (a * (a - 1));
  }
  function fenchelYoung(name, sNodes, target, opts) {  // L = Ω*(θ) + Ω(y) − ⟨θ, y⟩, ∇ = ŷ − y
    var theta = sNodes.map(function (n) { return n.v; });
    var top = Math.max.apply(null, theta);
    var shifted = theta.map(function (v) { return v - (isFinite(top) ? top : 0); });
    var pred = applyMap(name, shifted, opts).probs, value = 0, infinite = false;
    for (var i = 0; i < theta.length; i++) {
      var finite = shifted[i] === NEG_INF ? -Number.MAX_VALUE : shifted[i];
      value += finite * pred[i] - finite * target[i];
      if (target[i] > 0 && shifted[i] === NEG_INF) infinite = true;
    }
    value += omega(name, target, opts.alpha) - omega(name, pred, opts.alpha);
    value = infinite ? Infinity : Math.max(value, 0);
    return custom(value, sNodes, pred.map(function (p, j) { return p - target[j]; }));
  }

  // ---- cross-entropy family on s = z / T ----
  function crossEntropy(sNodes, target) {  // −Σ t log softmax(s), gradient softmax(s) − t
    var s = sNodes.map(function (n) { return n.v; }), soft = logSoftmax(s), value = 0;
    for (var i = 0; i < s.length; i++) {
      if (target[i] > 0) value += soft.log[i] === NEG_INF ? Infinity : -target[i] * soft.log[i];
    }
    return custom(value, sNodes, soft.probs.map(function (q, j) { return q - target[j]; }));
  }
  function focal(sNodes, y, gamma) {  // −(1 − p_y)^γ log p_y
    var s = sNodes.map(function (n) { return n.v; }), soft = logSoftmax(s);
    if (soft.log[y] === NEG_INF) {  // target on an excluded class: +inf, the gradient of −log p_y
      return custom(Infinity, sNodes, soft.probs.map(function (q, j) { return q - (j === y ? 1 : 0); }));
    }
    var logq = vectorNodes(sNodes, soft.log, soft.jacLog), logPt = logq[y];
    if (gamma === 0) return scale(logPt, -1);
    var u = scale(expm1(logPt), -1);
    var factor = u.v > 0 ? pow(u, gamma) : constant(0);
    return scale(mul(factor, logPt), -1);
  }
  function binaryCrossEntropy(sNodes, target) {  // Σ_k (1 − t_k) s_k + softplus(−s_k)
    if (sNodes.some(function (n) { return !isFinite(n.v); }))
      throw new MapError("binary cross-entropy needs finite logits (a −∞ logit is not a Bernoulli score)");
    var terms = sNodes.map(function (n, k) {
      var v = n.v, sp = softplus(-v);
      var spNode = new Node(sp, [[n, -(-v > 20 ? 1 : sigmoidValue(-v))]]);
      return add(scale(n, 1 - target[k]), spNode);
    });
    return sum(terms);
  }

  // ---- the whole page state: maps, losses and gradients ----
  var LOSSES = ["cross_entropy", "label_smoothed_ce", "focal", "brier", "kl", "reverse_kl", "js",
    "alpha", "renyi", "tv", "hellinger", "sparsemax_loss", "entmax15_loss", "entmax_loss",
    "binary_cross_entropy"];

  // The target distribution: onehot(y), or the soft target's weights normalized, then smoothed
  // towards uniform as cross_entropy's label_smoothing does: (1 − ε) base + ε / K.
  function targetProbs(k, y, smoothing, soft) {
    var base = [], total = 0, i;
    if (soft) soft.forEach(function (w) { total += w; });
    for (i = 0; i < k; i++) base.push(soft ? soft[i] / total : (i === y ? 1 : 0));
    return base.map(function (b) { return (1 - smoothing) * b + smoothing / k; });
  }

  function evaluate(state) {
    var k = state.logits.length, T = state.temperature;
    var s = state.logits.map(function (z) { return z / T; });
    var opts = { positivity: state.positivity, alpha: state.alpha, eps: SPHERICAL_EPS, order: state.order };
    var maps = {};
    var overflow = s.some(function (v) { return v === Infinity || v === -Infinity; }) &&
      state.logits.some(function (z, i) { return isFinite(z) && !isFinite(s[i]); });
    var overflowText = "z / T overflows float64: raise T or shrink the logits";
    MAPS.forEach(function (name) {
      if (overflow) { maps[name] = { error: overflowText }; return; }
      try { maps[name] = { probs: applyMap(name, s, opts).probs }; }
      catch (error) { if (error instanceof MapError) maps[name] = { error: error.message }; else throw error; }
    });
    var soft = state.softTarget && state.softTarget.length === k ? state.softTarget : null;
    var target = targetProbs(k, state.target, state.smoothing, soft);
    var onehot = targetProbs(k, state.target, 0, soft);  // the unsmoothed target (one-hot for a class)
    var losses = {};
    var empty = s.every(function (v) { return v === NEG_INF; });
    LOSSES.forEach(function (name) {
      if (empty) { losses[name] = { error: "no class left: every logit is −∞" }; return; }
      if (overflow) { losses[name] = { error: overflowText }; return; }
      var zNodes = state.logits.map(function (z) { return constant(z); });
      var sNodes = zNodes.map(function (z) { return scale(z, 1 / T); });  // -inf entries too: CE and the FY losses give them ŷ − y
      var root;
      try { root = lossNode(name, sNodes, target, onehot, state, opts, soft !== null); }
      catch (error) { if (error instanceof MapError) { losses[name] = { error: error.message }; return; } throw error; }
      backward(root);
      var grad = zNodes.map(function (z) { return z.g; });
      var norm = Math.sqrt(grad.reduce(function (a, g) { return a + g * g; }, 0));
      losses[name] = { value: root.v, grad: grad, norm: norm };
    });
    var decomposition = null;
    if (!empty && !overflow) {  // H(t, q) = H(t) + KL(t ‖ q), q = softmax(s), in log space (information.decompose)
      var soft = logSoftmax(s), entropy = 0, cross = 0;
      for (var i = 0; i < k; i++) {
        if (target[i] > 0) {
          entropy -= target[i] * Math.log(target[i]);
          cross = soft.log[i] === NEG_INF ? Infinity : cross - target[i] * soft.log[i];
        }
      }
      var sm = model("softmax", s.map(constant), opts);
      var tNodes = target.map(constant), tLog = target.map(function (t) { return constant(t > 0 ? Math.log(t) : NEG_INF); });
      decomposition = { cross_entropy: cross, entropy: entropy, kl: kl(tNodes, tLog, sm.q, sm.logq).v };
    }
    return { maps: maps, losses: losses, target: target, decomposition: decomposition,
      decompositionError: empty ? "no class left: every logit is −∞" : (overflow ? overflowText : null) };
  }

  function lossNode(name, sNodes, target, onehot, state, opts, soft) {
    var lp = target.map(function (t) { return constant(t > 0 ? Math.log(t) : NEG_INF); });
    var p = target.map(function (t) { return constant(t); });
    switch (name) {
      case "cross_entropy": return crossEntropy(sNodes, onehot);
      case "label_smoothed_ce": return crossEntropy(sNodes, target);
      case "focal":
        if (soft) throw new MapError("the focal loss takes a class target, not a soft one");
        return focal(sNodes, state.target, state.gamma);
      case "sparsemax_loss": return fenchelYoung("sparsemax", sNodes, target, opts);
      case "entmax15_loss": return fenchelYoung("entmax15", sNodes, target, opts);
      case "entmax_loss": return fenchelYoung("entmax", sNodes, target, opts);
      case "binary_cross_entropy": return binaryCrossEntropy(sNodes, target);
    }
    // The divergences D(target ‖ model), the model being the chosen normalizer of s.
    var m = model(state.divergenceNormalizer, sNodes, opts);
    switch (name) {
      case "brier": return brier(p, lp, m.q, m.logq);
      case "kl": return kl(p, lp, m.q, m.logq);
      case "reverse_kl": return kl(m.q, m.logq, p, lp);
      case "js": return js(p, lp, m.q, m.logq, state.beta);
      case "alpha": return amari(p, lp, m.q, m.logq, state.amariAlpha);
      case "renyi": return renyi(p, lp, m.q, m.logq, state.renyiAlpha);
      case "tv": return tv(p, lp, m.q, m.logq);
      case "hellinger": return hellinger(p, lp, m.q, m.logq);
    }
    throw new Error("unknown loss " + name);
  }

  // ---- the product of n likelihoods against the sum of their logs ----
  function underflow(prob, n) {
    var f32 = Math.fround(1), f64 = 1, logSum = 0, first32 = null, first64 = null, p32 = Math.fround(prob);
    for (var i = 1; i <= n; i++) {
      f32 = Math.fround(f32 * p32);
      f64 = f64 * prob;
      logSum += Math.log(prob);
      if (f32 === 0 && first32 === null) first32 = i;
      if (f64 === 0 && first64 === null) first64 = i;
    }
    return { product32: f32, product64: f64, logSum: logSum, zeroAt32: first32, zeroAt64: first64 };
  }

  return { evaluate: evaluate, applyMap: applyMap, underflow: underflow, MAPS: MAPS, LOSSES: LOSSES,
    targetProbs: targetProbs, MapError: MapError, SPHERICAL_EPS: SPHERICAL_EPS };
})();
