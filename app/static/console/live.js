// Live figures of the console: polls /console/api/live and draws the change of the cache
// counters between polls as an SVG line chart. No library: a few dozen lines of DOM code.
(function () {
  "use strict";
  var panel = document.getElementById("live");
  if (!panel) { return; }
  var url = panel.getAttribute("data-url");
  var every = parseFloat(panel.getAttribute("data-poll-seconds") || "2") * 1000;
  var svg = document.getElementById("live-chart");
  var NS = "http://www.w3.org/2000/svg";
  var WIDTH = 600, HEIGHT = 160, PAD = 18, KEEP = 60;
  var SERIES = ["hits", "misses", "fills"];
  var samples = [];   // raw figures, oldest first
  var points = [];    // per-interval changes: {hits, misses, fills}

  function text(id, value) { document.getElementById(id).textContent = value; }

  function element(name, attrs) {
    var node = document.createElementNS(NS, name);
    Object.keys(attrs).forEach(function (key) { node.setAttribute(key, attrs[key]); });
    return node;
  }

  function draw() {
    while (svg.firstChild) { svg.removeChild(svg.firstChild); }
    var top = 1;
    points.forEach(function (p) {
      SERIES.forEach(function (name) { top = Math.max(top, p[name]); });
    });
    svg.appendChild(element("line", {x1: PAD, y1: HEIGHT - PAD, x2: WIDTH, y2: HEIGHT - PAD, "class": "axis"}));
    var label = element("text", {x: 2, y: 12, "class": "axis-label"});
    label.textContent = String(top);
    svg.appendChild(label);
    var zero = element("text", {x: 2, y: HEIGHT - PAD, "class": "axis-label"});
    zero.textContent = "0";
    svg.appendChild(zero);
    var step = (WIDTH - PAD) / Math.max(KEEP - 1, 1);
    SERIES.forEach(function (name) {
      var coords = points.map(function (p, i) {
        var x = WIDTH - (points.length - 1 - i) * step;  // the newest at the right edge
        var y = (HEIGHT - PAD) - (p[name] / top) * (HEIGHT - 2 * PAD);
        return x.toFixed(1) + "," + y.toFixed(1);
      });
      if (coords.length) {
        svg.appendChild(element("polyline", {points: coords.join(" "), "class": "series " + name}));
      }
    });
    svg.setAttribute("data-samples", String(samples.length));
  }

  function show(figures) {
    var previous = samples.length ? samples[samples.length - 1] : null;
    samples.push(figures);
    if (samples.length > KEEP + 1) { samples.shift(); }
    var m = figures.memory;
    var breaker = figures.breaker.state || "unknown";
    var node = document.getElementById("fig-breaker");
    node.textContent = breaker;
    node.className = "value breaker-" + breaker.replace(/[^a-z_]/g, "");
    var reads = m.hits + m.misses;
    text("fig-hit-rate", reads ? Math.round(100 * m.hits / reads) + " %" : "no reads yet");
    var w = figures.webhook;
    var latency = w.requests ? ("p50 ≤ " + w.p50_ms + " ms · p95 ≤ " + w.p95_ms + " ms") : "no webhooks yet";
    if (previous && w.requests > previous.webhook.requests) {
      var mean = 1000 * (w.latency_seconds_sum - previous.webhook.latency_seconds_sum) /
        (w.requests - previous.webhook.requests);
      latency += " · last " + mean.toFixed(0) + " ms";
    }
    text("fig-latency", latency);
    text("fig-queue", figures.queue_depth === null ? "unknown (Redis?)" : String(figures.queue_depth));
    text("fig-totals", "since start: " + m.hits + " hits, " + m.misses + " misses, " + m.fills +
      " fills, " + w.requests + " webhooks (pid " + figures.pid + ")");
    if (previous) {
      var change = {};
      SERIES.forEach(function (name) { change[name] = Math.max(0, m[name] - previous.memory[name]); });
      points.push(change);
      if (points.length > KEEP) { points.shift(); }
    }
    draw();
  }

  function poll() {
    fetch(url, {credentials: "same-origin", headers: {"Accept": "application/json"}})
      .then(function (response) {
        if (response.status === 401) { window.location.reload(); return null; }
        return response.ok ? response.json() : null;
      })
      .then(function (figures) { if (figures) { show(figures); } })
      .catch(function () { text("fig-breaker", "console unreachable"); })
      .then(function () { window.setTimeout(poll, every); });
  }

  poll();
})();
