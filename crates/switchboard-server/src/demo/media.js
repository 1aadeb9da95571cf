// What the WHIP and WHEP demo pages share: their query parameters, the peer connection (with
// `relay=1`, everything through TURN, using the ICE servers the server hands out), and the
// selected candidate's type for tests.

const params = new URLSearchParams(location.search);

/** `room` (default `demo`), `token`, `peer`, `relay=1`, `layer` (a simulcast layer to watch),
 * `simulcast=1` (publish two layers), and the Authorization header. */
export const page = {
  room: params.get('room') || 'demo',
  token: params.get('token'),
  peer: params.get('peer'),
  layer: params.get('layer'),
  simulcast: params.get('simulcast') === '1',
  relay: params.get('relay') === '1',
};
page.auth = page.token ? { Authorization: `Bearer ${page.token}` } : {};

/** A peer connection: plain, or relay-only through the server's TURN servers. */
export async function peerConnection() {
  if (!page.relay) return new RTCPeerConnection();
  const res = await fetch('/api/ice-servers', { headers: page.auth });
  if (!res.ok) throw new Error(`/api/ice-servers answered ${res.status}`);
  const { ice_servers: iceServers } = await res.json();
  return new RTCPeerConnection({ iceServers, iceTransportPolicy: 'relay' });
}

/** The type of this side's candidate in `pc`'s selected pair (`host`, `relay`...). */
export async function localCandidateType(pc) {
  if (!pc) return null;
  const stats = await pc.getStats();
  let type = null;
  stats.forEach((s) => {
    if (s.type === 'transport' && s.selectedCandidatePairId) {
      type = stats.get(stats.get(s.selectedCandidatePairId)?.localCandidateId)?.candidateType ?? null;
    }
  });
  return type;
}
