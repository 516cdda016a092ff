/*
 * kurento-tap overlay: a badge over each participant's <video> with the latest emotion.
 * Plain JS, no build step. Works with results from either path (docs/integration.md):
 *  - DataChannel: kurento-tap puts a small JSON message (docs/protocol.md §7) into the participant's
 *    own DataChannel; hand the channel's messages to onDataChannelMessage,
 *  - NATS relay: your signaling server forwards `tap.v1.result.…` messages; hand them to show().
 *
 *   KurentoTapOverlay.attach(videoElement, 'ana');          // once per participant tile
 *   dataChannelConfig: { id: 'kurento-tap', onmessage: KurentoTapOverlay.onDataChannelMessage }
 *   KurentoTapOverlay.show(resultJson);                      // relay path: every result received
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
    // Full results (relay) carry `extras`; DataChannel messages carry `top` and the top labels only.
    var extras = r.extras || {};
    var text;
    if (r.media === 'video') {
      var t = r.top || best(r.labels);
      var score = (r.labels || {})[t];
      text = extras.no_face || !t ? 'no face'
        : (EMOJI[t] || '') + ' ' + t + (score === undefined ? '' : ' ' + Math.round(score * 100) + '%');
    } else {
      var arousal = extras.arousal || (r.top && r.top !== 'speech' && r.top !== 'silent' ? r.top : null);
      text = arousal ? (EMOJI[arousal] || '') + ' ' + arousal
        : (extras.speaking === false || r.top === 'silent' ? '🔇' : '🎙');
    }
    tile.parts[r.media] = text;
    tile.badge.textContent = [tile.parts.video, tile.parts.audio].filter(Boolean).join('  ·  ');
    tile.badge.dataset.updated = String(Date.now());
    return true;
  }

  // A DataChannel `message` event. Other messages an app sends on the same channel are ignored.
  function onDataChannelMessage(event) {
    var r;
    try { r = JSON.parse(event.data); } catch (e) { return false; }
    if (!r || r.type !== 'kurento-tap.result') return false;
    return show(r);
  }

  global.KurentoTapOverlay = { attach: attach, show: show, onDataChannelMessage: onDataChannelMessage };
})(window);
