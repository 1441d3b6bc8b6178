// One WebRTC call: local media, the peer connection, and what the page shows of it (remote video, an audio
// level meter, counters). ICE candidates are not trickled: each side waits until its candidates are
// gathered and sends them inside its offer or answer, which keeps the signaling to two messages.

const GATHER_TIMEOUT_MS = 5000;

/** Camera and microphone; errors become sentences a person can act on. */
export async function localMedia() {
  try {
    return await navigator.mediaDevices.getUserMedia({ audio: true, video: { width: 320, height: 240 } });
  } catch (err) {
    if (err.name === 'NotFoundError' || err.name === 'OverconstrainedError') {
      throw new Error('No camera or microphone was found on this device.');
    }
    if (err.name === 'NotAllowedError') throw new Error('Access to the camera and microphone was refused.');
    throw new Error(`The camera or microphone could not be opened (${err.name}).`);
  }
}

function gathered(pc) {
  if (pc.iceGatheringState === 'complete') return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, GATHER_TIMEOUT_MS);
    pc.addEventListener('icegatheringstatechange', () => {
      if (pc.iceGatheringState === 'complete') {
        clearTimeout(timer);
        resolve();
      }
    });
  });
}

export class Call {
  /** `view`: {remote: <video>, local: <video>, meter: <element>}; `onIce(state)` on every ICE change. */
  constructor({ iceServers, relayOnly, stream, view, onIce }) {
    this.pc = new RTCPeerConnection({ iceServers, iceTransportPolicy: relayOnly ? 'relay' : 'all' });
    this.stream = stream;
    this.view = view;
    this.stats = { inboundPackets: 0, inboundBytes: 0, localCandidateType: null, remoteCandidateType: null };
    for (const track of stream.getTracks()) this.pc.addTrack(track, stream);
    view.local.srcObject = stream;
    this.pc.addEventListener('track', (event) => {
      view.remote.srcObject = event.streams[0] ?? new MediaStream([event.track]);
    });
    this.pc.addEventListener('iceconnectionstatechange', () => onIce(this.pc.iceConnectionState));
    this.poller = setInterval(() => this.#poll(), 500);
  }

  /** The caller's side: an offer with every candidate in it. */
  async offer() {
    await this.pc.setLocalDescription(await this.pc.createOffer());
    await gathered(this.pc);
    return this.pc.localDescription.toJSON();
  }

  /** The owner's side: takes the offer, returns the answer with every candidate in it. */
  async answer(offer) {
    await this.pc.setRemoteDescription(offer);
    await this.pc.setLocalDescription(await this.pc.createAnswer());
    await gathered(this.pc);
    return this.pc.localDescription.toJSON();
  }

  accept(answer) {
    return this.pc.setRemoteDescription(answer);
  }

  /** Reads getStats: inbound RTP counters, the selected candidate pair, the remote audio level. */
  async #poll() {
    const report = await this.pc.getStats();
    let packets = 0;
    let bytes = 0;
    let level = 0;
    let pair = null;
    report.forEach((s) => {
      if (s.type === 'inbound-rtp') {
        packets += s.packetsReceived ?? 0;
        bytes += s.bytesReceived ?? 0;
        if (s.kind === 'audio') level = s.audioLevel ?? 0;
      }
      if (s.type === 'transport' && s.selectedCandidatePairId) pair = report.get(s.selectedCandidatePairId);
    });
    this.stats.inboundPackets = packets;
    this.stats.inboundBytes = bytes;
    if (pair) {
      this.stats.localCandidateType = report.get(pair.localCandidateId)?.candidateType ?? null;
      this.stats.remoteCandidateType = report.get(pair.remoteCandidateId)?.candidateType ?? null;
    }
    this.view.meter.style.width = `${Math.min(100, Math.round(Math.sqrt(level) * 100))}%`;
  }

  close() {
    clearInterval(this.poller);
    this.pc.close();
    for (const track of this.stream.getTracks()) track.stop();
    this.view.remote.srcObject = null;
    this.view.local.srcObject = null;
    this.view.meter.style.width = '0%';
  }
}
