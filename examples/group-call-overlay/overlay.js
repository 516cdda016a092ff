/*
 * kurento-tap overlay: a badge over each participant's <video> with the latest emotion.
 * Plain JS, no build step. Works with results from either path:
 *  - the NATS relay (your signaling server forwards `tap.v1.result.…` messages, docs/integration.md),
 *  - a DataChannel message (same JSON).
 *
 *   KurentoTapOverlay.attach(videoElement, 'ana');     // once per participant tile
 *   KurentoTapOverlay.show(resultJson);                 // for every result received
 */
(function (global) {
  'use strict';
  var tiles = {};                       // participant -> { video, badge }
  var EMOJI = { happy: '😊', sad: '😢', angry: '😠', surprise: '😮', fear: '😨', disgust: '🤢', neutral: '😐',
                calm: '🙂', aroused: '⚡' };

  function attach(video, participant) {
    var wrap = video.parentNode;
    if (getComputedStyle(wrap).position === 'static') wrap.style.position = 'relative';
    var badge = document.createElement('div');
    badge.className = 'kurento-tap-badge';
    badge.dataset.participant = participant;
    badge.style.cssText = 'position:absolute;left:8px;bottom:8px;padding:3px 8px;border-radius:12px;' +
      'background:rgba(0,0,0,.6);color:#fff;font:13px/1.3 system-ui,sans-serif;pointer-events:none;';
    badge.textContent = '…';
    wrap.appendChild(badge);
    tiles[participant] = { video: video, badge: badge, parts: {} };
  }

  function best(labels) {
    var top = null;
    Object.keys(labels || {}).forEach(function (k) { if (!top || labels[k] > labels[top]) top = k; });
    return top;
  }

  function show(result) {
    var r = typeof result === 'string' ? JSON.parse(result) : result;
    // A signaling server relaying results adds the app's own participant name as `name`.
    var tile = tiles[r.name || r.participant];
    if (!tile || r.v !== 1) return false;
    var extras = r.extras || {};
    var text;
    if (r.media === 'video') {
      var t = best(r.labels);
      text = extras.no_face || !t ? 'no face' : (EMOJI[t] || '') + ' ' + t + ' ' + Math.round(r.labels[t] * 100) + '%';
    } else {
      text = extras.arousal ? (EMOJI[extras.arousal] || '') + ' ' + extras.arousal : (extras.speaking === false ? '🔇' : '🎙');
    }
    tile.parts[r.media] = text;
    tile.badge.textContent = [tile.parts.video, tile.parts.audio].filter(Boolean).join('  ·  ');
    tile.badge.dataset.updated = String(Date.now());
    return true;
  }

  global.KurentoTapOverlay = { attach: attach, show: show };
})(window);
