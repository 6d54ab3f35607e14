/* playproof.js: records the plays of an HTML5 kiosk page through the local playproof agent.
 *
 *   <script src="http://127.0.0.1:8788/playproof.js"></script>
 *   <video id="ad" muted autoplay
 *          data-campaign-id="cmp-1" data-ad-group-id="ag-1" data-content-id="cnt-1"
 *          data-supplier-id="sup-1" data-expected-ms="15000" src="/media/cnt-1.webm"></video>
 *   <script>playproof.track(document.getElementById("ad"));</script>
 *
 * A <video> play starts on `playing` and ends on `ended` (completed), `error` (error) or a
 * new source (`emptied`: skipped). An <img> play starts on `load` and ends when the next
 * source loads (completed) or when the page calls `playproof.end(img, reason)`. The ids
 * are read from the element's data-* attributes when the play starts, so a page that
 * reuses one element sets them together with `src`. At a moment drawn in 42-52 % of the
 * expected length (inside the verifier's 40-60 %, with room for latency) the element is
 * drawn on a canvas and handed in as the proof screenshot: serve media from the page's
 * origin, or with CORS (`crossorigin="anonymous"`), or the canvas is tainted and the play
 * goes without one.
 *
 * The agent's token is asked for once with POST /session, which the agent answers only
 * for an Origin given by --allow-origin: this file carries no secret, so any page may load
 * it, but only the kiosk's own page can use it. Events on the element:
 * `playproof:started` (detail.play), `playproof:ended` (detail.seq, detail.reason),
 * `playproof:screenshot` (detail.sha256), `playproof:error` (detail.error).
 */
(function () {
  "use strict";
  var AGENT = new URL(document.currentScript.src).origin;
  var tokenPromise = null;

  function session() {
    if (tokenPromise === null) {
      tokenPromise = fetch(AGENT + "/session", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: "{}",
      }).then(answer);
      tokenPromise = tokenPromise.then(function (body) { return body.token; }, function (e) {
        tokenPromise = null; // ask again next time: the agent may be starting
        throw e;
      });
    }
    return tokenPromise;
  }

  function answer(response) {
    return response.json().then(function (body) {
      if (!response.ok) throw new Error(response.status + ": " + body.error);
      return body;
    });
  }

  function call(path, body, type, keepalive) {
    return session().then(function (token) {
      return fetch(AGENT + path, {
        method: "POST",
        headers: { "Content-Type": type || "application/json", Authorization: "Bearer " + token },
        body: type ? body : JSON.stringify(body || {}),
        keepalive: !!keepalive,
      });
    }).then(answer);
  }

  function idsOf(el) {
    var d = el.dataset;
    return {
      campaign_id: d.campaignId, ad_group_id: d.adGroupId, content_id: d.contentId,
      supplier_id: d.supplierId, expected_ms: Number(d.expectedMs),
    };
  }

  function emit(el, name, detail) {
    el.dispatchEvent(new CustomEvent("playproof:" + name, { detail: detail }));
  }

  function Tracker(el) {
    this.el = el;
    this.current = null;
    this.isVideo = el instanceof HTMLVideoElement;
    var self = this;
    var on = function (name, fn) { el.addEventListener(name, fn); };
    if (this.isVideo) {
      on("playing", function () {
        // `playing` also follows a stall or a pause: a new play only for a new source.
        if (!self.current || self.current.src !== el.currentSrc) self.begin();
      });
      on("ended", function () { self.finish("completed"); });
      on("emptied", function () { self.finish("skipped"); });
    } else {
      on("load", function () {
        if (!self.current || self.current.src !== el.currentSrc) self.begin();
      });
    }
    on("error", function () {
      // A source that cannot play is an `error` play, as mpv's player records it.
      if (!self.current || self.current.ended) self.begin();
      self.finish("error");
    });
  }

  Tracker.prototype.begin = function () {
    if (this.current) this.finish(this.isVideo ? "skipped" : "completed");
    var el = this.el;
    var play = { src: el.currentSrc, ended: false, ids: idsOf(el), timer: null };
    // Every call of a play goes through one chain: the end is never sent before the start
    // is answered, nor before a screenshot under way is handed in.
    play.chain = call("/plays", play.ids).then(function (body) {
      play.id = body.play;
      emit(el, "started", { play: body.play });
    });
    var self = this;
    // The agent times the picture when it arrives, and the play from when its start
    // arrived: drawing it in 42-52 % (not the whole 40-60 %) leaves room for both trips,
    // so that a busy screen's picture still lands inside the verifier's window.
    var moment = play.ids.expected_ms * (0.42 + Math.random() * 0.1);
    play.timer = setTimeout(function () { self.shoot(play); }, moment);
    this.current = play;
    this.guard(play);
  };

  Tracker.prototype.shoot = function (play) {
    if (play.ended) return;
    var el = this.el;
    var width = this.isVideo ? el.videoWidth : el.naturalWidth;
    var height = this.isVideo ? el.videoHeight : el.naturalHeight;
    if (!width || !height) return;
    var canvas = document.createElement("canvas");
    canvas.width = width;
    canvas.height = height;
    canvas.getContext("2d").drawImage(el, 0, 0, width, height);
    var picture = new Promise(function (resolve, reject) {
      try {
        canvas.toBlob(function (blob) { blob ? resolve(blob) : reject(new Error("no frame")); },
          "image/png");
      } catch (e) {
        reject(e); // a tainted canvas: media from another origin without CORS
      }
    });
    play.chain = play.chain.then(function () { return picture; }).then(function (blob) {
      return call("/plays/" + play.id + "/screenshot", blob, "image/png");
    }).then(function (body) { emit(el, "screenshot", { sha256: body.sha256 }); });
    this.guard(play);
  };

  Tracker.prototype.finish = function (reason, keepalive) {
    var play = this.current;
    if (!play || play.ended) return Promise.resolve();
    play.ended = true;
    clearTimeout(play.timer);
    this.current = null;
    var el = this.el;
    play.chain = play.chain.then(function () {
      if (play.id === undefined) return null; // the start itself failed: nothing to end
      return call("/plays/" + play.id + "/end", { end_reason: reason }, null, keepalive);
    }).then(function (body) {
      if (body) emit(el, "ended", { seq: body.seq, reason: reason, play: play.id });
    });
    this.guard(play);
    return play.chain;
  };

  Tracker.prototype.guard = function (play) {
    var el = this.el;
    // One failed step (a start refused, a screenshot tainted) is reported, and the chain
    // goes on so that the end is still sent.
    play.chain = play.chain.catch(function (e) {
      console.warn("playproof:", e);
      emit(el, "error", { error: String(e && e.message ? e.message : e) });
    });
  };

  var trackers = [];

  function track(el) {
    if (el.__playproof) return el.__playproof;
    var tracker = new Tracker(el);
    el.__playproof = tracker;
    trackers.push(tracker);
    // Media that started before the script ran.
    if ((tracker.isVideo && !el.paused && el.readyState > 2) ||
        (!tracker.isVideo && el.complete && el.naturalWidth)) {
      tracker.begin();
    }
    return tracker;
  }

  function end(el, reason) {
    return track(el).finish(reason || "completed");
  }

  window.addEventListener("pagehide", function () {
    trackers.forEach(function (t) { t.finish("interrupted", true); });
  });

  // With the agent's --no-session, whoever launches the kiosk hands the page the token.
  function useToken(token) { tokenPromise = Promise.resolve(token); }

  window.playproof = { track: track, end: end, session: session, useToken: useToken, agent: AGENT };
})();
