// A group-call participant, as Kurento's tutorial page (conferenceroom.js) behaves, with plain
// RTCPeerConnection: one sendonly connection for our own camera and microphone (with a DataChannel
// opened before the offer, so KMS can deliver kurento-tap results), one recvonly connection per
// other participant.
//
// Query parameters: room, name, audio=0|1, video=0|1, codec=vp8|h264, dc=0|1, subscribe=0|1,
// presenter=0|1 (with the app's --tags: tagged kurento-tap.role=presenter, receives the room mood).
'use strict';
const q = new URLSearchParams(location.search);
const room = q.get('room') || 'demo';
const me = q.get('name') || 'user' + Math.floor(Math.random() * 1e6);
const wantAudio = q.get('audio') !== '0';
const wantVideo = q.get('video') !== '0';
const codec = (q.get('codec') || 'vp8').toLowerCase();
const wantChannel = q.get('dc') !== '0';
const subscribe = q.get('subscribe') !== '0';
const presenter = q.get('presenter') === '1';
// screen=1: also publish a second, video-only stream as a screen share (the app's --openvidu-shape
// names it str_SCR_…; the fake camera stands in for the screen).
const shareScreen = q.get('screen') === '1';

// What tests read (and a person can look at in the console).
window.gc = { room, me, joined: false, published: false, connection: 'new', channel: 'none',
              results: [], signals: [], kinds: {}, errors: [], peers: {} };

const peers = {};   // name -> RTCPeerConnection (our own under `me`)
// What our own camera's encoder did (tests compare it with what kurento-tap decoded).
gc.sent = async () => {
  const out = {};
  const pc = peers[me];
  if (!pc) return out;
  (await pc.getStats()).forEach((s) => {
    if (s.type === 'outbound-rtp' && s.kind === 'video') {
      Object.assign(out, { framesEncoded: s.framesEncoded, framesSent: s.framesSent, keyFramesEncoded: s.keyFramesEncoded,
                           fps: s.framesPerSecond, width: s.frameWidth, height: s.frameHeight, limitation: s.qualityLimitationReason,
                           pli: s.pliCount, fir: s.firCount, nack: s.nackCount, encoder: s.encoderImplementation });
    }
  });
  return out;
};
// What we decoded of each other participant's camera (tests compare kurento-tap with a real
// subscriber of the same KMS: under loss KMS itself freezes a publisher for everyone).
gc.received = async () => {
  const out = {};
  for (const [name, pc] of Object.entries(peers)) {
    if (name === me || name.endsWith(':screen')) continue;
    (await pc.getStats()).forEach((s) => {
      if (s.type === 'inbound-rtp' && s.kind === 'video') {
        out[name] = { framesDecoded: s.framesDecoded, framesReceived: s.framesReceived, keyFramesDecoded: s.keyFramesDecoded,
                      freezeCount: s.freezeCount, totalFreezesDuration: s.totalFreezesDuration,
                      packetsLost: s.packetsLost, packetsReceived: s.packetsReceived, nack: s.nackCount, pli: s.pliCount, fir: s.firCount };
      }
    });
  }
  return out;
};
const ws = new WebSocket(`ws://${location.host}/groupcall`);
const send = (m) => ws.readyState === 1 && ws.send(JSON.stringify(m));
const status = (t) => { document.getElementById('status').textContent = t; };

ws.onopen = () => send({ id: 'joinRoom', name: me, room, presenter });
ws.onmessage = async (e) => {
  const m = JSON.parse(e.data);
  try {
    switch (m.id) {
      case 'existingParticipants': gc.joined = true; await publish(); if (shareScreen) await publishScreen(); if (subscribe) m.data.forEach(watch); break;
      case 'newParticipantArrived': if (subscribe) watch(m.name); break;
      case 'participantLeft': drop(m.name); break;
      case 'receiveVideoAnswer': await peers[m.name]?.setRemoteDescription({ type: 'answer', sdp: m.sdpAnswer }); break;
      case 'iceCandidate': await peers[m.name]?.addIceCandidate(m.candidate); break;
      case 'error': gc.errors.push(m.message); break;
      // OpenVidu-shaped sessions: what openvidu-browser hands to session.on('signal:<type>').
      case 'signal': gc.signals.push({ at: Date.now(), type: m.type, data: m.data }); break;
    }
  } catch (err) { gc.errors.push(String(err)); }
};
window.addEventListener('beforeunload', () => send({ id: 'leaveRoom' }));

function tile(name) {
  let f = document.getElementById('tile-' + name);
  if (!f) {
    f = document.createElement('figure');
    f.id = 'tile-' + name;
    f.innerHTML = `<video autoplay muted playsinline></video><figcaption></figcaption><div class="result"></div>`;
    f.querySelector('figcaption').textContent = name === me ? `${name} (me)` : name;
    document.getElementById('videos').appendChild(f);
  }
  return f;
}

function connect(name) {
  const pc = new RTCPeerConnection({ bundlePolicy: 'max-compat' });
  pc.onicecandidate = (e) => e.candidate && send({ id: 'onIceCandidate', name, candidate: e.candidate });
  peers[name] = pc;
  return pc;
}

async function publishScreen() {
  const stream = await navigator.mediaDevices.getUserMedia({ video: { width: 320, height: 240, frameRate: 5 } });
  const pc = connect(me + ':screen');
  pc.onconnectionstatechange = () => { gc.screen = pc.connectionState; };
  pc.addTransceiver(stream.getVideoTracks()[0], { direction: 'sendonly', streams: [stream] });
  const offer = await pc.createOffer();
  await pc.setLocalDescription(offer);
  send({ id: 'receiveVideoFrom', sender: me + ':screen', sdpOffer: offer.sdp });
}

async function publish() {
  const stream = await navigator.mediaDevices.getUserMedia({
    audio: wantAudio,
    video: wantVideo ? { width: 320, height: 240, frameRate: 15 } : false,
  });
  tile(me).querySelector('video').srcObject = stream;
  const pc = connect(me);
  pc.onconnectionstatechange = () => { gc.connection = pc.connectionState; status(`${me} in ${room}: ${pc.connectionState}`); };
  if (wantChannel) {
    // Before the offer, or Chrome puts no m=application in it.
    const ch = pc.createDataChannel('kurento-tap');
    ch.onopen = () => { gc.channel = 'open'; };
    ch.onclose = () => { gc.channel = 'closed'; };
    ch.onmessage = (e) => {
      let msg;
      try { msg = JSON.parse(e.data); } catch { return; }
      gc.results.push({ at: Date.now(), msg });
      const kind = msg.type || 'unknown';
      gc.kinds[kind] = (gc.kinds[kind] || 0) + 1;
      if (msg.model) gc.kinds[msg.model] = (gc.kinds[msg.model] || 0) + 1;
      if (msg.type === 'kurento-tap.room') {
        // We present: the room's mood (without us), or how many contribute until enough do.
        gc.mood = msg;
        status(msg.published
          ? `${me} presents · room valence ${msg.valence?.toFixed(2) ?? '—'} · arousal ${msg.arousal?.toFixed(2) ?? '—'} · ${msg.contributors} contribute`
          : `${me} presents · room mood: ${msg.contributors} of ${msg.participants} contribute (too few to show)`);
      } else if (msg.type === 'kurento-tap.state') {
        tile(me).querySelector('.result').textContent = `${msg.emotion ?? '—'} ${Math.round(msg.confidence * 100)}%`;
      } else {
        tile(me).querySelector('.result').textContent = `${msg.model ?? ''} ${msg.top ?? ''}`;
      }
      if (gc.results.length > 2000) gc.results.splice(0, 1000);
    };
  }
  for (const track of stream.getTracks()) {
    const t = pc.addTransceiver(track, { direction: 'sendonly', streams: [stream] });
    if (track.kind === 'video' && codec === 'h264') {
      const caps = RTCRtpSender.getCapabilities('video').codecs;
      t.setCodecPreferences([...caps.filter(c => /h264/i.test(c.mimeType)),
                             ...caps.filter(c => !/h264/i.test(c.mimeType))]);
    }
  }
  const offer = await pc.createOffer();
  await pc.setLocalDescription(offer);
  send({ id: 'receiveVideoFrom', sender: me, sdpOffer: offer.sdp });
  gc.published = true;
}

async function watch(name) {
  if (peers[name] || name === me) return;
  const pc = connect(name);
  pc.addTransceiver('audio', { direction: 'recvonly' });
  pc.addTransceiver('video', { direction: 'recvonly' });
  const stream = new MediaStream();
  pc.ontrack = (e) => { stream.addTrack(e.track); tile(name).querySelector('video').srcObject = stream; };
  pc.onconnectionstatechange = () => { gc.peers[name] = pc.connectionState; };
  const offer = await pc.createOffer();
  await pc.setLocalDescription(offer);
  send({ id: 'receiveVideoFrom', sender: name, sdpOffer: offer.sdp });
}

function drop(name) {
  peers[name]?.close();
  delete peers[name];
  delete gc.peers[name];
  document.getElementById('tile-' + name)?.remove();
}
