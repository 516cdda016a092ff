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
 *
 * The presenter's channel also carries the room mood (`kurento-tap.room`, protocol §8): it is
 * drawn as a bar across the top of the page (valence, arousal, attention, the emotions counted);
 * KurentoTapOverlay.showRoom(moodJson) does the same for the relay path.
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

  var bar = null;
  var COLORS = { happy: '#4caf50', neutral: '#90a4ae', surprise: '#ffd54f', sad: '#5c6bc0',
                 angry: '#e53935', fear: '#8e24aa', disgust: '#6d4c41' };

  function meter(label, value, min, max, color) {
    var pct = value === null || value === undefined ? 0 : (value - min) / (max - min) * 100;
    return '<span style="display:inline-flex;align-items:center;gap:6px;margin-right:16px">' + label +
      '<span style="display:inline-block;width:90px;height:8px;background:rgba(255,255,255,.2);border-radius:4px;overflow:hidden">' +
      '<span style="display:block;height:100%;width:' + Math.max(0, Math.min(100, pct)).toFixed(0) + '%;background:' + color + '"></span></span></span>';
  }

  // The room's mood, for the presenter: a bar across the top of the page.
  function showRoom(mood) {
    var m = typeof mood === 'string' ? JSON.parse(mood) : mood;
    if (!m || m.v !== 1 || m.type !== 'kurento-tap.room') return false;
    if (!bar) {
      bar = document.createElement('div');
      bar.className = 'kurento-tap-room';
      bar.style.cssText = 'position:fixed;left:0;right:0;top:0;z-index:1000;padding:6px 12px;' +
        'background:rgba(0,0,0,.75);color:#fff;font:13px/1.4 system-ui,sans-serif;pointer-events:none;';
      document.body.appendChild(bar);
    }
    bar.dataset.room = m.room;
    bar.dataset.published = String(m.published);
    if (!m.published) {
      bar.innerHTML = 'Room mood: waiting for enough participants (' + m.contributors + ' of ' + m.participants + ')';
      return true;
    }
    var trend = { rising: ' ↑', falling: ' ↓', steady: '' };
    var emotions = Object.keys(m.emotions || {}).sort().map(function (e) {
      return '<span style="color:' + (COLORS[e] || '#fff') + '">' + (EMOJI[e] || '') + ' ' + m.emotions[e] + '</span>';
    }).join(' ');
    bar.innerHTML = '<b>Room</b> ' +
      meter('mood' + (trend[m.valence_trend] || ''), m.valence, -1, 1, '#4fb3ff') +
      meter('energy' + (trend[m.arousal_trend] || ''), m.arousal, 0, 1, '#ffb74d') +
      meter('attention', m.attentive_share, 0, 1, '#4caf50') + emotions;
    bar.dataset.valence = String(m.valence);
    return true;
  }

  // A DataChannel `message` event. Other messages an app sends on the same channel are ignored.
  function onDataChannelMessage(event) {
    var r;
    try { r = JSON.parse(event.data); } catch (e) { return false; }
    if (r && r.type === 'kurento-tap.room') return showRoom(r);
    if (!r || r.type !== 'kurento-tap.result') return false;
    return show(r);
  }

  global.KurentoTapOverlay = { attach: attach, show: show, showRoom: showRoom, onDataChannelMessage: onDataChannelMessage };
})(window);
