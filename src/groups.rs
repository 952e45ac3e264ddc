//! [`Groups`]: who is connected, and who is in which group (a chat room).
//!
//! Membership lives here and nowhere else. The server owns it, because the
//! server is the one that must act on it: it queues a group's broadcast on
//! each member's slot, and it must take a connection out of its group the
//! moment it leaves, whatever the handler does. The handler decides who
//! joins which group ([`crate::Outbox::join`]) and reads the groups (how
//! many, who) through its [`Outbox`](crate::Outbox); it never sees a slot.
//!
//! A group is the list of its members' slots in the server's table, so a
//! line in a room of 10 costs 10 queue pushes, not a walk over every
//! connection. Every idle connection pays for this, so it is kept small: a
//! slot is a `u32` in its group's list, and an open connection's entry
//! (its slot and group) is 8 bytes, as the bare slot was before groups.
//! Leaving finds the slot in its group's list by a scan (a few microseconds
//! in a room of 10,000) and `swap_remove`s it, so the order of members
//! means nothing. A group with no members is forgotten at once.

use std::collections::HashMap;
use std::sync::Arc;

use crate::handler::ConnId;

/// A group's handle: its index among the groups with members. Valid while
/// the group has members; a group that empties is removed and its index
/// reused, so handlers keep names, not handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GroupId(u32);

/// No group (in a [`Seat`]).
const NO_GROUP: u32 = u32::MAX;

/// A group: its name and its members' slots, in no particular order.
#[derive(Debug)]
pub struct Group {
    name: Arc<str>,
    slots: Vec<u32>,
}

impl Group {
    /// The group's name.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// Its members' slots in the server's table (the mio tokens).
    pub(crate) fn slots(&self) -> &[u32] {
        &self.slots
    }

    /// How many members it has (at least one: an empty group is removed).
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Always false: a group that empties is removed.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

/// Where an open connection is: its slot, and its group ([`NO_GROUP`] if
/// none). u32s: four billion slots or groups is past any server.
#[derive(Debug, Clone, Copy)]
struct Seat {
    slot: u32,
    group: u32,
}

/// Every open connection and every group with members.
#[derive(Debug, Default)]
pub struct Groups {
    /// Open connections (from the handler's `open` until its `on_close`).
    open: HashMap<ConnId, Seat>,
    /// The open connection in each slot (`ConnId(0)`: none), for the ids
    /// of a group's members.
    by_slot: Vec<ConnId>,
    /// Groups by handle; `None` marks a free index.
    groups: Vec<Option<Group>>,
    /// Free indexes in `groups`, reused first.
    free: Vec<u32>,
    /// Groups by name.
    by_name: HashMap<Arc<str>, GroupId>,
}

impl Groups {
    /// No connection, no group.
    pub fn new() -> Self {
        Groups::default()
    }

    /// A connection opened, in `slot`: it can be addressed, and can join a
    /// group. (Called by the server only.)
    pub(crate) fn open(&mut self, id: ConnId, slot: usize) {
        let Ok(slot32) = u32::try_from(slot) else {
            return; // the server's table never grows this far
        };
        if self.by_slot.len() <= slot {
            self.by_slot.resize(slot + 1, ConnId(0));
        }
        self.by_slot[slot] = id;
        let seat = Seat {
            slot: slot32,
            group: NO_GROUP,
        };
        self.open.insert(id, seat);
    }

    /// A connection left: out of its group, and no longer addressable.
    /// (Called by the server only, after the handler's `on_close`.)
    pub(crate) fn close(&mut self, id: ConnId) {
        self.leave(id);
        if let Some(seat) = self.open.remove(&id)
            && let Some(slot) = self.by_slot.get_mut(seat.slot as usize)
        {
            *slot = ConnId(0);
        }
    }

    /// The slot of an open connection.
    pub(crate) fn slot(&self, id: ConnId) -> Option<usize> {
        self.open.get(&id).map(|seat| seat.slot as usize)
    }

    /// Whether `id` is open.
    pub fn is_open(&self, id: ConnId) -> bool {
        self.open.contains_key(&id)
    }

    /// How many connections are open.
    pub fn open_count(&self) -> usize {
        self.open.len()
    }

    /// Puts `id` in the group `name` (created if it has no members yet),
    /// leaving the group it was in. Returns the group, or `None` if `id` is
    /// not open.
    pub fn join(&mut self, id: ConnId, name: &str) -> Option<GroupId> {
        self.open.get(&id)?;
        self.leave(id);
        let group = match self.by_name.get(name) {
            Some(&group) => group,
            None => self.create(name),
        };
        let seat = self.open.get_mut(&id)?;
        self.groups
            .get_mut(group.0 as usize)?
            .as_mut()?
            .slots
            .push(seat.slot);
        seat.group = group.0;
        Some(group)
    }

    /// Takes `id` out of its group, if it is in one; a group left empty is
    /// removed.
    pub fn leave(&mut self, id: ConnId) {
        let Some(seat) = self.open.get_mut(&id) else {
            return;
        };
        let group = std::mem::replace(&mut seat.group, NO_GROUP);
        let slot = seat.slot;
        let Some(entry) = self.groups.get_mut(group as usize) else {
            return;
        };
        let Some(g) = entry.as_mut() else {
            return;
        };
        if let Some(at) = g.slots.iter().position(|&s| s == slot) {
            g.slots.swap_remove(at);
        }
        if g.slots.is_empty() {
            self.by_name.remove(&g.name);
            *entry = None;
            self.free.push(group);
        }
    }

    fn create(&mut self, name: &str) -> GroupId {
        let group = Group {
            name: name.into(),
            slots: Vec::new(),
        };
        let name = Arc::clone(&group.name);
        let id = match self.free.pop() {
            Some(index) => {
                self.groups[index as usize] = Some(group);
                GroupId(index)
            }
            None => {
                let index = u32::try_from(self.groups.len()).unwrap_or(NO_GROUP);
                self.groups.push(Some(group));
                GroupId(index)
            }
        };
        self.by_name.insert(name, id);
        id
    }

    /// The members of `group`, in no particular order.
    pub fn members(&self, group: GroupId) -> impl Iterator<Item = ConnId> + '_ {
        self.get(group)
            .map(|g| g.slots.as_slice())
            .unwrap_or_default()
            .iter()
            .filter_map(|&slot| self.by_slot.get(slot as usize).copied())
    }

    /// The group `id` is in.
    pub fn group_of(&self, id: ConnId) -> Option<&Group> {
        self.get(self.group_id_of(id)?)
    }

    /// The handle of `id`'s group.
    pub fn group_id_of(&self, id: ConnId) -> Option<GroupId> {
        let group = self.open.get(&id)?.group;
        (group != NO_GROUP).then_some(GroupId(group))
    }

    /// A group by handle.
    pub fn get(&self, group: GroupId) -> Option<&Group> {
        self.groups.get(group.0 as usize)?.as_ref()
    }

    /// The handle of the group `name`, if it has members.
    pub fn id_of(&self, name: &str) -> Option<GroupId> {
        self.by_name.get(name).copied()
    }

    /// A group by name, if it has members.
    pub fn named(&self, name: &str) -> Option<&Group> {
        self.get(*self.by_name.get(name)?)
    }

    /// How many members the group `name` has (0 if none).
    pub fn count(&self, name: &str) -> usize {
        self.named(name).map_or(0, Group::len)
    }

    /// How many groups have members.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Whether no group has members.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(groups: &Groups, group: Option<GroupId>) -> Vec<u64> {
        let mut ids: Vec<u64> = group
            .map(|g| groups.members(g).map(|id| id.0).collect())
            .unwrap_or_default();
        ids.sort_unstable();
        ids
    }

    #[test]
    fn members_join_leave_and_empty_groups_go() {
        let mut groups = Groups::new();
        for id in 1..=4 {
            groups.open(ConnId(id), id as usize * 10);
        }
        assert_eq!(groups.join(ConnId(9), "a"), None, "not open");
        let a = groups.join(ConnId(1), "a").unwrap();
        groups.join(ConnId(2), "a");
        groups.join(ConnId(3), "a");
        groups.join(ConnId(4), "b");
        assert_eq!(ids(&groups, groups.id_of("a")), [1, 2, 3]);
        assert_eq!(groups.get(a).unwrap().slots().len(), 3);
        assert_eq!(groups.len(), 2);
        assert_eq!(groups.slot(ConnId(3)), Some(30));

        // The first leaves: the last takes its place, and can still leave.
        groups.close(ConnId(1));
        assert_eq!(ids(&groups, Some(a)), [2, 3]);
        assert!(!groups.is_open(ConnId(1)));
        groups.leave(ConnId(3));
        assert_eq!(ids(&groups, Some(a)), [2]);
        assert_eq!(groups.group_of(ConnId(3)).map(|g| &**g.name()), None);

        // Moving to another group leaves the first; an empty group goes.
        groups.join(ConnId(2), "b");
        assert!(groups.named("a").is_none());
        assert_eq!(groups.count("b"), 2);
        assert_eq!(groups.len(), 1);
        // Its index is reused by the next new group.
        assert_eq!(groups.join(ConnId(3), "c"), Some(a));
        assert_eq!(&**groups.group_of(ConnId(3)).unwrap().name(), "c");
        assert_eq!(groups.open_count(), 3);
        // A slot reused by a newer connection names the newer one.
        groups.close(ConnId(3));
        groups.open(ConnId(5), 30);
        groups.join(ConnId(5), "b");
        assert_eq!(ids(&groups, groups.id_of("b")), [2, 4, 5]);
    }
}
