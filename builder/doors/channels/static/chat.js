/* The web chat's page: the conversation kept here, each question sent with the earlier turns
   to chat/api/answer, the answer read as it streams. Every text from the server or the
   customer goes into the page as textContent, never as HTML. */
(function () {
  'use strict';

  var config = JSON.parse(document.getElementById('chat-config').textContent);
  var log = document.getElementById('log');
  var form = document.getElementById('ask');
  var input = document.getElementById('question');
  var send = document.getElementById('send');
  var ANSWER_URL = 'chat/api/answer', FEEDBACK_URL = 'chat/api/feedback';
  var KEEP_MESSAGES = 12;  // the turns sent with a question: enough for a follow-up
  var messages = [];       // the conversation so far: {role, content}
  var busy = false;

  // The widget passes its colour: taken only when it is a colour
  var color = new URLSearchParams(location.search).get('color');
  if (color && /^#[0-9a-fA-F]{3,8}$/.test(color)) {
    document.documentElement.style.setProperty('--accent', color);
  }

  function sessionId() {
    var key = 'builder-chat-session', id = null;
    try { id = sessionStorage.getItem(key); } catch (e) { /* storage blocked: this page only */ }
    if (id && /^[0-9a-f]{32}$/.test(id)) return id;
    var bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);  // (randomUUID needs https; a shop may test on http)
    id = Array.prototype.map.call(bytes, function (b) { return b.toString(16).padStart(2, '0'); }).join('');
    try { sessionStorage.setItem(key, id); } catch (e) { /* kept in memory only */ }
    return id;
  }
  var session = sessionId();

  // Building the conversation

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function scrollDown() { log.scrollTop = log.scrollHeight; }

  function turn(role, text) {
    var row = el('div', 'turn ' + role);
    var bubble = el('div', 'bubble', text);
    row.appendChild(bubble);
    log.appendChild(row);
    scrollDown();
    return {row: row, bubble: bubble};
  }

  function choices(row, questions, label) {
    if (!questions.length) return;
    var box = el('div', 'choices');
    box.setAttribute('role', 'group');
    box.setAttribute('aria-label', label);
    questions.forEach(function (question) {
      var button = el('button', 'choice', question);
      button.type = 'button';
      button.addEventListener('click', function () { ask(question); });
      box.appendChild(button);
    });
    row.appendChild(box);
  }

  // 👍 drawn, not typed: a machine without an emoji font would show empty boxes
  var THUMB = 'M1 21h4V9H1v12zm22-11c0-1.1-.9-2-2-2h-6.31l.95-4.57.03-.32c0-.41-.17-.79-.44' +
              '-1.06L14.17 1 7.59 7.59C7.22 7.95 7 8.45 7 9v10c0 1.1.9 2 2 2h9c.83 0 1.54-.5 ' +
              '1.84-1.22l3.02-7.05c.09-.23.14-.47.14-.73v-2z';
  function thumb(down) {
    var ns = 'http://www.w3.org/2000/svg';  // (a namespace name, not a request)
    var svg = document.createElementNS(ns, 'svg');
    svg.setAttribute('viewBox', '0 0 24 24');
    svg.setAttribute('aria-hidden', 'true');
    if (down) svg.setAttribute('class', 'down');
    var path = document.createElementNS(ns, 'path');
    path.setAttribute('d', THUMB);
    svg.appendChild(path);
    return svg;
  }

  function rating(row, id) {
    var box = el('div', 'rating');
    [[1, '도움이 됐어요'], [-1, '도움이 안 됐어요']].forEach(function (choice) {
      var button = el('button', 'rate');
      button.appendChild(thumb(choice[0] < 0));
      button.type = 'button';
      button.title = choice[1];
      button.setAttribute('aria-label', choice[1]);
      button.setAttribute('aria-pressed', 'false');
      button.dataset.value = String(choice[0]);
      button.addEventListener('click', function () { rate(box, id, choice[0]); });
      box.appendChild(button);
    });
    row.appendChild(box);
  }

  function rate(box, id, value) {
    fetch(FEEDBACK_URL, {method: 'POST', headers: {'Content-Type': 'application/json'},
                         body: JSON.stringify({id: id, value: value})})
      .then(function (response) {
        if (!response.ok) return;
        box.querySelectorAll('button').forEach(function (button) {
          button.setAttribute('aria-pressed', String(button.dataset.value === String(value)));
        });
      })
      .catch(function () { /* a lost 👍 is not worth an error message */ });
  }

  function setBusy(on) {
    busy = on;
    send.disabled = on;
    log.querySelectorAll('.choices button').forEach(function (b) { b.disabled = on; });
  }

  // Asking

  async function ask(question) {
    question = question.trim();
    if (!question || busy) return;
    setBusy(true);
    turn('user', question);
    var answer = turn('bot', '');
    answer.bubble.classList.add('waiting');
    var sent = messages.concat([{role: 'user', content: question}]).slice(-KEEP_MESSAGES);
    try {
      var last = await stream(sent, answer);
      messages.push({role: 'user', content: question},
                    {role: 'assistant', content: answer.bubble.textContent});
      finish(answer, last);
    } catch (err) {
      answer.row.classList.add('failed');
      answer.bubble.textContent = err.message;
    } finally {
      answer.bubble.classList.remove('waiting');
      setBusy(false);
      scrollDown();
    }
  }

  async function stream(sent, answer) {
    var response;
    try {
      response = await fetch(ANSWER_URL, {
        method: 'POST', headers: {'Content-Type': 'application/json'},
        body: JSON.stringify({messages: sent, session: session})});
    } catch (err) {
      throw new Error('연결이 끊겼어요. 잠시 후 다시 물어봐 주세요.');
    }
    if (!response.ok) throw new Error(await refusal(response));
    var reader = response.body.getReader(), decoder = new TextDecoder(), buffer = '', last = null;
    for (;;) {
      var part = await reader.read();
      if (part.done) break;
      buffer += decoder.decode(part.value, {stream: true});
      var end;
      while ((end = buffer.indexOf('\n\n')) >= 0) {  // one server-sent event per blank line
        var event = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        if (event.indexOf('data: ') !== 0) continue;
        var data = JSON.parse(event.slice(6));
        if (data.type === 'delta') {
          answer.bubble.textContent += data.text;
          scrollDown();
        } else if (data.type === 'done') {
          last = data;
        } else if (data.type === 'error') {
          throw new Error('답변을 만들지 못했어요. 잠시 후 다시 물어봐 주세요.');
        }
      }
    }
    if (!last) throw new Error('답변이 중간에 끊겼어요. 다시 물어봐 주세요.');
    return last;
  }

  async function refusal(response) {
    if (response.status === 429) return '지금 문의가 많아요. 잠시 후 다시 물어봐 주세요.';
    var body = null;
    try { body = await response.json(); } catch (e) { /* not JSON: the message below */ }
    var why = body && body.error && body.error.message;
    return '질문을 보내지 못했어요' + (why ? ' (' + why + ')' : '') + '.';
  }

  function finish(answer, last) {
    if (last.declined) answer.row.classList.add('declined');
    if (last.sources.length) {
      var names = last.sources.map(function (s) { return s.question; });
      answer.row.appendChild(el('div', 'sources', '참고한 FAQ: ' + names.join(' · ')));
    }
    rating(answer.row, last.id);
    choices(answer.row, last.related, '이런 질문은 어떠세요?');
  }

  // The form: Enter sends, Shift+Enter is a new line; never while Korean is being composed

  form.addEventListener('submit', function (event) {
    event.preventDefault();
    var question = input.value;
    if (!question.trim() || busy) return;
    input.value = '';
    grow();
    ask(question);
  });
  input.addEventListener('keydown', function (event) {
    if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
  function grow() {
    input.style.height = 'auto';
    input.style.height = Math.min(input.scrollHeight, 120) + 'px';
  }
  input.addEventListener('input', grow);

  // The greeting, with the example questions as buttons
  var hello = turn('bot', config.greeting);
  choices(hello.row, config.examples, '예시 질문');
})();
