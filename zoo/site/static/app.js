// hpt-zoo web catalog: filter, search and sort the model table; copy buttons. No network access, no eval.
"use strict";
(function () {
  function setupIndex() {
    var table = document.getElementById("models");
    if (!table) return;
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    var search = document.getElementById("search");
    var sort = document.getElementById("sort");
    var filters = Array.prototype.slice.call(document.querySelectorAll("select[data-filter]"));
    var count = document.getElementById("count");
    var empty = document.getElementById("empty");
    var params = new URLSearchParams(window.location.search);
    filters.forEach(function (select) {
      var wanted = params.get(select.dataset.filter);
      if (wanted !== null) select.value = wanted;
    });
    if (params.get("q") !== null) search.value = params.get("q");

    function score(row) {
      var value = parseFloat(row.dataset.score);
      return isNaN(value) ? null : value;
    }
    function apply() {
      var query = search.value.trim().toLowerCase();
      var shown = 0;
      rows.forEach(function (row) {
        var visible = (!query || row.dataset.name.indexOf(query) !== -1) && filters.every(function (select) {
          return !select.value || row.dataset[select.dataset.filter] === select.value;
        });
        row.hidden = !visible;
        if (visible) shown += 1;
      });
      var order = sort.value;
      var sorted = rows.slice().sort(function (a, b) {
        if (order !== "name") {
          var sa = score(a), sb = score(b);
          if (sa === null && sb !== null) return 1;  // unscored models last in both directions
          if (sb === null && sa !== null) return -1;
          if (sa !== null && sb !== null && sa !== sb) return order === "score-desc" ? sb - sa : sa - sb;
        }
        return a.dataset.name < b.dataset.name ? -1 : a.dataset.name > b.dataset.name ? 1 : 0;
      });
      sorted.forEach(function (row) { body.appendChild(row); });
      count.textContent = String(shown);
      empty.hidden = shown !== 0;
    }
    search.addEventListener("input", apply);
    sort.addEventListener("change", apply);
    filters.forEach(function (select) { select.addEventListener("change", apply); });
    document.getElementById("sort-score").addEventListener("click", function () {
      sort.value = sort.value === "score-desc" ? "score-asc" : "score-desc";
      apply();
    });
    var form = document.querySelector("form.controls");
    if (form) form.addEventListener("submit", function (event) { event.preventDefault(); });
    apply();
  }

  function setupCopy() {
    Array.prototype.forEach.call(document.querySelectorAll("button.copy"), function (button) {
      button.addEventListener("click", function () {
        var code = button.closest(".snippet").querySelector("code");
        var text = code.textContent;
        function done(label) { button.textContent = label; setTimeout(function () { button.textContent = "copy"; }, 1500); }
        if (navigator.clipboard && window.isSecureContext) {
          navigator.clipboard.writeText(text).then(function () { done("copied"); }, function () { select(code); done("select + Ctrl-C"); });
        } else { select(code); done("select + Ctrl-C"); }
      });
    });
    function select(node) {
      var range = document.createRange();
      range.selectNodeContents(node);
      var selection = window.getSelection();
      selection.removeAllRanges();
      selection.addRange(range);
    }
  }

  document.addEventListener("DOMContentLoaded", function () { setupIndex(); setupCopy(); });
})();
