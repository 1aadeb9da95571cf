//! The delivery rules of one channel on one node, whatever the broker: what arrives is handed
//! to the hub once, in offset order; a gap is filled from history; what history cannot give
//! back is reported as lost. No I/O here: the engine's delivery code asks, then acts.

use std::sync::Arc;

use switchboard_core::engine::Publication;

/// A channel's position: its last offset and its stream's epoch.
pub(crate) type Position = (u64, Arc<str>);

/// What to do with a publication that just arrived.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Arrival {
    /// The next one: hand it over.
    Next,
    /// Already handed over (a repeat, or older than where the subscription started).
    Repeat,
    /// Messages are missing before it: fill from history after this position first.
    Gap(Position),
    /// Another epoch: the stream was reset, what came before cannot be continued.
    Reset,
}

/// What a channel needs after its broker connection came back.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum CatchUp {
    Nothing,
    /// Fill from history after this position.
    Fill(Position),
    Lost,
}

#[derive(Debug, Clone)]
pub(crate) struct ChannelOrder {
    /// The last position handed to the hub (or where the subscription started).
    last: Option<Position>,
    /// Whether `last` can be trusted to spot gaps (false when reading the position failed).
    known: bool,
}

impl ChannelOrder {
    /// Starts at the channel's position read right after subscribing (`None`: no stream yet),
    /// or unknown when that read failed.
    pub(crate) fn starting_at(position: Option<Option<Position>>) -> Self {
        ChannelOrder {
            known: position.is_some(),
            last: position.flatten(),
        }
    }

    pub(crate) fn arrival(&self, publication: &Publication) -> Arrival {
        match &self.last {
            // Offset 0 has seen nothing, so it continues any epoch.
            Some((last, epoch)) if *epoch == publication.epoch || *last == 0 => {
                if publication.offset <= *last {
                    Arrival::Repeat
                } else if publication.offset > last + 1 {
                    Arrival::Gap((*last, publication.epoch.clone()))
                } else {
                    Arrival::Next
                }
            }
            Some(_) => Arrival::Reset,
            // Nothing seen yet: a live subscription misses nothing, and what came before it is
            // the hub's history read.
            None => Arrival::Next,
        }
    }

    /// Records `publication` as handed over; false when it was already (skip it).
    pub(crate) fn accept(&mut self, publication: &Publication) -> bool {
        if let Some((last, epoch)) = &self.last
            && *epoch == publication.epoch
            && publication.offset <= *last
        {
            return false;
        }
        self.last = Some((publication.offset, publication.epoch.clone()));
        self.known = true;
        true
    }

    /// After a loss: later checks start from where the channel stands now.
    pub(crate) fn restart_at(&mut self, now: Option<Option<Position>>) {
        *self = ChannelOrder::starting_at(now);
    }

    /// What to do once the connection is back and the channel stands at `now` (`None`: no
    /// stream; `Err`: could not be read).
    pub(crate) fn catch_up<E>(&self, now: &Result<Option<Position>, E>) -> CatchUp {
        let Ok(now) = now else {
            return CatchUp::Lost;
        };
        if !self.known {
            return CatchUp::Lost;
        }
        match (&self.last, now) {
            // No stream then and none now: nothing was missed.
            (None, None) => CatchUp::Nothing,
            // The stream began while we were away: all of it is new to us.
            (None, Some((_, epoch))) => CatchUp::Fill((0, epoch.clone())),
            // Nothing seen then (offset 0 continues any epoch): all of it is new to us.
            (Some((0, _)), None) => CatchUp::Nothing,
            (Some((0, _)), Some((top, now_epoch))) => {
                if *top > 0 {
                    CatchUp::Fill((0, now_epoch.clone()))
                } else {
                    CatchUp::Nothing
                }
            }
            // The stream is gone: what we had cannot be continued.
            (Some(_), None) => CatchUp::Lost,
            (Some((last, epoch)), Some((top, now_epoch))) => {
                if now_epoch != epoch || top < last {
                    CatchUp::Lost
                } else if top > last {
                    CatchUp::Fill((*last, epoch.clone()))
                } else {
                    CatchUp::Nothing
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publication(offset: u64, epoch: &str) -> Publication {
        Publication {
            offset,
            epoch: epoch.into(),
            data: bytes::Bytes::from_static(b"1"),
        }
    }

    #[test]
    fn arrivals_are_next_repeat_gap_or_reset() {
        let mut order = ChannelOrder::starting_at(Some(Some((3, "e".into()))));
        assert_eq!(order.arrival(&publication(3, "e")), Arrival::Repeat);
        assert_eq!(order.arrival(&publication(4, "e")), Arrival::Next);
        assert_eq!(
            order.arrival(&publication(6, "e")),
            Arrival::Gap((3, "e".into()))
        );
        assert_eq!(order.arrival(&publication(1, "f")), Arrival::Reset);
        assert!(order.accept(&publication(4, "e")));
        assert!(!order.accept(&publication(4, "e")), "a repeat after a fill");
        let fresh = ChannelOrder::starting_at(Some(None));
        assert_eq!(fresh.arrival(&publication(9, "e")), Arrival::Next);
    }

    #[test]
    fn a_broker_delivering_out_of_order_is_handed_over_in_order_once() {
        // What a channel's delivery task does with what the broker gives it: 1 and 2 in
        // order, 4 before 3 (two publishers' messages crossing), then 3 again and 4 again
        // (a catch-up read overlapping the live ones).
        let mut order = ChannelOrder::starting_at(Some(Some((0, "e".into()))));
        let mut handed = Vec::new();
        let history = [publication(3, "e"), publication(4, "e")];
        for offset in [1, 2, 4, 3, 4] {
            let arriving = publication(offset, "e");
            match order.arrival(&arriving) {
                Arrival::Next => {
                    if order.accept(&arriving) {
                        handed.push(offset);
                    }
                }
                Arrival::Gap((after, _)) => {
                    // Filled from history, then the one that revealed the gap.
                    for p in history.iter().filter(|p| p.offset > after) {
                        if order.accept(p) {
                            handed.push(p.offset);
                        }
                    }
                }
                Arrival::Repeat => {}
                Arrival::Reset => panic!("same epoch"),
            }
        }
        assert_eq!(handed, [1, 2, 3, 4]);
    }

    #[test]
    fn after_a_loss_checks_start_again_from_where_the_channel_stands() {
        let mut order = ChannelOrder::starting_at(None);
        assert_eq!(
            order.arrival(&publication(7, "e")),
            Arrival::Next,
            "unknown start"
        );
        order.restart_at(Some(Some((10, "f".into()))));
        assert_eq!(order.arrival(&publication(10, "f")), Arrival::Repeat);
        assert_eq!(order.arrival(&publication(11, "f")), Arrival::Next);
        assert_eq!(order.arrival(&publication(11, "e")), Arrival::Reset);
    }

    #[test]
    fn catching_up_fills_what_history_can_and_reports_the_rest() {
        let at = |offset: u64, epoch: &str| Ok::<_, ()>(Some((offset, Arc::from(epoch))));
        let order = ChannelOrder::starting_at(Some(Some((3, "e".into()))));
        assert_eq!(order.catch_up(&at(3, "e")), CatchUp::Nothing);
        assert_eq!(order.catch_up(&at(5, "e")), CatchUp::Fill((3, "e".into())));
        assert_eq!(order.catch_up(&at(5, "f")), CatchUp::Lost);
        assert_eq!(order.catch_up(&at(2, "e")), CatchUp::Lost);
        assert_eq!(order.catch_up(&Ok::<_, ()>(None)), CatchUp::Lost);
        assert_eq!(order.catch_up(&Err(())), CatchUp::Lost);
        let empty = ChannelOrder::starting_at(Some(None));
        assert_eq!(empty.catch_up(&Ok::<_, ()>(None)), CatchUp::Nothing);
        assert_eq!(empty.catch_up(&at(2, "e")), CatchUp::Fill((0, "e".into())));
        let unknown = ChannelOrder::starting_at(None);
        assert_eq!(unknown.catch_up(&at(3, "e")), CatchUp::Lost);
    }

    #[test]
    fn offset_zero_continues_any_epoch() {
        // A reader of an unpublished channel got offset 0 of an epoch that was never kept;
        // the first publish starts the stream with another one.
        let order = ChannelOrder::starting_at(Some(Some((0, "read".into()))));
        assert_eq!(order.arrival(&publication(1, "e")), Arrival::Next);
        assert_eq!(
            order.arrival(&publication(3, "e")),
            Arrival::Gap((0, "e".into()))
        );
        let at = |offset: u64, epoch: &str| Ok::<_, ()>(Some((offset, Arc::from(epoch))));
        assert_eq!(order.catch_up(&at(2, "e")), CatchUp::Fill((0, "e".into())));
        assert_eq!(order.catch_up(&at(0, "e")), CatchUp::Nothing);
        assert_eq!(order.catch_up(&Ok::<_, ()>(None)), CatchUp::Nothing);
    }
}
