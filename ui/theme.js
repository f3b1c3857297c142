// Applies the saved colour theme before the page paints (a classic script, so it
// runs before first render; the module scripts run later).
(function () {
  try {
    var saved = window.localStorage.getItem("hq-theme");
    if (saved === "light" || saved === "dark") {
      document.documentElement.dataset.theme = saved;
    }
  } catch (e) {
    // Storage may be disabled; the system preference applies.
  }
})();
