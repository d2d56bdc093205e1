/* interloom report: the document browser, the rejected samples and the what-if controls, rendered from the
   JSON embedded in the page. Reads only <script type="application/json" id="report-data">; every crawled
   string goes in through textContent (never innerHTML); links only for http(s) URLs, images only from
   assets/img/. */
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("report-data").textContent);
  var PAGE = 20, PREVIEW_CHARS = 300, PREVIEW_IMAGES = 4;

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) { e.className = cls; }
    if (text !== undefined && text !== null) { e.textContent = String(text); }
    return e;
  }
  function safeHref(u) { return typeof u === "string" && /^https?:\/\//i.test(u) ? u : null; }
  function safeSrc(u) { return typeof u === "string" && /^assets\/img\/[A-Za-z0-9._-]+$/.test(u) ? u : null; }
  function link(url, cls) {
    var h = safeHref(url);
    if (!h) { return el("span", cls, url); }
    var a = el("a", cls, url);
    a.href = h;
    a.rel = "noopener noreferrer nofollow";
    return a;
  }
  function signalsTable(signals) {
    var t = el("table", "signals");
    Object.keys(signals || {}).forEach(function (k) {
      var tr = el("tr");
      tr.appendChild(el("td", null, k));
      tr.appendChild(el("td", "num", signals[k]));
      t.appendChild(tr);
    });
    return t;
  }
  function fillSelect(sel, values) {
    values.forEach(function (v) { var o = el("option", null, v); o.value = v; sel.appendChild(o); });
  }

  // ---- documents: collapsed to a preview until opened, 20 per page --------------------------------------
  function figure(b) {
    var fig = el("figure", "im");
    var src = safeSrc(b.src);
    if (src) {
      var img = el("img");
      img.loading = "lazy";
      img.src = src;
      img.alt = b.alt || "";
      fig.appendChild(img);
    } else {
      fig.appendChild(el("div", "broken", "image not shown: " + (b.error || "no file")));
    }
    var cap = el("figcaption");
    cap.appendChild(el("span", null, (b.alt ? "alt: " + b.alt + " · " : "") + b.width + "×" + b.height + " · "));
    cap.appendChild(link(b.url, "url"));
    fig.appendChild(cap);
    return fig;
  }
  function fullBody(d) {
    var body = el("div", "doc-body");
    d.blocks.forEach(function (b) { body.appendChild(b.type === "text" ? el("p", "t", b.text) : figure(b)); });
    return body;
  }
  function preview(d) {
    var box = el("div", "doc-preview");
    var text = d.blocks.filter(function (b) { return b.type === "text"; }).map(function (b) { return b.text; }).join(" ");
    box.appendChild(el("p", "t", text.length > PREVIEW_CHARS ? text.slice(0, PREVIEW_CHARS) + "…" : text));
    var strip = el("div", "strip");
    d.blocks.filter(function (b) { return b.type === "image"; }).slice(0, PREVIEW_IMAGES).forEach(function (b) {
      var src = safeSrc(b.src);
      if (src) { var img = el("img"); img.loading = "lazy"; img.src = src; img.alt = b.alt || ""; strip.appendChild(img); }
      else { strip.appendChild(el("span", "broken", b.error || "no file")); }
    });
    box.appendChild(strip);
    return box;
  }
  function renderDoc(d) {
    var art = el("article", "doc");
    art.id = "doc-" + d.n;
    art.setAttribute("data-lang", d.lang);
    art.setAttribute("data-doc-id", d.id);
    art.setAttribute("data-role", d.role);
    var head = el("header", "doc-head");
    head.appendChild(el("h3", null, d.title || "(no title)"));
    head.appendChild(link(d.url, "url"));
    var meta = el("div", "meta");
    meta.appendChild(el("span", "tag", d.role));
    meta.appendChild(el("span", null, "id " + d.id + " · lang " + d.lang + " (" + Number(d.lang_score).toFixed(2) +
      ") · " + d.n_words + " words · " + d.n_images + " images · " + d.shard + " @ " + d.offset));
    head.appendChild(meta);
    art.appendChild(head);
    var slot = el("div");
    slot.appendChild(preview(d));
    art.appendChild(slot);
    var toggle = el("button", "open", "open");
    toggle.type = "button";
    toggle.addEventListener("click", function () { setOpen(art, d, slot, toggle, !art.classList.contains("opened")); });
    art.appendChild(toggle);
    var det = el("details");
    det.appendChild(el("summary", null, "signals (" + Object.keys(d.signals).length + ")"));
    det.appendChild(signalsTable(d.signals));
    art.appendChild(det);
    art.__open = function () { setOpen(art, d, slot, toggle, true); };
    return art;
  }
  function setOpen(art, d, slot, toggle, open) {
    slot.textContent = "";
    slot.appendChild(open ? fullBody(d) : preview(d));
    art.classList.toggle("opened", open);
    toggle.textContent = open ? "close" : "open";
  }

  var docs = data.documents;
  var haystack = docs.map(function (d) {
    return [d.title, d.url, d.id].concat(d.blocks.map(function (b) { return b.type === "text" ? b.text : b.alt; }))
      .join("\n").toLowerCase();
  });
  var signalNames = {};
  docs.forEach(function (d) { Object.keys(d.signals).forEach(function (k) { signalNames[k] = 1; }); });
  var langSel = document.getElementById("filter-lang");
  var sortSel = document.getElementById("sort-by");
  var langs = {}; docs.forEach(function (d) { langs[d.lang] = 1; });
  fillSelect(langSel, Object.keys(langs).sort());
  fillSelect(sortSel, ["n_words", "n_images"].concat(Object.keys(signalNames).sort()));
  var docsBox = document.getElementById("docs");
  var state = {page: 0, list: []};

  function sortValue(d, key) {
    var v = key === "n_words" || key === "n_images" ? d[key] : d.signals[key];
    return typeof v === "number" ? v : null;
  }
  function select() {
    var q = document.getElementById("search-q").value.trim().toLowerCase();
    var lang = langSel.value, key = sortSel.value, desc = document.getElementById("sort-desc").checked;
    var idx = [];
    docs.forEach(function (d, i) {
      if (lang && d.lang !== lang) { return; }
      if (q && haystack[i].indexOf(q) < 0) { return; }
      idx.push(i);
    });
    if (key) {
      idx.sort(function (a, b) {
        var x = sortValue(docs[a], key), y = sortValue(docs[b], key);
        if (x === null || y === null) { return (x === null) - (y === null) || a - b; }  // missing values last
        return (desc ? y - x : x - y) || a - b;
      });
    }
    state.list = idx;
  }
  function show(page) {
    var pages = Math.max(1, Math.ceil(state.list.length / PAGE));
    state.page = Math.min(Math.max(0, page), pages - 1);
    docsBox.textContent = "";
    var nodes = state.list.slice(state.page * PAGE, state.page * PAGE + PAGE).map(function (i) {
      var n = renderDoc(docs[i]); docsBox.appendChild(n); return n;
    });
    document.getElementById("page-info").textContent = "page " + (state.page + 1) + " of " + pages;
    document.getElementById("docs-count").textContent = state.list.length + " of " + docs.length + " documents";
    document.getElementById("page-prev").disabled = state.page === 0;
    document.getElementById("page-next").disabled = state.page >= pages - 1;
    return nodes;
  }
  function refresh() { select(); show(0); }
  ["search-q"].forEach(function (id) { document.getElementById(id).addEventListener("input", refresh); });
  [langSel, sortSel, document.getElementById("sort-desc")].forEach(function (n) { n.addEventListener("change", refresh); });
  document.getElementById("page-prev").addEventListener("click", function () { show(state.page - 1); });
  document.getElementById("page-next").addEventListener("click", function () { show(state.page + 1); });
  refresh();

  // ---- rejected samples, by reason -----------------------------------------------------------------------
  var rejBox = document.getElementById("rejects-list");
  var reasonSel = document.getElementById("filter-reason");
  var reasons = {}; data.rejects.forEach(function (r) { reasons[r.reason] = 1; });
  fillSelect(reasonSel, Object.keys(reasons).sort());
  function renderReject(r, i) {
    var card = el("div", "reject");
    card.id = "reject-" + i;
    card.setAttribute("data-reason", r.reason);
    card.setAttribute("data-doc-id", r.id || "");
    card.appendChild(el("div", "reject-head", r.stage + " · " + r.item + " · " + r.reason));
    if (r.id) { card.appendChild(el("div", "mono", r.id)); }
    card.appendChild(link(r.url, "url"));
    if (r.detail) { card.appendChild(el("div", "detail", r.detail)); }
    if (r.text) {
      var det = el("details", "reject-text");
      det.appendChild(el("summary", null, r.text.length > 160 ? r.text.slice(0, 160) + "…" : r.text));
      det.appendChild(el("p", "t", r.text));
      card.appendChild(det);
    }
    if (r.signals && Object.keys(r.signals).length) {
      var sd = el("details");
      sd.appendChild(el("summary", null, "signals (" + Object.keys(r.signals).length + ")"));
      sd.appendChild(signalsTable(r.signals));
      card.appendChild(sd);
    }
    return card;
  }
  var rejNodes = data.rejects.map(function (r, i) { var n = renderReject(r, i); rejBox.appendChild(n); return n; });
  function filterRejects() {
    var reason = reasonSel.value, shown = 0;
    rejNodes.forEach(function (n) {
      var ok = !reason || n.getAttribute("data-reason") === reason;
      n.style.display = ok ? "" : "none";
      shown += ok ? 1 : 0;
    });
    document.getElementById("rejects-count").textContent = shown + " of " + rejNodes.length + " sampled rows";
  }
  reasonSel.addEventListener("change", filterRejects);
  filterRejects();

  // ---- jump to a document or reject by id or URL ----------------------------------------------------------
  function jump(q) {
    var msg = document.getElementById("jump-msg");
    q = (q || "").trim();
    if (!q) { msg.textContent = ""; return; }
    var match = function (id, url) { return id === q || url === q; };
    var loose = function (id, url) { return (id || "").indexOf(q) >= 0 || (url || "").indexOf(q) >= 0; };
    var i, hit = null;
    [match, loose].forEach(function (m) {
      for (i = 0; i < docs.length && !hit; i++) { if (m(docs[i].id, docs[i].url)) { hit = {doc: i}; } }
      for (i = 0; i < data.rejects.length && !hit; i++) { if (m(data.rejects[i].id, data.rejects[i].url)) { hit = {rej: i}; } }
    });
    if (!hit) { msg.textContent = "not in the sample: " + q; return; }
    document.querySelectorAll(".hit").forEach(function (n) { n.classList.remove("hit"); });
    var node;
    if (hit.doc !== undefined) {
      document.getElementById("search-q").value = ""; langSel.value = ""; select();
      var nodes = show(Math.floor(state.list.indexOf(hit.doc) / PAGE));
      node = nodes.filter(function (n) { return n.getAttribute("data-doc-id") === docs[hit.doc].id; })[0];
      node.__open();
    } else {
      reasonSel.value = ""; filterRejects(); node = rejNodes[hit.rej];
    }
    node.classList.add("hit");
    node.scrollIntoView({block: "start"});
    msg.textContent = "found";
  }
  document.getElementById("jump-form").addEventListener("submit", function (ev) {
    ev.preventDefault();
    jump(document.getElementById("jump-q").value);
  });
  if (location.hash && /^#doc-\d+$/.test(location.hash)) {  // a link from the dedup view
    var n = Number(location.hash.slice(5));
    docs.forEach(function (d) { if (d.n === n) { jump(d.id); } });
  }
  window.addEventListener("hashchange", function () {
    var m = /^#doc-(\d+)$/.exec(location.hash);
    if (m) { docs.forEach(function (d) { if (d.n === Number(m[1])) { jump(d.id); } }); }
  });

  // ---- what-if: move a threshold, recompute on the embedded sample (same rule as summary.what_if) ----------
  var wi = data.what_if;
  function passes(v, ts) {
    return ts.every(function (t) { return t.kind === "min" ? v >= t.value : v <= t.value; });
  }
  function whatIf(signal, values) {
    var old = wi.thresholds[signal];
    var neu = old.map(function (t, i) { return {kind: t.kind, value: values[i]}; });
    var r = {reached: 0, pass_before: 0, pass_after: 0, kept_before: 0, kept_after: 0};
    var col = wi.values[signal];
    for (var i = 0; i < col.length; i++) {
      var kept = wi.reasons[wi.reason[i]] === "";
      r.kept_before += kept ? 1 : 0;
      var v = col[i];
      if (v === null) { r.kept_after += kept ? 1 : 0; continue; }
      r.reached += 1;
      var before = passes(v, old), after = passes(v, neu);
      r.pass_before += before ? 1 : 0;
      r.pass_after += after ? 1 : 0;
      if (kept) { r.kept_after += before && !after ? 0 : 1; }
      else if (!before && after) {
        var others = Object.keys(wi.thresholds).every(function (n) {
          var x = wi.values[n][i];
          return n === signal || x === null || passes(x, wi.thresholds[n]);
        });
        r.kept_after += others ? 1 : 0;
      }
    }
    var scale = wi.sample ? wi.population / wi.sample : 0;
    r.final_estimate = Math.max(0, Math.round(wi.final + (r.kept_after - r.kept_before) * scale));
    return r;
  }
  // `--set key=value`; a member of a family (filters.gopher_repetition.top_n_grams.2) sets the whole map,
  // since --set replaces a map it names
  function setArg(config, value) {
    var m = /^(.*)\.(\d+)$/.exec(config);
    if (!m) { return "--set " + config + "=" + value; }
    var members = {};
    Object.keys(wi.thresholds).forEach(function (n) {
      wi.thresholds[n].forEach(function (t) {
        var k = /^(.*)\.(\d+)$/.exec(t.config);
        if (k && k[1] === m[1]) { members[k[2]] = t.value; }
      });
    });
    members[m[2]] = value;
    var parts = Object.keys(members).sort(function (a, b) { return a - b; })
      .map(function (k) { return k + ": " + members[k]; });
    return "--set '" + m[1] + "={" + parts.join(", ") + "}'";
  }
  document.querySelectorAll(".what-if").forEach(function (box) {
    var signal = box.getAttribute("data-signal"), index = Number(box.getAttribute("data-index"));
    if (!wi.thresholds[signal]) { return; }
    var range = box.querySelector(".wi-range"), num = box.querySelector(".wi-value");
    var out = box.querySelector(".wi-out"), set = box.querySelector(".wi-set");
    function update(value) {
      var values = wi.thresholds[signal].map(function (t) { return t.value; });
      values[index] = value;
      var r = whatIf(signal, values);
      box.setAttribute("data-kept-after", r.kept_after);
      box.setAttribute("data-pass-after", r.pass_after);
      box.setAttribute("data-final-estimate", r.final_estimate);
      out.textContent = "sample: " + r.pass_after + " of " + r.reached + " pass (now " + r.pass_before +
        "); kept in the end " + r.kept_after + " (now " + r.kept_before + "); corpus ≈ " + r.final_estimate +
        " documents (now " + wi.final + ")";
      set.textContent = setArg(wi.thresholds[signal][index].config, value);
    }
    range.addEventListener("input", function () { num.value = range.value; update(Number(range.value)); });
    num.addEventListener("input", function () {
      if (num.value !== "" && isFinite(Number(num.value))) { range.value = num.value; update(Number(num.value)); }
    });
    update(wi.thresholds[signal][index].value);
  });

  document.body.setAttribute("data-ready", "1");
})();
