/*
 * RAG ask widget. One tag puts an ask box on any page:
 *
 *   <script src="https://rag.example.com/widget.js"
 *           data-api="https://rag.example.com" data-key="ASK-ONLY-KEY"></script>
 *
 * data-api    where the service is (default: where this script came from)
 * data-key    an API key with the `ask` scope only: every visitor can read it
 * data-title  heading of the box (default "Ask the documents")
 *
 * The box lives in a shadow DOM, so its styles and the page's do not mix. Answers stream in
 * over fetch + ReadableStream (EventSource cannot POST); the host element's data-state says
 * idle, asking, streaming, done or error.
 *
 * Questions in one box are one conversation: follow-ups are answered with the earlier turns.
 * The thread (conversation id and turns) is kept in sessionStorage, so it survives a reload of
 * the page and ends with the tab; "New conversation" starts over. Each answer can be rated
 * up or down (POST /v1/feedback). The conversation reads top to bottom: earlier turns, the
 * answer being given (a factual question's short answer first, in bold), then the ask box.
 * Each source and quote links to its place in the document (`view_url`: the quote marked on
 * the PDF page or in the text), opened in a new tab.
 */
(function () {
  "use strict";

  const script = document.currentScript;
  if (!script) return;
  const api = (script.dataset.api || new URL(script.src, location.href).origin).replace(/\/+$/, "");
  const key = script.dataset.key || "";
  const title = script.dataset.title || "Ask the documents";

  const STYLE = `
    :host { all: initial; display: block; max-width: 42rem; margin: 1rem 0;
            font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d2330; }
    .box { border: 1px solid #d5d9e2; border-radius: 10px; padding: 1rem; background: #fff; }
    h2 { font-size: 1.05rem; margin: 0 0 .6rem; }
    form { display: flex; gap: .5rem; }
    textarea { flex: 1; resize: vertical; min-height: 2.4rem; font: inherit; padding: .45rem .6rem;
               border: 1px solid #b9c0cf; border-radius: 6px; }
    button { font: inherit; padding: .45rem 1rem; border: 0; border-radius: 6px; cursor: pointer;
             background: #2d5bd7; color: #fff; }
    button[disabled] { opacity: .6; cursor: progress; }
    .status { color: #5b6478; font-size: .85rem; margin: .3rem 0 0; }
    .status:empty { display: none; }
    .answer { white-space: pre-wrap; margin: .6rem 0 0; }
    .answer:empty { display: none; }
    .streaming .answer::after { content: "\\2589"; animation: blink 1s steps(2) infinite; }
    @keyframes blink { to { visibility: hidden; } }
    .ref { color: #2d5bd7; text-decoration: none; font-weight: 600; }
    .error { margin: .6rem 0 0; padding: .5rem .7rem; border-radius: 6px; background: #fdecec;
             color: #8a1c1c; }
    .error:empty { display: none; }
    ol { margin: .8rem 0 0; padding: 0; list-style: none; }
    ol:empty { display: none; }
    li { margin: .25rem 0; }
    summary { cursor: pointer; color: #34405a; }
    blockquote { margin: .35rem 0 .5rem; padding: .4rem .7rem; border-left: 3px solid #2d5bd7;
                 background: #f4f6fb; white-space: pre-wrap; font-size: .9rem;
                 max-height: 14rem; overflow-y: auto; }
    .meta { color: #5b6478; font-size: .8rem; margin-top: .5rem; }
    .evidence:empty { display: none; }
    .evidence { margin: .6rem 0 0; font-size: .9rem; }
    .evidence p { margin: 0; color: #34405a; }
    .evidence blockquote { max-height: none; }
    .evidence cite { display: block; font-style: normal; color: #5b6478; font-size: .8rem; }
    .unverified { color: #8a5a00; }
    mark { background: #fff1a8; }
    .thread { margin: 0 0 .6rem; padding: 0; list-style: none; }
    .thread:empty { display: none; }
    .turn { border-bottom: 1px solid #e6e9f0; padding: .35rem 0; }
    .turn .q { font-weight: 600; margin: 0; }
    .turn .a { margin: .15rem 0 0; white-space: pre-wrap; color: #34405a; }
    .asked { font-weight: 600; margin: 0; }
    .asked:empty { display: none; }
    .current { margin: 0 0 .6rem; }
    .short { font-weight: 700; margin: .4rem 0 0; }
    .short:empty { display: none; }
    .turn .short-a { font-weight: 700; display: block; }
    .rate { display: inline-flex; gap: .25rem; margin-left: .5rem; vertical-align: middle; }
    .rate button { background: #eef1f7; color: #1d2330; padding: .1rem .45rem; font-size: .85rem; }
    .rate button[aria-pressed="true"] { background: #2d5bd7; color: #fff; }
    .bar { display: flex; justify-content: space-between; align-items: baseline; }
    .bar button.new { background: none; color: #2d5bd7; padding: 0; font-size: .85rem; }
    .bar button.new[hidden] { display: none; }
    a.open { color: #2d5bd7; font-size: .8rem; margin-left: .5rem; white-space: nowrap; }
  `;

  const host = document.createElement("div");
  host.className = "rag-widget";
  script.insertAdjacentElement("afterend", host);
  const root = host.attachShadow({ mode: "open" });
  root.innerHTML = `<style>${STYLE}</style>
    <section class="box" part="box">
      <div class="bar"><h2></h2>
        <button type="button" class="new" hidden>New conversation</button></div>
      <ol class="thread" aria-label="Earlier questions"></ol>
      <div class="current">
        <p class="asked"></p>
        <p class="status" role="status" aria-live="polite"></p>
        <p class="error" role="alert"></p>
        <p class="short"></p>
        <div class="answer" aria-live="polite"></div>
        <div class="evidence" aria-label="Evidence"></div>
        <ol class="citations" aria-label="Sources"></ol>
        <div class="meta"><span class="took"></span><span class="feedback"></span></div>
      </div>
      <form>
        <textarea name="question" rows="1" aria-label="Your question"
                  placeholder="Type a question and press Enter"></textarea>
        <button type="submit">Ask</button>
      </form>
    </section>`;
  const $ = (selector) => root.querySelector(selector);
  const box = $(".box"), form = $("form"), input = $("textarea"), button = $("form button");
  const statusLine = $(".status"), errorLine = $(".error"), answerBox = $(".answer");
  const list = $(".citations"), meta = $(".took"), evidenceBox = $(".evidence");
  const threadList = $(".thread"), newButton = $("button.new"), feedbackBox = $(".feedback");
  const askedLine = $(".asked"), shortLine = $(".short");
  $("h2").textContent = title;

  // The conversation: {conversation: id or null, turns: [{question, answer, short, id, rating}]}.
  const STORE = "rag-widget:" + api;
  let thread = load();
  let shown = null; // id of the turn the answer area shows (not repeated in the thread list)

  function load() {
    try {
      const saved = JSON.parse(sessionStorage.getItem(STORE) || "null");
      if (saved && Array.isArray(saved.turns)) return saved;
    } catch (_) { /* storage off or corrupt: start empty */ }
    return { conversation: null, turns: [] };
  }

  function save() {
    try { sessionStorage.setItem(STORE, JSON.stringify(thread)); } catch (_) { /* full or off */ }
  }

  function rateButtons(turn) {
    const group = document.createElement("span");
    group.className = "rate";
    for (const [rating, label, name] of [["up", "\u25B2 good", "Helpful"],
                                         ["down", "\u25BC bad", "Not helpful"]]) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = rating;
      button.textContent = label;
      button.title = name;
      button.setAttribute("aria-label", name);
      button.setAttribute("aria-pressed", String(turn.rating === rating));
      button.addEventListener("click", () => rate(turn, rating));
      group.append(button);
    }
    return group;
  }

  async function rate(turn, rating) {
    const headers = { "Content-Type": "application/json" };
    if (key) headers["Authorization"] = "Bearer " + key;
    try {
      const response = await fetch(api + "/v1/feedback", {
        method: "POST", headers, body: JSON.stringify({ answer_id: turn.id, rating }),
      });
      if (!response.ok) return fail(await explain(response));
    } catch (_) {
      return fail("Could not reach the service to send the rating. Please try again.");
    }
    turn.rating = rating;
    save();
    render();
  }

  function render() {
    threadList.textContent = "";
    for (const turn of thread.turns) {
      if (turn.id === shown) continue;
      const item = document.createElement("li");
      item.className = "turn";
      const q = document.createElement("p");
      q.className = "q";
      q.textContent = turn.question;
      const a = document.createElement("p");
      a.className = "a";
      if (turn.short) {
        const short = document.createElement("strong");
        short.className = "short-a";
        short.textContent = turn.short;
        a.append(short);
      }
      a.append(document.createTextNode(turn.answer));
      if (turn.id) a.append(rateButtons(turn));
      item.append(q, a);
      threadList.append(item);
    }
    feedbackBox.textContent = "";
    const current = thread.turns.find((t) => t.id === shown);
    if (current && current.id) feedbackBox.append(rateButtons(current));
    newButton.hidden = thread.turns.length === 0;
  }

  newButton.addEventListener("click", () => {
    if (current) current.abort();
    thread = { conversation: null, turns: [] };
    shown = null;
    try { sessionStorage.removeItem(STORE); } catch (_) { /* storage off */ }
    reset();
    askedLine.textContent = "";
    render();
    setState("idle", "");
    input.focus();
  });

  let current = null; // AbortController of the question being answered

  function setState(state, status) {
    host.dataset.state = state;
    box.classList.toggle("streaming", state === "streaming");
    button.disabled = state === "asking" || state === "streaming";
    statusLine.textContent = status || "";
  }

  function reset() {
    feedbackBox.textContent = "";
    errorLine.textContent = "";
    shortLine.textContent = "";
    answerBox.textContent = "";
    evidenceBox.textContent = "";
    list.textContent = "";
    meta.textContent = "";
  }

  function fail(message) {
    errorLine.textContent = message;
    setState("error", "");
  }

  async function explain(response) {
    let body = {};
    try { body = await response.json(); } catch (_) { /* not JSON: say it in general words */ }
    const detail = [body.message, body.hint].filter(Boolean).join(" ");
    switch (response.status) {
      case 401:
        return "The service did not accept this page's access key, so it cannot answer. " +
               "Please tell the site owner.";
      case 403:
        return "This page's access key is not allowed to ask questions. Please tell the site owner.";
      case 429: {
        const wait = response.headers.get("Retry-After");
        return "Too many questions in a short time. Please wait " +
               (wait ? wait + " seconds" : "a minute") + " and try again.";
      }
      case 503:
        return "The service is starting up or busy. Please try again in a moment.";
      case 400: case 413: case 415: case 422:
        return detail || "The question could not be accepted. Please rephrase it.";
      default:
        return "Something went wrong on the server (error " + response.status + "). " +
               "Please try again later.";
    }
  }

  // Server-Sent Events from a fetch body: blocks end at a blank line (CRLF, LF or CR).
  async function readEvents(body, onEvent) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    const boundary = /\r\n\r\n|\n\n|\r\r/;
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      let match;
      while ((match = boundary.exec(buffer)) !== null) {
        const block = buffer.slice(0, match.index);
        buffer = buffer.slice(match.index + match[0].length);
        let event = "message";
        const data = [];
        for (const line of block.split(/\r\n|\r|\n/)) {
          if (!line || line.startsWith(":")) continue;
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          let text = colon < 0 ? "" : line.slice(colon + 1);
          if (text.startsWith(" ")) text = text.slice(1);
          if (field === "event") event = text;
          else if (field === "data") data.push(text);
        }
        onEvent(event, data.join("\n"));
      }
    }
  }

  function showCitations(citations) {
    list.textContent = "";
    for (const c of citations) {
      const item = document.createElement("li");
      const details = document.createElement("details");
      details.id = "source-" + c.number;
      const summary = document.createElement("summary");
      summary.textContent = "[" + c.number + "] " + c.filename + (c.page ? ", page " + c.page : "");
      const link = sourceLink(c.view_url, "source " + c.number);
      if (link) summary.append(link);
      const quote = document.createElement("blockquote");
      quote.textContent = c.text;
      details.append(summary, quote);
      item.append(details);
      list.append(item);
    }
  }

  // A link that opens a view_url (relative to the service) in a new tab; null when there is none.
  // A view_url starting with "/" is under the API's address, path prefix included.
  function sourceLink(viewUrl, name) {
    if (!viewUrl) return null;
    let url;
    try {
      url = viewUrl.startsWith("/") ? new URL(api + viewUrl, location.href)
        : new URL(viewUrl, new URL(api + "/", location.href));
    } catch (error) {
      return null;
    }
    if (url.protocol !== "http:" && url.protocol !== "https:") return null;
    const link = document.createElement("a");
    link.className = "open";
    link.href = url.href;
    link.target = "_blank";
    link.rel = "noopener noreferrer";
    link.textContent = "open \u2197";
    link.title = "Open " + name + " in the document, with the quote marked (new tab)";
    link.addEventListener("click", (event) => event.stopPropagation());  // not a toggle
    return link;
  }

  // Turn the [n] markers of a finished answer into links that open source n.
  function linkMarkers(count) {
    const text = answerBox.textContent;
    answerBox.textContent = "";
    for (const part of text.split(/(\[\d+\])/)) {
      const n = /^\[(\d+)\]$/.exec(part);
      if (n && Number(n[1]) >= 1 && Number(n[1]) <= count) {
        const link = document.createElement("a");
        link.href = "#";
        link.className = "ref";
        link.textContent = part;
        link.addEventListener("click", (event) => {
          event.preventDefault();
          const details = root.getElementById("source-" + n[1]);
          details.open = true;
          details.scrollIntoView({ block: "nearest" });
        });
        answerBox.append(link);
      } else {
        answerBox.append(document.createTextNode(part));
      }
    }
  }

  // The quotes that support the answer, under it; each highlighted in its source passage.
  function showEvidence(info, cited) {
    const quotes = info.mode === "quote" ? info.evidence.slice(0, 1)
                                         : info.evidence.filter((q) => q.supports !== null);
    if (info.mode === "abstained") return;
    const label = document.createElement("p");
    if (info.mode === "quote") {
      label.className = "unverified";
      label.textContent = "The model's answer could not be checked against the sources, " +
                          "so this is the passage that best answers the question:";
    } else if (quotes.length === 0) {
      label.className = "unverified";
      label.textContent = "No passage of the sources supports this answer.";
    } else {
      label.textContent = "Supported by:";
    }
    evidenceBox.append(label);
    for (const q of quotes) {
      const block = document.createElement("blockquote");
      block.className = "quote";
      block.textContent = q.text;
      const source = document.createElement("cite");
      source.textContent = "[" + q.source + "] " + q.filename + (q.page ? ", page " + q.page : "");
      const link = sourceLink(q.view_url, "this quote");
      if (link) source.append(link);
      block.append(source);
      evidenceBox.append(block);
      highlight(q, cited.find((c) => c.number === q.source));
    }
  }

  // Mark the quoted words inside the cited passage (offsets are into the parsed document).
  function highlight(quote, citation) {
    if (!citation) return;
    const passage = root.getElementById("source-" + citation.number).querySelector("blockquote");
    const text = passage.textContent;
    const from = quote.start - citation.start, to = quote.end - citation.start;
    if (from < 0 || to > text.length || text.slice(from, to) !== quote.text) return;
    passage.textContent = "";
    const mark = document.createElement("mark");
    mark.textContent = text.slice(from, to);
    passage.append(document.createTextNode(text.slice(0, from)), mark,
                   document.createTextNode(text.slice(to)));
  }

  function finish(info, cited, question) {
    answerBox.textContent = info.answer;  // a quote may replace what was streamed
    shortLine.textContent = info.short_answer || "";  // the few words that answer, first
    linkMarkers(cited.length);
    showEvidence(info, cited);
    const seconds = (info.timings.total_ms / 1000).toFixed(1);
    meta.textContent = info.cached ? "Answered from cache in " + seconds + " s"
                                   : "Answered in " + seconds + " s";
    if (info.conversation) {
      thread.conversation = info.conversation;
      if (info.note) thread.turns = [];  // it had expired: the server started it afresh
      thread.turns.push({ question, answer: info.answer, short: info.short_answer,
                          id: info.answer_id, rating: null });
      shown = info.answer_id;
      save();
    }
    render();
    setState("done", info.note || "");
  }

  async function ask(question, retried) {
    if (current) current.abort();
    const controller = new AbortController();
    current = controller;
    shown = null;
    render();
    reset();
    askedLine.textContent = question;
    setState("asking", "Looking through the documents\u2026");
    const headers = { "Content-Type": "application/json", "Accept": "text/event-stream" };
    if (key) headers["Authorization"] = "Bearer " + key;
    let response;
    try {
      response = await fetch(api + "/v1/ask", {
        method: "POST", headers, signal: controller.signal,
        body: JSON.stringify({ question, stream: true, conversation: thread.conversation }),
      });
    } catch (error) {
      if (controller.signal.aborted) return;
      return fail("Could not reach the service. Check your connection and try again.");
    }
    if (response.status === 404 && thread.conversation && !retried) {
      // The service no longer knows this conversation (deleted): start a new one.
      thread = { conversation: null, turns: [] };
      save();
      return ask(question, true);
    }
    if (!response.ok) return fail(await explain(response));
    let citations = [];
    let ended = false;
    try {
      await readEvents(response.body, (event, data) => {
        if (event === "token") {
          if (host.dataset.state !== "streaming") setState("streaming", "");
          const text = answerBox.textContent ? data : data.trimStart();
          if (text) answerBox.append(document.createTextNode(text));
        } else if (event === "citations") {
          citations = JSON.parse(data);
          showCitations(citations);
        } else if (event === "done") {
          ended = true;
          finish(JSON.parse(data), citations, question);
        } else if (event === "error") {
          ended = true;
          const body = JSON.parse(data);
          fail("The answer could not be finished: " + (body.message || "server error") + " " +
               (body.hint || ""));
        }
      });
    } catch (error) {
      if (controller.signal.aborted) return;
      return fail("The connection broke before the answer was finished. Please try again.");
    }
    if (!ended && !controller.signal.aborted) {
      fail("The answer stopped before it was finished. Please try again.");
    }
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const question = input.value.trim();
    if (!question) return fail("Please type a question first.");
    ask(question);
  });
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
  render();
  setState("idle", "");
})();
