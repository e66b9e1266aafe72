// Render the math of every page with the vendored KaTeX (no request leaves the site).
// Markdown pages: pymdownx.arithmatex (generic) leaves \( \) and \[ \] in .arithmatex elements;
// notebook pages: $ and $$ in their rendered Markdown cells (and in their table of contents).
(function () {
  "use strict";
  var options = {
    delimiters: [
      { left: "$$", right: "$$", display: true },
      { left: "$", right: "$", display: false },
      { left: "\\(", right: "\\)", display: false },
      { left: "\\[", right: "\\]", display: true },
    ],
    ignoredClasses: ["highlight", "jp-InputArea", "jp-OutputArea-output"],
    throwOnError: false,
  };
  function render(root) {
    var selector = ".arithmatex, .jp-RenderedMarkdown, [data-md-component=toc] .md-nav__link";
    root.querySelectorAll(selector).forEach(function (el) {
      renderMathInElement(el, options);
    });
  }
  if (typeof document$ !== "undefined") {
    document$.subscribe(function (doc) { render(doc.body); });
  } else {
    document.addEventListener("DOMContentLoaded", function () { render(document.body); });
  }
})();
