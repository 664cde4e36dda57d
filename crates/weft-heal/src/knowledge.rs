//! Knowledge: incidents with their timelines and the outcome of every
//! action, which the planner ranks candidate actions by.
//!
//! The core is sans-IO, so [`Knowledge`] is synchronous: the engine calls
//! [`Knowledge::record`] at every change of an incident and asks
//! [`Knowledge::outcomes`] when it ranks candidates. Two implementations:
//!
//! - [`MemoryKnowledge`]: everything in memory (tests, the simulator, the
//!   bench), keeping the newest `max_resolved` resolved incidents;
//! - [`StoreKnowledge`]: the same in memory plus a write-behind queue to a
//!   [`weft_store::Store`]: [`StoreKnowledge::open`] loads the open
//!   incidents and the outcome counts, and the driver calls
//!   [`StoreKnowledge::flush`] after each step to persist what changed.
//!   Incidents therefore survive a restart.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use rustc_hash::FxHashMap;
use weft_store::{IncidentFilter, IncidentId, NetworkId, PageRequest, Store, StoreError};

use crate::incident::Incident;
use crate::model::{ActionKind, IncidentKind};

/// How an action went for one incident kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Outcomes {
    /// Verified to help.
    pub succeeded: u64,
    /// Failed or did not help.
    pub failed: u64,
}

impl Outcomes {
    /// The success rate with Laplace smoothing, `(s + 1) / (s + f + 2)`:
    /// 0.5 with no history.
    pub fn score(self) -> f64 {
        (self.succeeded as f64 + 1.0) / ((self.succeeded + self.failed) as f64 + 2.0)
    }
}

/// What the loop knows from the past.
pub trait Knowledge {
    /// Records an incident's current state (called at every change).
    fn record(&mut self, incident: &Incident);

    /// How `action` went for incidents of `kind`.
    fn outcomes(&self, kind: IncidentKind, action: ActionKind) -> Outcomes;

    /// The open and escalated incidents, for the engine to take up again
    /// after a restart.
    fn open_incidents(&self) -> Vec<Incident>;

    /// An incident by id, if still known.
    fn incident(&self, id: IncidentId) -> Option<Incident>;
}

/// Knowledge in memory.
#[derive(Debug)]
pub struct MemoryKnowledge {
    open: BTreeMap<IncidentId, Incident>,
    resolved: BTreeMap<IncidentId, Incident>,
    resolved_order: VecDeque<IncidentId>,
    max_resolved: usize,
    counts: FxHashMap<(IncidentKind, ActionKind), Outcomes>,
    /// Per incident, which action `seq`s are counted already (bit `seq`).
    counted: FxHashMap<IncidentId, u64>,
}

impl Default for MemoryKnowledge {
    fn default() -> Self {
        Self::new(10_000)
    }
}

impl MemoryKnowledge {
    /// Keeps at most `max_resolved` resolved incidents (the newest).
    pub fn new(max_resolved: usize) -> Self {
        Self {
            open: BTreeMap::new(),
            resolved: BTreeMap::new(),
            resolved_order: VecDeque::new(),
            max_resolved: max_resolved.max(1),
            counts: FxHashMap::default(),
            counted: FxHashMap::default(),
        }
    }

    /// Adds outcome counts learnt elsewhere (the store's statistics).
    pub fn add_outcomes(&mut self, kind: IncidentKind, action: ActionKind, o: Outcomes) {
        let c = self.counts.entry((kind, action)).or_default();
        c.succeeded += o.succeeded;
        c.failed += o.failed;
    }

    /// Takes an incident in without counting its finished actions (they
    /// are in the counts already).
    pub fn adopt(&mut self, incident: Incident) {
        let mut bits = 0u64;
        for a in &incident.actions {
            if a.status.is_final() && a.seq < 64 {
                bits |= 1 << a.seq;
            }
        }
        self.counted.insert(incident.id, bits);
        self.insert(incident);
    }

    fn insert(&mut self, incident: Incident) {
        let id = incident.id;
        if incident.is_open() {
            self.resolved.remove(&id);
            self.open.insert(id, incident);
        } else {
            self.open.remove(&id);
            if self.resolved.insert(id, incident).is_none() {
                self.resolved_order.push_back(id);
            }
            while self.resolved.len() > self.max_resolved {
                let Some(old) = self.resolved_order.pop_front() else {
                    break;
                };
                self.resolved.remove(&old);
                self.counted.remove(&old);
            }
        }
    }

    /// Every incident known, open ones first.
    pub fn incidents(&self) -> impl Iterator<Item = &Incident> {
        self.open.values().chain(self.resolved.values())
    }
}

impl Knowledge for MemoryKnowledge {
    fn record(&mut self, incident: &Incident) {
        let bits = self.counted.entry(incident.id).or_default();
        for a in &incident.actions {
            if a.seq >= 64 || *bits & (1 << a.seq) != 0 || !a.status.is_final() {
                continue;
            }
            *bits |= 1 << a.seq;
            let c = self.counts.entry((incident.kind, a.action)).or_default();
            if a.status == crate::incident::ActionStatus::Verified {
                c.succeeded += 1;
            } else {
                c.failed += 1;
            }
        }
        self.insert(incident.clone());
    }

    fn outcomes(&self, kind: IncidentKind, action: ActionKind) -> Outcomes {
        self.counts
            .get(&(kind, action))
            .copied()
            .unwrap_or_default()
    }

    fn open_incidents(&self) -> Vec<Incident> {
        self.open.values().cloned().collect()
    }

    fn incident(&self, id: IncidentId) -> Option<Incident> {
        self.open
            .get(&id)
            .or_else(|| self.resolved.get(&id))
            .cloned()
    }
}

/// Why persistent knowledge failed.
#[derive(Debug, thiserror::Error)]
pub enum KnowledgeError {
    /// The store failed.
    #[error("incident store: {0}")]
    Store(#[from] StoreError),
    /// A stored incident cannot be read back.
    #[error("{0}")]
    Unreadable(String),
    /// An incident cannot be encoded.
    #[error("cannot encode incident {id}: {reason}")]
    Encode {
        /// The incident.
        id: IncidentId,
        /// Why.
        reason: String,
    },
}

/// Most open incidents loaded at start.
pub const MAX_LOADED_INCIDENTS: usize = 100_000;

/// Knowledge kept in memory and written behind to a [`Store`].
#[derive(Debug)]
pub struct StoreKnowledge<S> {
    store: S,
    network_id: Option<NetworkId>,
    memory: MemoryKnowledge,
    dirty: BTreeSet<IncidentId>,
}

impl<S: Store> StoreKnowledge<S> {
    /// Loads the open and escalated incidents and the action outcome
    /// counts from `store`. Incidents are stored under `network_id`.
    pub async fn open(store: S, network_id: Option<NetworkId>) -> Result<Self, KnowledgeError> {
        let mut memory = MemoryKnowledge::default();
        for s in store.action_stats(None).await? {
            let (Ok(kind), Ok(action)) = (
                s.incident_kind.parse::<IncidentKind>(),
                s.action.parse::<ActionKind>(),
            ) else {
                // Written by a newer weft: not ours to rank by.
                continue;
            };
            memory.add_outcomes(
                kind,
                action,
                Outcomes {
                    succeeded: s.succeeded,
                    failed: s.failed,
                },
            );
        }
        let filter = IncidentFilter {
            unresolved: true,
            network_id,
            ..IncidentFilter::default()
        };
        let mut page = PageRequest::first(weft_store::limits::MAX_PAGE_SIZE);
        let mut loaded = 0usize;
        loop {
            let listing = store.list_incidents(filter.clone(), page).await?;
            for summary in &listing.items {
                let record = store.get_incident(summary.id).await?;
                let incident =
                    Incident::from_record(&record).map_err(KnowledgeError::Unreadable)?;
                memory.adopt(incident);
                loaded += 1;
            }
            match listing.next {
                Some(cursor) if loaded < MAX_LOADED_INCIDENTS => {
                    page = PageRequest::after(cursor, weft_store::limits::MAX_PAGE_SIZE);
                }
                _ => break,
            }
        }
        Ok(Self {
            store,
            network_id,
            memory,
            dirty: BTreeSet::new(),
        })
    }

    /// Writes every incident changed since the last flush; returns how
    /// many. If the database fails, the unwritten ones stay queued for
    /// the next flush. An incident the store refuses (it cannot encode or
    /// is over a limit) would be refused again: it is dropped from the
    /// queue, the others are still written, and the first refusal is the
    /// error.
    pub async fn flush(&mut self) -> Result<usize, KnowledgeError> {
        let mut written = 0;
        let mut refused = None;
        while let Some(&id) = self.dirty.iter().next() {
            if let Some(incident) = self.memory.incident(id) {
                let stored = match incident.to_record(self.network_id) {
                    Ok(record) => self.store.put_incident(record).await.map_err(Into::into),
                    Err(e) => Err(KnowledgeError::Encode {
                        id,
                        reason: e.to_string(),
                    }),
                };
                match stored {
                    Ok(_) => written += 1,
                    Err(KnowledgeError::Store(e @ StoreError::Database { .. })) => {
                        return Err(KnowledgeError::Store(e));
                    }
                    Err(e) => {
                        refused.get_or_insert(e);
                    }
                }
            }
            self.dirty.remove(&id);
        }
        match refused {
            Some(e) => Err(e),
            None => Ok(written),
        }
    }

    /// Incidents changed and not yet written.
    pub fn pending(&self) -> usize {
        self.dirty.len()
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The in-memory part.
    pub fn memory(&self) -> &MemoryKnowledge {
        &self.memory
    }
}

impl<S: Store> Knowledge for StoreKnowledge<S> {
    fn record(&mut self, incident: &Incident) {
        self.memory.record(incident);
        self.dirty.insert(incident.id);
    }

    fn outcomes(&self, kind: IncidentKind, action: ActionKind) -> Outcomes {
        self.memory.outcomes(kind, action)
    }

    fn open_incidents(&self) -> Vec<Incident> {
        self.memory.open_incidents()
    }

    fn incident(&self, id: IncidentId) -> Option<Incident> {
        self.memory.incident(id)
    }
}
