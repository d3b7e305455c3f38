// Token inspector: hover a token to see its id, text, class and whether it counts; click to pin it.
(function () {
  "use strict";
  var classes = JSON.parse(document.getElementById("class-labels").textContent);
  var tip = document.getElementById("tip");
  var pinned = null;

  function visible(text) {
    return text.replace(/\u21b5/g, "").replace(/\n/g, "\\n").replace(/\t/g, "\\t").replace(/\u2205/g, "");
  }

  function show(token) {
    var counted = token.classList.contains("k");
    var first = token.classList.contains("f");
    var cls = first ? "first token: read, never predicted" : classes[token.dataset.c] || "class " + token.dataset.c;
    var rows = [
      ["id", token.dataset.i],
      ["class", cls],
      ["counted", counted ? '<span class="yes">yes: a target of the loss</span>' : '<span class="no">no</span>']
    ];
    if (token.dataset.p !== undefined) {
      rows.push(["position", "predicted after " + (Number(token.dataset.p) + 1) + " token(s)"]);
    }
    if (token.dataset.l) {
      rows.push(["lint", '<span class="lint">' + token.dataset.l + "</span>"]);
    }
    var text = document.createElement("span");
    text.className = "tt";
    text.textContent = visible(token.textContent) || "(empty: part of the next token's character)";
    tip.innerHTML = "";
    tip.appendChild(text);
    var table = document.createElement("table");
    rows.forEach(function (row) {
      var tr = document.createElement("tr");
      var key = document.createElement("td");
      key.textContent = row[0];
      var value = document.createElement("td");
      value.innerHTML = row[1];
      tr.appendChild(key);
      tr.appendChild(value);
      table.appendChild(tr);
    });
    tip.appendChild(table);
    tip.classList.add("show");
    var box = token.getBoundingClientRect();
    var left = Math.min(box.left, window.innerWidth - tip.offsetWidth - 12);
    var top = box.bottom + 8;
    if (top + tip.offsetHeight > window.innerHeight - 8) {
      top = box.top - tip.offsetHeight - 8;
    }
    tip.style.left = Math.max(8, left) + "px";
    tip.style.top = Math.max(8, top) + "px";
  }

  function hide() {
    if (!pinned) {
      tip.classList.remove("show");
    }
  }

  document.querySelectorAll(".tokens").forEach(function (box) {
    box.addEventListener("mouseover", function (event) {
      var token = event.target.closest(".t");
      if (token && !pinned) {
        show(token);
      }
    });
    box.addEventListener("mouseout", hide);
    box.addEventListener("click", function (event) {
      var token = event.target.closest(".t");
      if (!token) {
        return;
      }
      if (pinned) {
        pinned.classList.remove("pinned");
      }
      if (pinned === token) {
        pinned = null;
        hide();
        return;
      }
      pinned = token;
      token.classList.add("pinned");
      show(token);
      event.stopPropagation();
    });
  });
  document.addEventListener("click", function () {
    if (pinned) {
      pinned.classList.remove("pinned");
      pinned = null;
      hide();
    }
  });
  window.addEventListener("scroll", function () {
    if (pinned) {
      show(pinned);
    } else {
      hide();
    }
  }, { passive: true });

  function toggle(id, cls) {
    var input = document.getElementById(id);
    if (input) {
      input.addEventListener("change", function () {
        document.body.classList.toggle(cls, input.checked);
      });
    }
  }
  toggle("opt-bounds", "bounds");
  toggle("opt-dim", "dim-context");

  // #lint-CODE opens that lint; #tok-ROW-INDEX pins token INDEX of row ROW (a link to one token).
  function openTarget() {
    var hash = location.hash.slice(1);
    var match = /^tok-(\d+)-(\d+)$/.exec(hash);
    if (match) {
      var box = document.querySelector('.tokens[data-row="' + match[1] + '"]');
      var token = box ? box.querySelectorAll(".t")[Number(match[2])] : null;
      if (token) {
        if (pinned) {
          pinned.classList.remove("pinned");
        }
        pinned = token;
        token.classList.add("pinned");
        var fold = token.closest("details.fold");
        if (fold) {
          fold.open = true;
        }
        token.scrollIntoView({ block: "center" });
        show(token);
      }
      return;
    }
    var target = document.getElementById(hash);
    if (target && target.tagName === "DETAILS") {
      target.open = true;
    }
  }
  window.addEventListener("hashchange", openTarget);
  openTarget();
  document.documentElement.dataset.ready = "1";
})();
