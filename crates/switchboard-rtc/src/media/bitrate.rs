//! Bitrate caps (`[webrtc.media] max_track_bitrate`): the answer's `b=AS` lines tell a
//! publisher the cap, and a [`Meter`] per published track catches one that ignores it.

use std::time::{Duration, Instant};

/// How long one measurement lasts: long enough that a keyframe's burst averages out.
pub(super) const WINDOW: Duration = Duration::from_secs(2);
/// A track over this many times the cap...
const TOLERANCE: u64 = 2;
/// ...for this many windows in a row gets its publisher dropped.
const STRIKES: u8 = 2;

/// Adds `b=AS:<kbps>` to every audio and video section of `sdp` (after its `c=` line, where
/// RFC 8866 puts it): what the publisher may send on each. One line only: every browser
/// obeys `b=AS`, and some stacks (str0m among them) parse no more than one `b=` per section.
pub(super) fn cap_sdp(sdp: &str, bits_per_second: u64) -> String {
    if bits_per_second == 0 {
        return sdp.to_owned();
    }
    let mut out = String::with_capacity(sdp.len() + 256);
    let mut in_media = false;
    for line in sdp.split_inclusive('\n') {
        let text = line.trim_end_matches(['\r', '\n']);
        if text.starts_with("m=") {
            in_media = text.starts_with("m=audio") || text.starts_with("m=video");
        } else if in_media && text.starts_with("b=") {
            // Ours replace any the SDP had.
            continue;
        }
        out.push_str(line);
        if in_media && text.starts_with("c=") {
            out.push_str(&format!("b=AS:{}\r\n", bits_per_second.div_ceil(1000)));
        }
    }
    out
}

/// Measures one track's incoming bitrate, window by window.
#[derive(Debug)]
pub(super) struct Meter {
    started: Instant,
    bytes: u64,
    strikes: u8,
}

impl Meter {
    pub(super) fn new(now: Instant) -> Self {
        Meter {
            started: now,
            bytes: 0,
            strikes: 0,
        }
    }

    /// Counts `bytes` received at `now`; true when the track has been over the tolerance for
    /// too long (its publisher must go).
    pub(super) fn add(&mut self, bytes: usize, now: Instant, cap: u64) -> bool {
        self.bytes += bytes as u64;
        let elapsed = now.saturating_duration_since(self.started);
        if elapsed < WINDOW {
            return false;
        }
        let bits_per_second = self.bytes * 8 * 1000 / (elapsed.as_millis() as u64).max(1);
        if cap > 0 && bits_per_second > cap * TOLERANCE {
            self.strikes += 1;
        } else {
            self.strikes = 0;
        }
        self.started = now;
        self.bytes = 0;
        self.strikes >= STRIKES
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFERED: &str = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n\
        m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\nb=AS:9999\r\na=mid:0\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:1\r\n\
        m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\na=mid:2\r\n";

    #[test]
    fn every_audio_and_video_section_gets_the_cap_after_its_c_line() {
        let capped = cap_sdp(OFFERED, 300_000);
        let lines: Vec<&str> = capped.lines().collect();
        let at = |prefix: &str| lines.iter().position(|l| l.starts_with(prefix)).unwrap();
        assert_eq!(capped.matches("b=").count(), 2, "{capped}");
        assert_eq!(capped.matches("b=AS:300\r\n").count(), 2);
        assert!(!capped.contains("b=AS:9999"), "the SDP's own replaced");
        assert_eq!(lines[at("m=audio") + 2], "b=AS:300");
        assert_eq!(lines[at("m=video") + 2], "b=AS:300");
        assert_eq!(
            lines[at("m=application") + 2],
            "a=mid:2",
            "data channels uncapped"
        );
        assert_eq!(cap_sdp(OFFERED, 0), OFFERED, "0: no cap");
    }

    #[test]
    fn a_track_over_twice_the_cap_for_two_windows_is_caught() {
        let start = Instant::now();
        let mut meter = Meter::new(start);
        let cap = 100_000; // 12,500 bytes a second
        // Under the cap, with a keyframe's burst: fine.
        assert!(!meter.add(40_000, start + Duration::from_millis(100), cap));
        assert!(!meter.add(1_000, start + WINDOW, cap));
        // Three times the cap: one window is a strike, the second drops it.
        let mut t = start + WINDOW;
        let mut caught = false;
        for _ in 0..2 {
            assert!(!caught);
            caught = meter.add(75_000, t + Duration::from_millis(500), cap);
            t += WINDOW;
            caught |= meter.add(0, t, cap);
        }
        assert!(caught);
        // A window back under the cap forgives the strikes.
        let mut meter = Meter::new(start);
        assert!(!meter.add(80_000, start + WINDOW, cap));
        assert!(!meter.add(1_000, start + WINDOW * 2, cap));
        assert!(!meter.add(80_000, start + WINDOW * 3, cap));
    }
}
