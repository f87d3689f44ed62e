// The public incident page's times in the reader's own time zone. The page gives each time
// in UTC, as <time datetime="2026-01-06T10:00:00+00:00" data-local>2026-01-06 10:00 UTC</time>,
// so it reads correctly without this script; here each becomes "2026-01-06 11:00 CET": the
// same form, in the browser's time zone, with that zone's name in the page's language (and
// the zone's own name, "GMT+1 (Europe/Amsterdam)", where that language names only its
// offset). The UTC time stays in the element's title.
(function () {
  "use strict";

  var format;
  try {
    format = new Intl.DateTimeFormat(document.documentElement.lang || "en", {
      year: "numeric",
      month: "2-digit",
      day: "2-digit",
      hour: "2-digit",
      minute: "2-digit",
      hourCycle: "h23",
      timeZoneName: "short",
      numberingSystem: "latn",
    });
  } catch (e) {
    return; // no Intl: the times stay in UTC
  }

  var zone = format.resolvedOptions().timeZone;

  function local(when) {
    var parts = {};
    format.formatToParts(when).forEach(function (part) {
      parts[part.type] = part.value;
    });
    var name = parts.timeZoneName || "";
    if (/^(GMT|UTC)[+\u2212-]/.test(name) && zone) {
      name += " (" + zone + ")";
    }
    return (
      parts.year + "-" + parts.month + "-" + parts.day + " " +
      parts.hour + ":" + parts.minute + " " + name
    ).trim();
  }

  function rewrite() {
    var times = document.querySelectorAll("time[data-local][datetime]");
    for (var i = 0; i < times.length; i++) {
      var element = times[i];
      var when = new Date(element.getAttribute("datetime"));
      if (isNaN(when.getTime())) {
        continue;
      }
      element.title = element.textContent;
      element.textContent = local(when);
    }
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", rewrite);
  } else {
    rewrite();
  }
})();
