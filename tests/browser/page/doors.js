// The page side of the browser tests: plain browser code talking to the server's doors the way
// an application would (EventSource, fetch streaming, a long-polling loop, WebSocket). Each
// client records every frame it gets in `states[key]`, which the tests read through
// `sb.snapshot(key)` and assert on from Node.
(function () {
  'use strict';

  const states = {};
  const handles = {};
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  function parse(text, st) {
    try {
      return JSON.parse(text);
    } catch (e) {
      st.bad.push(String(text).slice(0, 300));
      return null;
    }
  }

  function withParam(url, name, value) {
    return `${url}${url.includes('?') ? '&' : '?'}${name}=${encodeURIComponent(value)}`;
  }

  window.sb = {
    snapshot(key) {
      return states[key] === undefined ? null : JSON.parse(JSON.stringify(states[key]));
    },

    /** A plain EventSource; the browser reconnects it by itself, sending Last-Event-ID. */
    startSse(key, url) {
      const st = (states[key] = { door: 'sse', url, frames: [], events: [], bad: [], opens: 0, errors: 0 });
      const es = new EventSource(url);
      handles[key] = es;
      es.onopen = () => {
        st.opens++;
        st.events.push({ ev: 'open', t: Date.now() });
      };
      es.onerror = () => {
        st.errors++;
        st.events.push({ ev: 'error', t: Date.now(), readyState: es.readyState });
      };
      es.onmessage = (e) => {
        const frame = parse(e.data, st);
        if (frame) st.frames.push({ frame, t: Date.now(), id: e.lastEventId });
      };
    },

    /**
     * fetch() streaming of NDJSON: splits the body into lines, one frame each, and when the
     * stream ends (or fails) reconnects after `reconnectDelay` ms with `?cursor=` set to the
     * last cursor it saw.
     */
    startStream(key, url, { reconnectDelay = 500 } = {}) {
      const st = (states[key] = { door: 'stream', url, frames: [], requests: [], bad: [], cursor: null, stopped: false });
      const ctl = (handles[key] = { abort: null });
      (async () => {
        while (!st.stopped) {
          const u = st.cursor ? withParam(url, 'cursor', st.cursor) : url;
          const req = { url: u, start: Date.now() };
          const index = st.requests.push(req) - 1;
          const ac = new AbortController();
          ctl.abort = () => ac.abort();
          try {
            const res = await fetch(u, { cache: 'no-store', signal: ac.signal });
            req.status = res.status;
            req.contentType = res.headers.get('content-type');
            if (!res.ok) {
              req.body = (await res.text()).slice(0, 500);
            } else {
              const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
              let buf = '';
              for (;;) {
                const { value, done } = await reader.read();
                if (done) break;
                buf += value;
                let nl;
                while ((nl = buf.indexOf('\n')) >= 0) {
                  const line = buf.slice(0, nl).replace(/\r$/, '');
                  buf = buf.slice(nl + 1);
                  if (!line.trim()) continue;
                  const frame = parse(line, st);
                  if (!frame) continue;
                  st.frames.push({ frame, t: Date.now(), request: index });
                  if (typeof frame.cursor === 'string') st.cursor = frame.cursor;
                }
              }
              if (buf.trim()) req.unterminated = buf.slice(0, 300);
              req.how = 'ended';
            }
          } catch (e) {
            req.how = `failed: ${e.message}`;
          }
          req.end = Date.now();
          if (!st.stopped) await sleep(reconnectDelay);
        }
      })();
    },

    /**
     * Long polling: one fetch at a time, each passing the last cursor (none on the first).
     * Setting `hold` (sb.setPoll) makes the loop wait before its next poll, so a test can act
     * between polls; `held` says it is waiting.
     */
    startPoll(key, url, { timeout = null } = {}) {
      const st = (states[key] = {
        door: 'poll', url, frames: [], polls: [], bad: [], cursor: null,
        inflight: null, hold: false, held: false, stopped: false,
      });
      const ctl = (handles[key] = { abort: null });
      (async () => {
        while (!st.stopped) {
          if (st.hold) {
            st.held = true;
            while (st.hold && !st.stopped) await sleep(10);
            st.held = false;
            continue;
          }
          let u = st.cursor ? withParam(url, 'cursor', st.cursor) : url;
          if (timeout !== null) u = withParam(u, 'timeout', timeout);
          const p = { url: u, start: Date.now(), withCursor: st.cursor !== null };
          const index = st.polls.push(p) - 1;
          st.inflight = index;
          const ac = new AbortController();
          ctl.abort = () => ac.abort();
          let pause = 0;
          try {
            const res = await fetch(u, { cache: 'no-store', signal: ac.signal });
            p.status = res.status;
            p.contentType = res.headers.get('content-type');
            const text = await res.text();
            p.end = Date.now();
            const answer = res.ok ? parse(text, st) : null;
            if (!answer || !Array.isArray(answer.messages)) {
              p.body = text.slice(0, 500);
              pause = 300;
            } else {
              p.count = answer.messages.length;
              p.types = answer.messages.map((m) => m && m.type);
              p.cursor = answer.cursor;
              for (const frame of answer.messages) st.frames.push({ frame, t: p.end, poll: index });
              if (typeof answer.cursor === 'string') st.cursor = answer.cursor;
              else pause = 300;
            }
          } catch (e) {
            p.end = Date.now();
            p.error = e.message;
            pause = 300;
          }
          st.inflight = null;
          if (pause && !st.stopped) await sleep(pause);
        }
      })();
    },

    setPoll(key, patch) {
      Object.assign(states[key], patch);
    },

    /** A WebSocket that subscribes to `channel` once `connected` arrives. */
    startWs(key, url, channel) {
      const st = (states[key] = { door: 'ws', url, frames: [], events: [], bad: [] });
      const ws = new WebSocket(url);
      handles[key] = ws;
      ws.onopen = () => st.events.push('open');
      ws.onerror = () => st.events.push('error');
      ws.onclose = (e) => st.events.push(`close ${e.code}`);
      ws.onmessage = (e) => {
        const frame = parse(e.data, st);
        if (!frame) return;
        st.frames.push({ frame, t: Date.now() });
        if (frame.type === 'connected') ws.send(JSON.stringify({ type: 'subscribe', id: 1, channel }));
      };
    },

    stop(key) {
      const st = states[key];
      if (st) st.stopped = true;
      const h = handles[key];
      if (!h) return;
      if (typeof h.close === 'function') h.close();
      else if (typeof h.abort === 'function') h.abort();
    },

    /** One fetch whose whole body is read: status, content type and body text, or the error. */
    async tryFetch(url, init) {
      try {
        const res = await fetch(url, { cache: 'no-store', ...init });
        const body = await res.text();
        return { status: res.status, contentType: res.headers.get('content-type'), body };
      } catch (e) {
        return { error: `${e.name}: ${e.message}` };
      }
    },
  };
})();
