// Markdown to safe HTML in the browser, configured exactly like the server's renderer
// (chatproject/chat/markdown.py) so a live answer and the same answer
// after a reload look the same. markdown-it parses with raw HTML off; DOMPurify then
// keeps only an allow-list, so a parser bug cannot become script execution.
//
// The vendored UMD builds (static/vendor/) define window.markdownit and window.DOMPurify.

const ALLOWED_TAGS = [
  "p", "br", "hr", "blockquote", "pre", "code", "em", "strong", "a",
  "ul", "ol", "li", "h1", "h2", "h3", "h4", "h5", "h6",
];
const ALLOWED_ATTR = ["href", "title", "start", "class", "target", "rel"];
// http, https, mailto and relative URLs: the server's nh3 url_schemes.
const ALLOWED_URI_REGEXP = /^(?:(?:https?|mailto):|[^a-z]|[a-z+.-]+(?:[^a-z+.\-:]|$))/i;
const CODE_CLASS = /^language-[\w+#.-]+$/;
const LINK_REL = "noopener noreferrer nofollow";

let md = null;
let purify = null;

function setup() {
  // The commonmark preset turns raw HTML on: switch it off, as on the server.
  md = window.markdownit("commonmark", { html: false, linkify: false, typographer: false });
  // No images: loading one can leak data to whoever wrote its URL into the reply.
  md.disable("image");

  purify = window.DOMPurify(window);
  purify.addHook("uponSanitizeAttribute", (node, data) => {
    const tag = node.nodeName.toLowerCase();
    const allowed = {
      href: tag === "a", title: tag === "a", start: tag === "ol",
      class: tag === "code" && CODE_CLASS.test(data.attrValue),
      // target and rel are set below, never taken from the input.
      target: false, rel: false,
    };
    if (!allowed[data.attrName]) data.keepAttr = false;
  });
  purify.addHook("afterSanitizeAttributes", (node) => {
    if (node.nodeName === "A") {
      node.setAttribute("target", "_blank");
      node.setAttribute("rel", LINK_REL);
    }
  });
}

/** Markdown source → sanitised HTML string (safe to assign to innerHTML). */
export function renderMarkdown(text) {
  if (!md) setup();
  return purify.sanitize(md.render(text || ""), {
    ALLOWED_TAGS,
    ALLOWED_ATTR,
    ALLOWED_URI_REGEXP,
    ALLOW_DATA_ATTR: false,
    ALLOW_ARIA_ATTR: false,
  });
}
