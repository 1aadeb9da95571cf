//! The list a connection's frames wait in, in the queue and in the write list: first in,
//! first out, with its first item held inline. At realistic rates a connection is woken for
//! one frame at a time; this way that frame moves from the hub to the socket without an
//! allocation (a plain `VecDeque` would allocate for it on the way in and free it on the way
//! out, once per delivery).

use std::collections::VecDeque;

/// Empty, one item inline, or a ring of them: no bigger than the ring alone would be (the
/// item's spare tag values mark the other two cases), so an idle connection pays nothing for it.
#[derive(Default)]
pub(crate) enum Fifo<T> {
    #[default]
    Empty,
    One(T),
    Many(VecDeque<T>),
}

impl<T> Fifo<T> {
    pub(crate) fn new() -> Self {
        Fifo::Empty
    }

    pub(crate) fn is_empty(&self) -> bool {
        match self {
            Fifo::Empty => true,
            Fifo::One(_) => false,
            Fifo::Many(items) => items.is_empty(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        match self {
            Fifo::Empty => 0,
            Fifo::One(_) => 1,
            Fifo::Many(items) => items.len(),
        }
    }

    pub(crate) fn push_back(&mut self, item: T) {
        match self {
            Fifo::Many(items) => items.push_back(item),
            Fifo::Empty => *self = Fifo::One(item),
            Fifo::One(_) => {
                if let Fifo::One(first) = std::mem::take(self) {
                    *self = Fifo::Many(ring([first, item]));
                }
            }
        }
    }

    pub(crate) fn push_front(&mut self, item: T) {
        match self {
            Fifo::Many(items) => items.push_front(item),
            Fifo::Empty => *self = Fifo::One(item),
            Fifo::One(_) => {
                if let Fifo::One(second) = std::mem::take(self) {
                    *self = Fifo::Many(ring([item, second]));
                }
            }
        }
    }

    pub(crate) fn pop_front(&mut self) -> Option<T> {
        match self {
            Fifo::Empty => None,
            Fifo::One(_) => match std::mem::take(self) {
                Fifo::One(item) => Some(item),
                _ => None,
            },
            Fifo::Many(items) => {
                let item = items.pop_front();
                if items.is_empty() {
                    // Give the ring's memory back.
                    *self = Fifo::Empty;
                }
                item
            }
        }
    }

    pub(crate) fn front(&self) -> Option<&T> {
        match self {
            Fifo::Empty => None,
            Fifo::One(item) => Some(item),
            Fifo::Many(items) => items.front(),
        }
    }

    pub(crate) fn front_mut(&mut self) -> Option<&mut T> {
        match self {
            Fifo::Empty => None,
            Fifo::One(item) => Some(item),
            Fifo::Many(items) => items.front_mut(),
        }
    }

    /// Drops the first `n` items (all of them when there are fewer).
    pub(crate) fn drop_front(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        if n >= self.len() {
            *self = Fifo::Empty;
            return;
        }
        if let Fifo::Many(items) = self {
            items.drain(..n);
        }
    }

    pub(crate) fn clear(&mut self) {
        *self = Fifo::Empty;
    }

    pub(crate) fn iter(
        &self,
    ) -> std::iter::Chain<std::slice::Iter<'_, T>, std::slice::Iter<'_, T>> {
        let (a, b): (&[T], &[T]) = match self {
            Fifo::Empty => (&[], &[]),
            Fifo::One(item) => (std::slice::from_ref(item), &[]),
            Fifo::Many(items) => items.as_slices(),
        };
        a.iter().chain(b.iter())
    }
}

/// A ring holding `first` with room to grow: a list that got a second item under load
/// usually gets more, and growing 2 -> 4 -> 8 would reallocate each time.
fn ring<T>(first: [T; 2]) -> VecDeque<T> {
    let mut ring = VecDeque::with_capacity(8);
    ring.extend(first);
    ring
}

impl<T> IntoIterator for Fifo<T> {
    type Item = T;
    type IntoIter =
        std::iter::Chain<std::option::IntoIter<T>, std::collections::vec_deque::IntoIter<T>>;

    fn into_iter(self) -> Self::IntoIter {
        match self {
            Fifo::Empty => None.into_iter().chain(VecDeque::new()),
            Fifo::One(item) => Some(item).into_iter().chain(VecDeque::new()),
            Fifo::Many(items) => None.into_iter().chain(items),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(fifo: &Fifo<u32>) -> Vec<u32> {
        fifo.iter().copied().collect()
    }

    #[test]
    fn keeps_order_through_every_operation() {
        let mut fifo = Fifo::new();
        assert!(fifo.is_empty());
        assert_eq!(fifo.pop_front(), None);
        for i in 1..=5 {
            fifo.push_back(i);
        }
        assert_eq!(fifo.len(), 5);
        assert_eq!(fifo.pop_front(), Some(1));
        fifo.push_front(0);
        assert_eq!(items(&fifo), [0, 2, 3, 4, 5]);
        fifo.drop_front(2);
        assert_eq!(items(&fifo), [3, 4, 5]);
        *fifo.front_mut().unwrap() = 30;
        assert_eq!(fifo.front(), Some(&30));
        fifo.push_back(6);
        assert_eq!(fifo.into_iter().collect::<Vec<_>>(), [30, 4, 5, 6]);
    }

    #[test]
    fn one_item_needs_no_allocation_and_dropping_all_empties() {
        let mut fifo = Fifo::new();
        fifo.push_back(7);
        assert!(matches!(fifo, Fifo::One(7)), "the first item is inline");
        assert_eq!(fifo.pop_front(), Some(7));
        assert!(fifo.is_empty());
        fifo.push_front(1);
        fifo.push_back(2);
        fifo.drop_front(9);
        assert!(matches!(fifo, Fifo::Empty), "memory given back");
        fifo.push_back(3);
        fifo.drop_front(0);
        assert_eq!(items(&fifo), [3]);
        fifo.clear();
        assert_eq!(fifo.len(), 0);
        fifo.push_back(1);
        fifo.push_back(2);
        assert_eq!(fifo.pop_front(), Some(1));
        assert_eq!(fifo.pop_front(), Some(2));
        assert!(
            matches!(fifo, Fifo::Empty),
            "a ring emptied by popping is let go"
        );
    }

    #[test]
    fn no_bigger_than_a_ring_of_queue_items() {
        use crate::door::NoControl;
        use crate::door::outbox::Item;
        let ring = std::mem::size_of::<VecDeque<Item<NoControl>>>();
        let fifo = std::mem::size_of::<Fifo<Item<NoControl>>>();
        assert!(fifo <= ring + 8, "{fifo} bytes against {ring}");
    }
}
