/* interloom report: renders the document browser from the JSON embedded in the page.
   Reads only <script type="application/json" id="report-data">; every crawled string goes in through
   textContent (never innerHTML); links only for http(s) URLs, images only from assets/img/. */
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("report-data").textContent);

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
    Object.keys(signals).forEach(function (k) {
      var tr = el("tr");
      tr.appendChild(el("td", null, k));
      tr.appendChild(el("td", "num", signals[k]));
      t.appendChild(tr);
    });
    return t;
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
    var body = el("div", "doc-body");
    d.blocks.forEach(function (b) {
      if (b.type === "text") {
        body.appendChild(el("p", "t", b.text));
        return;
      }
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
      body.appendChild(fig);
    });
    art.appendChild(body);
    var det = el("details");
    det.appendChild(el("summary", null, "signals (" + Object.keys(d.signals).length + ")"));
    det.appendChild(signalsTable(d.signals));
    art.appendChild(det);
    return art;
  }

  function renderReject(r, i) {
    var tr = el("tr", "reject");
    tr.id = "reject-" + i;
    tr.setAttribute("data-reason", r.reason);
    tr.setAttribute("data-doc-id", r.id || "");
    tr.appendChild(el("td", null, r.stage));
    tr.appendChild(el("td", null, r.item));
    tr.appendChild(el("td", null, r.reason));
    tr.appendChild(el("td", "mono", r.id));
    var u = el("td");
    u.appendChild(link(r.url, "url"));
    tr.appendChild(u);
    tr.appendChild(el("td", "detail", r.detail));
    return tr;
  }

  var docsBox = document.getElementById("docs");
  var docNodes = data.documents.map(function (d) { var n = renderDoc(d); docsBox.appendChild(n); return n; });
  var rejBox = document.getElementById("rejects-body");
  var rejNodes = data.rejects.map(function (r, i) { var n = renderReject(r, i); rejBox.appendChild(n); return n; });

  function fillSelect(sel, values) {
    values.forEach(function (v) { var o = el("option", null, v); o.value = v; sel.appendChild(o); });
  }
  var langSel = document.getElementById("filter-lang");
  var reasonSel = document.getElementById("filter-reason");
  var langs = {}; data.documents.forEach(function (d) { langs[d.lang] = 1; });
  var reasons = {}; data.rejects.forEach(function (r) { reasons[r.reason] = 1; });
  fillSelect(langSel, Object.keys(langs).sort());
  fillSelect(reasonSel, Object.keys(reasons).sort());

  function applyFilters() {
    var lang = langSel.value, reason = reasonSel.value, shown = 0;
    docNodes.forEach(function (n) {
      var ok = !lang || n.getAttribute("data-lang") === lang;
      n.style.display = ok ? "" : "none";
      if (ok) { shown += 1; }
    });
    rejNodes.forEach(function (n) {
      n.style.display = (!reason || n.getAttribute("data-reason") === reason) ? "" : "none";
    });
    document.getElementById("docs-count").textContent = shown + " of " + docNodes.length + " documents shown";
  }
  langSel.addEventListener("change", applyFilters);
  reasonSel.addEventListener("change", applyFilters);
  applyFilters();

  function jump(q) {
    var msg = document.getElementById("jump-msg");
    q = (q || "").trim();
    if (!q) { msg.textContent = ""; return; }
    var i, hit = null;
    var all = data.documents.map(function (d, k) { return [d.id, d.url, docNodes[k]]; })
      .concat(data.rejects.map(function (r, k) { return [r.id, r.url, rejNodes[k]]; }));
    for (i = 0; i < all.length && !hit; i++) { if (all[i][0] === q || all[i][1] === q) { hit = all[i][2]; } }
    for (i = 0; i < all.length && !hit; i++) {
      if ((all[i][0] || "").indexOf(q) >= 0 || (all[i][1] || "").indexOf(q) >= 0) { hit = all[i][2]; }
    }
    if (!hit) { msg.textContent = "not in the sample: " + q; return; }
    langSel.value = ""; reasonSel.value = ""; applyFilters();
    document.querySelectorAll(".hit").forEach(function (n) { n.classList.remove("hit"); });
    hit.classList.add("hit");
    hit.scrollIntoView({block: "start"});
    msg.textContent = "found";
  }
  document.getElementById("jump-form").addEventListener("submit", function (ev) {
    ev.preventDefault();
    jump(document.getElementById("jump-q").value);
  });
  document.body.setAttribute("data-ready", "1");
})();
