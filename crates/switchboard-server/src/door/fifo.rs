//! The list a connection's frames wait in, in the queue and in the write list: first in,
//! first out, with its first item held inline. At realistic rates a connection is woken for
//! one frame at a time; this way that frame moves from the hub to the socket without an
//! allocation (a plain `VecDeque` would allocate for it on the way in and free it on the way
//! out, once per delivery).

use std::collections::VecDeque;

pub(crate) struct Fifo<T> {
    /// The first item; `None` only when the list is empty.
    head: Option<T>,
    /// The items after it, in order.
    rest: VecDeque<T>,
}

impl<T> Default for Fifo<T> {
    fn default() -> Self {
        Fifo {
            head: None,
            rest: VecDeque::new(),
        }
    }
}

impl<T> Fifo<T> {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.head.is_none()
    }

    pub(crate) fn len(&self) -> usize {
        usize::from(self.head.is_some()) + self.rest.len()
    }

    pub(crate) fn push_back(&mut self, item: T) {
        if self.head.is_none() {
            self.head = Some(item);
        } else {
            self.rest.push_back(item);
        }
    }

    pub(crate) fn push_front(&mut self, item: T) {
        if let Some(old) = self.head.replace(item) {
            self.rest.push_front(old);
        }
    }

    pub(crate) fn pop_front(&mut self) -> Option<T> {
        let first = self.head.take()?;
        self.head = self.rest.pop_front();
        Some(first)
    }

    pub(crate) fn front(&self) -> Option<&T> {
        self.head.as_ref()
    }

    pub(crate) fn front_mut(&mut self) -> Option<&mut T> {
        self.head.as_mut()
    }

    /// Drops the first `n` items (all of them when there are fewer).
    pub(crate) fn drop_front(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        if n >= self.len() {
            *self = Fifo::new();
            return;
        }
        self.rest.drain(..n - 1);
        self.head = self.rest.pop_front();
    }

    pub(crate) fn clear(&mut self) {
        *self = Fifo::new();
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> {
        self.head.iter().chain(self.rest.iter())
    }
}

impl<T> IntoIterator for Fifo<T> {
    type Item = T;
    type IntoIter =
        std::iter::Chain<std::option::IntoIter<T>, std::collections::vec_deque::IntoIter<T>>;

    fn into_iter(self) -> Self::IntoIter {
        self.head.into_iter().chain(self.rest)
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
        assert_eq!(fifo.rest.capacity(), 0, "the first item is inline");
        assert_eq!(fifo.pop_front(), Some(7));
        assert!(fifo.is_empty());
        fifo.push_front(1);
        fifo.push_back(2);
        fifo.drop_front(9);
        assert!(fifo.is_empty());
        assert_eq!(fifo.rest.capacity(), 0, "memory given back");
        fifo.push_back(3);
        fifo.drop_front(0);
        assert_eq!(items(&fifo), [3]);
        fifo.clear();
        assert_eq!(fifo.len(), 0);
    }
}
