// The console's one script: a job page's line boxes, selection, in-place edits and the
// "next uncertain line" key. Document text only ever goes in as text (textContent,
// input values, title); nothing here builds markup from strings.
"use strict";

(function () {
  const job = document.getElementById("job");
  if (!job) {
    return;
  }
  const jobId = job.dataset.job;
  const low = parseFloat(job.dataset.low);
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  let selected = null; // the line id selected, as "<page>:<line>"

  function confidenceClass(confidence) {
    if (confidence === null || confidence === undefined) {
      return "conf-none";
    }
    if (confidence < low) {
      return "conf-low";
    }
    return confidence < 0.95 ? "conf-mid" : "conf-high";
  }

  function uncertain(line) {
    return line.confidence !== null && line.confidence !== undefined && line.confidence < low;
  }

  function pageUrl(number) {
    return "/v1/jobs/" + encodeURIComponent(jobId) + "/pages/" + number;
  }

  function elementsOf(key) {
    const [page, line] = key.split(":");
    const section = document.getElementById("page-" + page);
    if (!section) {
      return [];
    }
    return Array.from(section.querySelectorAll("[data-line]"))
      .filter((el) => el.dataset.line === line);
  }

  function select(key, scroll) {
    if (selected) {
      elementsOf(selected).forEach((el) => el.classList.remove("selected"));
    }
    selected = key;
    const found = elementsOf(key);
    found.forEach((el) => el.classList.add("selected"));
    if (scroll) {
      found.forEach((el) => el.scrollIntoView({block: "nearest"}));
    }
  }

  function showLine(item, box, line) {
    item.className = "line " + confidenceClass(line.confidence);
    box.className = "box " + confidenceClass(line.confidence);
    item.dataset.confidence = line.confidence === null ? "" : String(line.confidence);
    const text = item.querySelector(".text");
    text.textContent = line.text;
    const corrected = line.corrected !== undefined && line.corrected !== null;
    item.classList.toggle("corrected", corrected);
    box.classList.toggle("corrected", corrected);
    item.title = corrected ? "read as: " + (line.original || "") : "";
    box.title = line.text;
    item.querySelector(".revert").hidden = !corrected;
  }

  function send(method, number, line, body) {
    const url = pageUrl(number) + "/lines/" + encodeURIComponent(line.id);
    const options = {method: method, credentials: "same-origin",
                     headers: {"X-CSRF-Token": csrf}};
    if (body !== null) {
      options.headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    return fetch(url, options).then((answer) => {
      if (!answer.ok) {
        return answer.json().then((error) => {
          throw new Error(error.error ? error.error.message : "the change was refused");
        });
      }
      return fetch(pageUrl(number), {credentials: "same-origin"}).then((r) => r.json());
    });
  }

  function refresh(section, number, item, box, line, page) {
    const fresh = page.lines.find((l) => l.id === line.id);
    if (fresh) {
      Object.keys(line).forEach((key) => delete line[key]); // a revert drops `corrected`
      Object.assign(line, fresh);
      showLine(item, box, line);
    }
    section.querySelector(".page-error").hidden = true;
  }

  function failed(section, error) {
    const note = section.querySelector(".page-error");
    note.textContent = error.message;
    note.hidden = false;
  }

  function edit(section, number, item, box, line) {
    if (item.querySelector("input")) {
      return;
    }
    const text = item.querySelector(".text");
    const input = document.createElement("input");
    input.type = "text";
    input.className = "edit";
    input.value = line.text;
    text.hidden = true;
    item.insertBefore(input, text);
    input.focus();
    let open = true;
    const close = () => { // once: removing a focused input fires its blur
      if (open) {
        open = false;
        input.remove();
        text.hidden = false;
      }
    };
    input.addEventListener("keydown", (event) => {
      event.stopPropagation();
      if (event.key === "Escape") {
        close();
      } else if (event.key === "Enter") {
        event.preventDefault();
        const value = input.value;
        close();
        if (value !== line.text) {
          text.textContent = value;
          item.classList.add("saving");
          send("PUT", number, line, {text: value})
            .then((page) => refresh(section, number, item, box, line, page))
            .catch((error) => {
              showLine(item, box, line);
              failed(section, error);
            })
            .finally(() => item.classList.remove("saving"));
        }
      }
    });
    input.addEventListener("blur", close);
  }

  function draw(section, page) {
    const number = page.number;
    const [width, height] = page.image_size;
    const img = section.querySelector("img.scan");
    if (width && height) {
      img.style.aspectRatio = width + " / " + height;
    }
    const boxes = section.querySelector(".boxes");
    const list = section.querySelector(".lines");
    boxes.replaceChildren();
    list.replaceChildren();
    section.dataset.lines = String(page.lines.length);
    page.lines.forEach((line) => {
      const key = section.dataset.page + ":" + line.id;
      const box = document.createElement("div");
      box.dataset.line = line.id;
      if (line.box) { // a line without a box (a text layer's, a VLM's) has none drawn
        const [x0, y0, x1, y1] = line.box;
        box.style.left = (100 * x0 / width) + "%";
        box.style.top = (100 * y0 / height) + "%";
        box.style.width = (100 * (x1 - x0) / width) + "%";
        box.style.height = (100 * (y1 - y0) / height) + "%";
        boxes.append(box);
      }
      const item = document.createElement("li");
      item.dataset.line = line.id;
      item.tabIndex = 0;
      const text = document.createElement("span");
      text.className = "text";
      const revert = document.createElement("button");
      revert.type = "button";
      revert.className = "revert";
      revert.textContent = "revert";
      item.append(text, revert);
      showLine(item, box, line);
      box.addEventListener("click", () => select(key, true));
      item.addEventListener("click", () => select(key, true));
      item.addEventListener("dblclick", () => edit(section, number, item, box, line));
      item.addEventListener("keydown", (event) => {
        if (event.key === "Enter" && event.target === item) {
          event.preventDefault();
          edit(section, number, item, box, line);
        }
      });
      revert.addEventListener("click", (event) => {
        event.stopPropagation();
        send("DELETE", number, line, null)
          .then((fresh) => refresh(section, number, item, box, line, fresh))
          .catch((error) => failed(section, error));
      });
      list.append(item);
    });
    section.classList.add("drawn");
    performance.mark("console:page-" + section.dataset.page + "-drawn"); // for bench/console.py
  }

  function load(section) {
    if (section.dataset.loading) {
      return;
    }
    section.dataset.loading = "1";
    // credentials "include": the same request as the page's preload of page 1
    fetch(pageUrl(section.dataset.page), {credentials: "include"})
      .then((answer) => answer.json().then((body) => {
        if (!answer.ok) {
          throw new Error(body.error ? body.error.message : "the page did not load");
        }
        draw(section, body);
      }))
      .catch((error) => failed(section, error));
  }

  function nextUncertain() {
    const items = Array.from(document.querySelectorAll(".page.drawn li[data-line]"));
    const keys = items.map((item) => item.closest(".page").dataset.page + ":" + item.dataset.line);
    const start = selected ? keys.indexOf(selected) : -1;
    for (let step = 1; step <= items.length; step += 1) {
      const i = (start + step) % items.length;
      if (items[i].classList.contains("conf-low")) {
        select(keys[i], true);
        items[i].focus();
        return;
      }
    }
  }

  const sections = Array.from(job.querySelectorAll("section.page"));
  if (sections.length) {
    load(sections[0]);
  }
  const watcher = new IntersectionObserver((entries) => {
    entries.filter((e) => e.isIntersecting).forEach((e) => {
      watcher.unobserve(e.target);
      load(e.target);
    });
  }, {rootMargin: "400px 0px"});
  sections.slice(1).forEach((section) => watcher.observe(section));

  document.addEventListener("keydown", (event) => {
    const typing = event.target instanceof HTMLInputElement ||
      event.target instanceof HTMLTextAreaElement || event.target instanceof HTMLSelectElement;
    if (event.key === "n" && !typing && !event.ctrlKey && !event.metaKey && !event.altKey) {
      event.preventDefault();
      nextUncertain();
    }
  });
}());
