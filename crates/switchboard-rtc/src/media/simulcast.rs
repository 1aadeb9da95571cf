//! Simulcast: a publisher may send one track as several layers (RTP stream ids, `rid`s, each
//! a resolution and bitrate). Each receiving slot carries exactly one layer at a time: the one
//! its receiver asked for (WHEP `?layer=`), else the best the publisher sends (the highest
//! bitrate measured). A slot changes layers only at a keyframe of the new one, so its decoder
//! never sees a frame that refers to another layer's pictures. Sans-I/O: times come in.

use std::time::{Duration, Instant};

use str0m::media::Rid;

/// How long a layer's bitrate is measured before it counts: a few frames' worth.
const WINDOW: Duration = Duration::from_millis(1000);
/// A layer not seen for this long is taken as stopped (the publisher dropped it: CPU or
/// bandwidth), and receivers move to another.
const GONE_AFTER: Duration = Duration::from_millis(1500);

#[derive(Debug)]
struct Layer {
    rid: Rid,
    bytes: u64,
    /// Bytes of the last full window (0 until one ended).
    last: u64,
    started: Instant,
    seen: Instant,
}

/// The layers one publisher m-line sends, and how much each carries.
#[derive(Debug, Default)]
pub(super) struct Layers {
    layers: Vec<Layer>,
}

/// At most this many layers per m-line (WebRTC uses three; each costs a little state).
const MAX_LAYERS: usize = 4;

impl Layers {
    /// A frame of layer `rid`, `bytes` long, came in at `now`.
    pub(super) fn record(&mut self, rid: Rid, bytes: usize, now: Instant) {
        let layer = match self.layers.iter_mut().position(|l| l.rid == rid) {
            Some(i) => &mut self.layers[i],
            None if self.layers.len() < MAX_LAYERS => {
                self.layers.push(Layer {
                    rid,
                    bytes: 0,
                    last: 0,
                    started: now,
                    seen: now,
                });
                self.layers.last_mut().expect("just pushed")
            }
            None => return,
        };
        layer.seen = now;
        if now.saturating_duration_since(layer.started) >= WINDOW {
            layer.last = layer.bytes;
            layer.bytes = 0;
            layer.started = now;
        }
        layer.bytes += bytes as u64;
    }

    /// Whether `rid` is being sent.
    pub(super) fn has(&self, rid: Rid, now: Instant) -> bool {
        self.layers.iter().any(|l| l.rid == rid && live(l, now))
    }

    /// The live layer with the highest bitrate (the best picture).
    pub(super) fn best(&self, now: Instant) -> Option<Rid> {
        self.layers
            .iter()
            .filter(|l| live(l, now))
            .max_by_key(|l| l.last.max(l.bytes))
            .map(|l| l.rid)
    }

    /// Every layer seen (to ask each for a keyframe).
    pub(super) fn rids(&self) -> impl Iterator<Item = Rid> + '_ {
        self.layers.iter().map(|l| l.rid)
    }
}

fn live(layer: &Layer, now: Instant) -> bool {
    now.saturating_duration_since(layer.seen) < GONE_AFTER
}

/// Which layer one receiving slot carries.
#[derive(Debug, Default)]
pub(super) struct SlotLayer {
    /// The layer its receiver asked for, if any.
    pub wanted: Option<Rid>,
    /// The layer it carries now (`None` until the first keyframe).
    pub current: Option<Rid>,
}

/// What to do with one frame for one slot.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Verdict {
    /// Write it to the slot.
    pub forward: bool,
    /// The slot waits for a keyframe of this layer: ask the publisher for one.
    pub keyframe: Option<Rid>,
}

impl SlotLayer {
    /// A frame of layer `rid` arrived (`keyframe`: it starts a picture on its own).
    pub(super) fn admit(
        &mut self,
        rid: Rid,
        keyframe: bool,
        layers: &Layers,
        now: Instant,
    ) -> Verdict {
        let target = self
            .wanted
            .filter(|w| layers.has(*w, now))
            .or_else(|| layers.best(now));
        if self.current != target && Some(rid) == target && keyframe {
            self.current = target;
        }
        let waiting = self.current != target;
        // A slot whose layer stopped altogether carries nothing until the target's keyframe.
        if self.current.is_some_and(|c| !layers.has(c, now)) {
            self.current = None;
        }
        Verdict {
            forward: self.current == Some(rid),
            keyframe: if waiting { target } else { None },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(layers: &mut Layers, now: Instant, sizes: &[(&str, usize)]) {
        for (rid, bytes) in sizes {
            layers.record(Rid::from(*rid), *bytes, now);
        }
    }

    #[test]
    fn a_slot_starts_on_the_best_layer_at_its_keyframe_and_carries_only_it() {
        let t = Instant::now();
        let mut layers = Layers::default();
        feed(&mut layers, t, &[("l", 100), ("h", 1000)]);
        assert_eq!(layers.best(t), Some(Rid::from("h")));
        let mut slot = SlotLayer::default();
        let h = Rid::from("h");
        let l = Rid::from("l");
        // Not a keyframe: nothing yet, and a keyframe of `h` is wanted.
        let v = slot.admit(h, false, &layers, t);
        assert_eq!(
            v,
            Verdict {
                forward: false,
                keyframe: Some(h)
            }
        );
        assert!(
            !slot.admit(l, true, &layers, t).forward,
            "another layer's keyframe"
        );
        let v = slot.admit(h, true, &layers, t);
        assert_eq!(
            v,
            Verdict {
                forward: true,
                keyframe: None
            }
        );
        assert!(slot.admit(h, false, &layers, t).forward);
        assert!(
            !slot.admit(l, false, &layers, t).forward,
            "never two layers in one slot"
        );
    }

    #[test]
    fn a_wanted_layer_wins_while_it_is_sent_and_switches_happen_at_keyframes() {
        let t = Instant::now();
        let mut layers = Layers::default();
        let (l, h) = (Rid::from("l"), Rid::from("h"));
        feed(&mut layers, t, &[("l", 100), ("h", 1000)]);
        let mut slot = SlotLayer {
            wanted: Some(l),
            current: None,
        };
        assert!(slot.admit(l, true, &layers, t).forward);
        assert!(!slot.admit(h, true, &layers, t).forward);
        // The wanted layer stops (the publisher dropped it): the slot moves to the best one,
        // at its keyframe.
        let later = t + GONE_AFTER + Duration::from_millis(10);
        feed(&mut layers, later, &[("h", 1000)]);
        let v = slot.admit(h, false, &layers, later);
        assert_eq!(
            v,
            Verdict {
                forward: false,
                keyframe: Some(h)
            }
        );
        assert!(slot.admit(h, true, &layers, later).forward);
    }

    #[test]
    fn the_best_layer_is_the_one_carrying_the_most() {
        let t = Instant::now();
        let mut layers = Layers::default();
        for i in 0..30u64 {
            let now = t + Duration::from_millis(i * 50);
            feed(&mut layers, now, &[("q", 50), ("f", 900), ("h", 300)]);
        }
        assert_eq!(
            layers.best(t + Duration::from_millis(1500)),
            Some(Rid::from("f"))
        );
        let rids: Vec<String> = layers.rids().map(|r| r.to_string()).collect();
        assert_eq!(rids.len(), 3);
        // At most MAX_LAYERS remembered, whatever a publisher sends.
        for i in 0..10 {
            layers.record(Rid::from(format!("x{i}").as_str()), 10, t);
        }
        assert_eq!(layers.rids().count(), MAX_LAYERS);
    }
}
