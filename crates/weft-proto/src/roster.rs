//! The roster: the enrolled nodes (from the control plane) with their
//! public keys, each under a dense local index.
//!
//! Every per-destination table of a node (routes, feasibility distances,
//! held announcements) is an array indexed by [`NodeIndex`] rather than a
//! map keyed by 32-byte node ids. At 10 000 nodes a node keeps state for
//! 10 000 destinations; as arrays that is tens of bytes per destination,
//! as hash maps it was several times more, and every lookup a cache miss
//! on a hashed key. Indices are local to one process and never travel on
//! the wire: messages name nodes by [`NodeId`].
//!
//! A roster only grows: enrolling appends, so an index, once handed out,
//! names the same node for the roster's whole life (revoked nodes keep
//! theirs; revocation is a separate list). A driver that learns of new
//! enrollments builds an extended roster with [`Roster::extended`] and
//! hands it to its node.

use weft_crypto::NodeId;
use weft_crypto::sign::CompositePublicKey;

use crate::DetMap;

/// A node's dense index in a [`Roster`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeIndex(pub u32);

impl NodeIndex {
    /// The index as a `usize`, for indexing arrays.
    pub fn get(self) -> usize {
        self.0 as usize
    }
}

/// Why a node could not be enrolled in a roster.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RosterError {
    /// The node is enrolled already.
    #[error("node {0} is already enrolled in the roster")]
    Duplicate(NodeId),
    /// The roster holds [`Roster::MAX_NODES`] nodes.
    #[error(
        "the roster is full ({} nodes); a mesh this large needs several networks",
        Roster::MAX_NODES
    )]
    Full,
}

/// The enrolled nodes and their public keys, under dense indices.
#[derive(Clone, Default)]
pub struct Roster {
    ids: Vec<NodeId>,
    keys: Vec<CompositePublicKey>,
    index: DetMap<NodeId, NodeIndex>,
}

impl Roster {
    /// Most nodes one roster holds: 2^24, far beyond what one mesh of
    /// distance-vector nodes can carry, and small enough that per-node
    /// arrays indexed by [`NodeIndex`] stay addressable.
    pub const MAX_NODES: usize = 1 << 24;

    /// An empty roster.
    pub fn new() -> Self {
        Self::default()
    }

    /// A roster of `keys`, indexed in the order given.
    pub fn of(keys: impl IntoIterator<Item = CompositePublicKey>) -> Result<Self, RosterError> {
        let mut r = Self::new();
        for key in keys {
            r.enroll(key)?;
        }
        Ok(r)
    }

    /// Enrolls the node with public key `key` under the next index.
    pub fn enroll(&mut self, key: CompositePublicKey) -> Result<NodeIndex, RosterError> {
        let id = NodeId::of(&key);
        if self.index.contains_key(&id) {
            return Err(RosterError::Duplicate(id));
        }
        if self.ids.len() >= Self::MAX_NODES {
            return Err(RosterError::Full);
        }
        let i = NodeIndex(self.ids.len() as u32);
        self.ids.push(id);
        self.keys.push(key);
        self.index.insert(id, i);
        Ok(i)
    }

    /// A copy of this roster with `keys` enrolled after the nodes it holds
    /// (their indices unchanged); nodes enrolled already are skipped.
    pub fn extended(
        &self,
        keys: impl IntoIterator<Item = CompositePublicKey>,
    ) -> Result<Self, RosterError> {
        let mut r = self.clone();
        for key in keys {
            match r.enroll(key) {
                Ok(_) | Err(RosterError::Duplicate(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(r)
    }

    /// The index of `node`, if it is enrolled.
    pub fn index(&self, node: &NodeId) -> Option<NodeIndex> {
        self.index.get(node).copied()
    }

    /// The node at index `i`.
    pub fn id(&self, i: NodeIndex) -> Option<NodeId> {
        self.ids.get(i.get()).copied()
    }

    /// The public key of the node at index `i`.
    pub fn key(&self, i: NodeIndex) -> Option<&CompositePublicKey> {
        self.keys.get(i.get())
    }

    /// Whether `node` is enrolled.
    pub fn contains(&self, node: &NodeId) -> bool {
        self.index.contains_key(node)
    }

    /// Number of enrolled nodes.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether no node is enrolled.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Whether `other` holds every node of this roster under the same index.
    pub fn is_prefix_of(&self, other: &Roster) -> bool {
        self.ids.len() <= other.ids.len() && other.ids[..self.ids.len()] == self.ids[..]
    }
}

impl std::fmt::Debug for Roster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Roster")
            .field("nodes", &self.ids.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_crypto::sign::CompositeSigningKey;

    fn key(i: u8) -> CompositePublicKey {
        CompositeSigningKey::from_bytes(&[i; 64])
            .unwrap()
            .public_key()
            .clone()
    }

    #[test]
    fn indices_are_dense_stable_and_unique() {
        let mut r = Roster::of([key(1), key(2)]).unwrap();
        let id2 = NodeId::of(&key(2));
        assert_eq!(r.index(&id2), Some(NodeIndex(1)));
        assert_eq!(r.id(NodeIndex(1)), Some(id2));
        assert_eq!(r.enroll(key(2)), Err(RosterError::Duplicate(id2)));
        let bigger = r.extended([key(2), key(3)]).unwrap();
        assert_eq!(bigger.len(), 3);
        assert!(r.is_prefix_of(&bigger));
        assert!(!bigger.is_prefix_of(&r));
        assert_eq!(bigger.index(&id2), Some(NodeIndex(1)));
        assert_eq!(r.enroll(key(4)), Ok(NodeIndex(2)));
        assert_eq!(r.id(NodeIndex(9)), None);
    }
}
