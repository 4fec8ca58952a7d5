/* The chat widget for a shop's own page:
     <script src="https://BOT-HOST/widget.js" data-title="상담" data-color="#2f6f5e" async></script>
   A bubble at the bottom right opens the bot's chat (BOT-HOST/chat?embed=1) in an iframe: the
   shop's CSS and the chat's never meet, and the chat talks only to its own server. The bubble
   and the panel live in a shadow root, so the page's styles do not reach them either. On a
   phone-sized screen the panel is full screen. Nothing is loaded from anywhere else. */
(function () {
  'use strict';

  var script = document.currentScript ||
    document.querySelector('script[src$="/widget.js"], script[src*="/widget.js?"]');
  if (!script || window.builderChatWidget) return;  // (the tag pasted twice: one bubble)
  window.builderChatWidget = {};  // open() and close() once the bubble is there
  var COLOR = /^#[0-9a-fA-F]{3,8}$/;
  var color = COLOR.test(script.dataset.color || '') ? script.dataset.color : '#2f6f5e';
  var title = (script.dataset.title || '').trim() || '채팅 상담';
  var chatUrl = new URL('chat', script.src);  // next to widget.js: BOT-HOST and any path prefix
  chatUrl.searchParams.set('embed', '1');
  chatUrl.searchParams.set('color', color);

  var CSS = [
    ':host { all: initial; }',
    '.bubble { position: fixed; right: 20px; bottom: 20px; z-index: 2147483000;',
    '  width: 58px; height: 58px; border-radius: 50%; border: 0; cursor: pointer;',
    '  background: var(--accent); color: #fff; box-shadow: 0 6px 18px rgba(0,0,0,.22);',
    '  display: flex; align-items: center; justify-content: center; padding: 0; }',
    '.bubble:focus-visible { outline: 3px solid #fff; box-shadow: 0 0 0 6px var(--accent); }',
    '.bubble svg { width: 28px; height: 28px; fill: currentColor; }',
    '.panel { position: fixed; right: 20px; bottom: 90px; z-index: 2147483000;',
    '  width: 380px; height: min(620px, calc(100vh - 110px)); background: #fff;',
    '  border-radius: 14px; overflow: hidden; box-shadow: 0 10px 34px rgba(0,0,0,.25);',
    '  display: flex; flex-direction: column; font-family: system-ui, sans-serif; }',
    '.panel[hidden] { display: none; }',
    '.head { display: flex; align-items: center; gap: 8px; padding: 12px 10px 12px 16px;',
    '  background: var(--accent); color: #fff; }',
    '.title { flex: 1; font-size: 16px; font-weight: 700; overflow: hidden;',
    '  text-overflow: ellipsis; white-space: nowrap; }',
    '.close { border: 0; background: transparent; color: #fff; font-size: 24px;',
    '  line-height: 1; cursor: pointer; padding: 2px 8px; border-radius: 8px; }',
    '.close:focus-visible { outline: 2px solid #fff; }',
    'iframe { flex: 1; width: 100%; border: 0; background: #fff; }',
    '@media (max-width: 480px) {',
    '  .panel { inset: 0; width: 100%; height: 100%; border-radius: 0; }',
    '  .open .bubble { display: none; }',
    '}'
  ].join('\n');

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function chatIcon() {
    var ns = 'http://www.w3.org/2000/svg';  // (a namespace name, not a request)
    var svg = document.createElementNS(ns, 'svg');
    svg.setAttribute('viewBox', '0 0 24 24');
    svg.setAttribute('aria-hidden', 'true');
    var path = document.createElementNS(ns, 'path');
    path.setAttribute('d', 'M12 3C6.5 3 2 6.6 2 11c0 2.4 1.3 4.6 3.4 6.1L4.6 21l4.3-2.4c1 .3 2 .4 ' +
                      '3.1.4 5.5 0 10-3.6 10-8s-4.5-8-10-8z');
    svg.appendChild(path);
    return svg;
  }

  function build() {
    var host = el('div');
    host.id = 'builder-chat-widget';
    var root = host.attachShadow({mode: 'open'});
    var style = el('style', '', CSS);
    var box = el('div', 'widget');
    box.style.setProperty('--accent', color);

    var bubble = el('button', 'bubble');
    bubble.type = 'button';
    bubble.setAttribute('aria-label', title + ' 열기');
    bubble.setAttribute('aria-expanded', 'false');
    bubble.appendChild(chatIcon());

    var panel = el('div', 'panel');
    panel.hidden = true;
    panel.setAttribute('role', 'dialog');
    panel.setAttribute('aria-label', title);
    var head = el('div', 'head');
    var close = el('button', 'close', '×');
    close.type = 'button';
    close.setAttribute('aria-label', '닫기');
    head.appendChild(el('div', 'title', title));
    head.appendChild(close);
    panel.appendChild(head);

    var frame = null;  // made on the first open: a page that never opens the chat loads nothing
    function toggle(open) {
      if (open && !frame) {
        frame = el('iframe');
        frame.title = title;
        frame.src = chatUrl.href;
        panel.appendChild(frame);
      }
      panel.hidden = !open;
      box.classList.toggle('open', open);
      bubble.setAttribute('aria-expanded', String(open));
      bubble.setAttribute('aria-label', title + (open ? ' 닫기' : ' 열기'));
      if (open) frame.focus();
    }
    bubble.addEventListener('click', function () { toggle(panel.hidden); });
    close.addEventListener('click', function () { toggle(false); bubble.focus(); });

    box.appendChild(panel);
    box.appendChild(bubble);
    root.appendChild(style);
    root.appendChild(box);
    document.body.appendChild(host);
    window.builderChatWidget.open = function () { toggle(true); };
    window.builderChatWidget.close = function () { toggle(false); };
  }

  if (document.body) build();
  else document.addEventListener('DOMContentLoaded', build);
})();
