//! A room's members on other instances (names shared through Redis), kept
//! in step with the room's member version: every claim or release of a
//! name in the room counts one, and each change is published with its
//! version. Changes come on the room's channel; the whole list is read
//! afresh when the room opens, when its channel is subscribed again, and
//! when a version was skipped (a change missed). A read that is older than
//! changes already heard has those changes applied again on top of it.
//!
//! Plain data: the room keeps it under its lock, disjoint from its own
//! members (a name a member here holds is not listed as elsewhere).

use std::collections::{BTreeMap, VecDeque};

use natter_shared::{Member, UserName, color_for};

use super::names::member_key;
use super::welcome;
use crate::store::{self, MemberChange};

/// Changes kept to apply again over a list read before them.
pub const RECENT_CHANGES_MAX: usize = 256;

/// A member on another instance.
#[derive(Debug, Clone)]
pub struct Remote {
    pub instance: String,
    pub name: UserName,
    /// The room's key for the name ([`member_key`]).
    pub key: String,
    /// The member's JSON, as a welcome lists it.
    pub json: Box<str>,
}

/// What a change did to the list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Nothing (an old change, or one the list already reflects).
    Nothing,
    /// A member is listed now (`key`: the room's key for the name; the
    /// room's own member under it, if any, moved away and is a ghost).
    Joined { key: String, member: Member },
    /// A member is not listed any more.
    Left(Member),
}

/// The room's members on other instances.
#[derive(Debug, Default)]
pub struct Elsewhere {
    /// By lower-cased name ([`UserName::key`]), the member list's order.
    members: BTreeMap<Box<str>, Remote>,
    version: u64,
    recent: VecDeque<MemberChange>,
    /// A version was skipped: the list must be read afresh.
    gap: bool,
}

impl Elsewhere {
    /// How many members are listed.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether nobody is listed.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Whether a change was missed (the list should be read afresh).
    pub fn gap(&self) -> bool {
        self.gap
    }

    /// The list could not be read: it is to be read afresh.
    pub fn missed(&mut self) {
        self.gap = true;
    }

    /// The members by lower-cased name, from after `after`.
    pub fn range_after<'a>(&'a self, after: Option<&str>) -> impl Iterator<Item = (&'a str, &'a Remote)> + 'a {
        use std::ops::Bound;
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        self.members.range::<str, _>((from, Bound::Unbounded)).map(|(k, r)| (&**k, r))
    }

    /// Drops the listing of a name a member of this room's own holds now.
    pub fn forget(&mut self, name: &UserName) {
        self.members.remove(name.key().as_str());
    }

    /// Applies one change heard on the channel; `local(key)` tells whether
    /// the room has a member of its own under that member key.
    pub fn apply(&mut self, change: MemberChange, local: impl Fn(&str) -> bool) -> Applied {
        if change.version <= self.version {
            return Applied::Nothing;
        }
        if change.version > self.version + 1 {
            self.gap = true;
        }
        self.version = change.version;
        if self.recent.len() == RECENT_CHANGES_MAX {
            self.recent.pop_front();
        }
        self.recent.push_back(change.clone());
        if change.own {
            return Applied::Nothing;
        }
        self.change(change, local)
    }

    /// Takes a list read afresh, with the changes heard since it was read
    /// applied again on top.
    pub fn reset(&mut self, read: store::Elsewhere, local: impl Fn(&str) -> bool) {
        self.members.clear();
        for (instance, name) in read.members {
            let key = member_key(&name);
            if !local(&key) {
                self.members.insert(name.key().into(), remote(instance, name, key));
            }
        }
        let newer: Vec<MemberChange> = self.recent.iter().filter(|c| c.version > read.version).cloned().collect();
        // A version between the read and the changes kept was missed if
        // the oldest kept change does not follow the read.
        self.gap = newer.first().is_some_and(|c| c.version > read.version + 1);
        self.version = read.version;
        for change in newer {
            self.version = change.version;
            if !change.own {
                self.change(change, &local);
            }
        }
    }

    fn change(&mut self, change: MemberChange, local: impl Fn(&str) -> bool) -> Applied {
        let order: Box<str> = change.name.key().into();
        let key = member_key(&change.name);
        if change.joined {
            let fresh = remote(change.instance, change.name.clone(), key.clone());
            let before = self.members.insert(order, fresh);
            // Listed already: the member moved between other instances.
            if before.is_some() && !local(&key) {
                return Applied::Nothing;
            }
            return Applied::Joined { key, member: member_of(&change.name) };
        }
        match self.members.get(&order) {
            Some(listed) if listed.instance == change.instance => {
                self.members.remove(&order);
                Applied::Left(member_of(&change.name))
            }
            _ => Applied::Nothing,
        }
    }
}

fn member_of(name: &UserName) -> Member {
    Member { name: name.clone(), color: color_for(name) }
}

fn remote(instance: String, name: UserName, key: String) -> Remote {
    let json = welcome::member_json(&member_of(&name));
    Remote { instance, name, key, json }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> UserName {
        UserName::parse(s).expect("valid")
    }

    fn change(version: u64, instance: &str, joined: bool, who: &str) -> MemberChange {
        MemberChange { version, instance: instance.into(), own: instance == "here", joined, name: name(who) }
    }

    fn listed(e: &Elsewhere) -> Vec<(&str, &str)> {
        e.range_after(None).map(|(_, r)| (r.name.as_str(), r.instance.as_str())).collect()
    }

    const NOBODY: fn(&str) -> bool = |_| false;

    #[test]
    fn changes_apply_in_version_order_and_old_ones_are_ignored() {
        let mut e = Elsewhere::default();
        assert!(matches!(e.apply(change(1, "b", true, "Ada"), NOBODY), Applied::Joined { .. }));
        assert!(matches!(e.apply(change(2, "b", true, "bo"), NOBODY), Applied::Joined { .. }));
        assert_eq!(listed(&e), [("Ada", "b"), ("bo", "b")], "in the page's order");
        assert_eq!(e.apply(change(2, "b", false, "Ada"), NOBODY), Applied::Nothing, "an old version");
        assert!(matches!(e.apply(change(3, "b", false, "Ada"), NOBODY), Applied::Left(_)));
        assert_eq!(listed(&e), [("bo", "b")]);
        assert!(!e.gap());
        // This instance's own changes count for the version only.
        assert_eq!(e.apply(change(4, "here", true, "Cy"), NOBODY), Applied::Nothing);
        assert!(matches!(e.apply(change(5, "b", true, "Dee"), NOBODY), Applied::Joined { .. }));
        assert_eq!(listed(&e), [("bo", "b"), ("Dee", "b")]);
        assert!(!e.gap(), "no version was skipped");
    }

    #[test]
    fn a_leave_from_an_instance_the_member_moved_away_from_is_no_leave() {
        let mut e = Elsewhere::default();
        e.apply(change(1, "b", true, "Ada"), NOBODY);
        assert_eq!(e.apply(change(2, "c", true, "Ada"), NOBODY), Applied::Nothing, "a move is no join");
        assert_eq!(e.apply(change(3, "b", false, "Ada"), NOBODY), Applied::Nothing, "B's ghost goes quietly");
        assert_eq!(listed(&e), [("Ada", "c")]);
    }

    #[test]
    fn a_skipped_version_asks_for_the_list_and_a_read_takes_the_changes_since_it() {
        let mut e = Elsewhere::default();
        e.apply(change(1, "b", true, "Ada"), NOBODY);
        e.apply(change(3, "b", true, "Cy"), NOBODY);
        assert!(e.gap(), "version 2 was missed");
        // A read as of version 2 (Bo joined, which was missed) comes after change 3.
        let read = store::Elsewhere { version: 2, members: vec![("b".into(), name("Ada")), ("c".into(), name("Bo"))] };
        e.reset(read, NOBODY);
        assert_eq!(listed(&e), [("Ada", "b"), ("Bo", "c"), ("Cy", "b")], "the read, and change 3 on top");
        assert!(!e.gap());
        // A read that skips past the kept changes is taken as it is.
        e.reset(store::Elsewhere { version: 9, members: vec![] }, NOBODY);
        assert!(e.is_empty());
        assert!(matches!(e.apply(change(10, "b", true, "Dee"), NOBODY), Applied::Joined { .. }));
    }

    #[test]
    fn a_name_held_here_is_not_listed_as_elsewhere() {
        let mut e = Elsewhere::default();
        let here = |key: &str| key == member_key(&name("Ada"));
        e.reset(store::Elsewhere { version: 1, members: vec![("b".into(), name("Ada"))] }, here);
        assert!(e.is_empty());
        // Another instance taking it over later is news: the one here is a ghost.
        assert!(matches!(e.apply(change(2, "b", true, "Ada"), here), Applied::Joined { .. }));
        assert_eq!(listed(&e), [("Ada", "b")]);
    }
}
