//! A map that is usually small: a vector while it holds at most [`FEW`] entries, a hash map
//! beyond. A channel's subscribers on one node are mostly one or a few; a hash map's
//! smallest table for one of them takes about four times the memory of a one-entry vector,
//! and a vector's linear search over a handful of keys is as fast as hashing.

use std::collections::HashMap;
use std::hash::Hash;

/// Entries up to which the map stays a vector.
pub(crate) const FEW: usize = 16;

pub(crate) enum SmallMap<K, V> {
    Few(Vec<(K, V)>),
    Many(HashMap<K, V>),
}

impl<K, V> Default for SmallMap<K, V> {
    fn default() -> Self {
        SmallMap::Few(Vec::new())
    }
}

impl<K: Eq + Hash + Copy, V> SmallMap<K, V> {
    pub(crate) fn len(&self) -> usize {
        match self {
            SmallMap::Few(v) => v.len(),
            SmallMap::Many(m) => m.len(),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Inserts or replaces the value of `key`.
    pub(crate) fn insert(&mut self, key: K, value: V) {
        match self {
            SmallMap::Few(v) => {
                if let Some(slot) = v.iter_mut().find(|(k, _)| *k == key) {
                    slot.1 = value;
                } else if v.len() < FEW {
                    // The first entry gets room for itself alone (a vector would take four).
                    if v.capacity() == 0 {
                        v.reserve_exact(1);
                    }
                    v.push((key, value));
                } else {
                    let mut map: HashMap<K, V> = v.drain(..).collect();
                    map.insert(key, value);
                    *self = SmallMap::Many(map);
                }
            }
            SmallMap::Many(m) => {
                m.insert(key, value);
            }
        }
    }

    pub(crate) fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        match self {
            SmallMap::Few(v) => v.iter_mut().find(|(k, _)| k == key).map(|(_, value)| value),
            SmallMap::Many(m) => m.get_mut(key),
        }
    }

    pub(crate) fn remove(&mut self, key: &K) -> Option<V> {
        match self {
            SmallMap::Few(v) => {
                let at = v.iter().position(|(k, _)| k == key)?;
                Some(v.swap_remove(at).1)
            }
            SmallMap::Many(m) => m.remove(key),
        }
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &V> {
        let (few, many) = match self {
            SmallMap::Few(v) => (Some(v.iter().map(|(_, value)| value)), None),
            SmallMap::Many(m) => (None, Some(m.values())),
        };
        few.into_iter().flatten().chain(many.into_iter().flatten())
    }

    pub(crate) fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        let (few, many) = match self {
            SmallMap::Few(v) => (Some(v.iter_mut().map(|(_, value)| value)), None),
            SmallMap::Many(m) => (None, Some(m.values_mut())),
        };
        few.into_iter().flatten().chain(many.into_iter().flatten())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acts_as_a_map_below_and_above_the_switch() {
        let mut map = SmallMap::default();
        for key in 0..40u64 {
            map.insert(key, key * 10);
            assert_eq!(map.len(), key as usize + 1);
            assert_eq!(matches!(map, SmallMap::Many(_)), key as usize >= FEW);
        }
        map.insert(3, 333);
        assert_eq!(map.len(), 40, "replacing adds nothing");
        assert_eq!(map.get_mut(&3), Some(&mut 333));
        assert_eq!(map.remove(&3), Some(333));
        assert_eq!(map.remove(&3), None);
        let mut values: Vec<u64> = map.values().copied().collect();
        values.sort_unstable();
        assert_eq!(values.len(), 39);
        assert!(!values.contains(&30) && values.contains(&390));
        for value in map.values_mut() {
            *value += 1;
        }
        assert_eq!(map.get_mut(&39), Some(&mut 391));
    }

    #[test]
    fn a_small_map_finds_replaces_and_removes() {
        let mut map = SmallMap::default();
        assert!(map.is_empty());
        map.insert(1u64, "a");
        map.insert(2, "b");
        map.insert(1, "c");
        assert_eq!(map.len(), 2);
        assert_eq!(map.get_mut(&1), Some(&mut "c"));
        assert_eq!(map.remove(&1), Some("c"));
        assert_eq!(map.values().collect::<Vec<_>>(), [&"b"]);
        assert_eq!(map.remove(&2), Some("b"));
        assert!(map.is_empty());
        if let SmallMap::Few(v) = &map {
            assert!(v.capacity() <= 4);
        }
    }

    #[test]
    fn one_entry_takes_room_for_one() {
        let mut map = SmallMap::default();
        map.insert(7u64, [0u8; 40]);
        let SmallMap::Few(v) = &map else {
            panic!("one entry stays a vector")
        };
        assert_eq!(v.capacity(), 1);
    }
}
