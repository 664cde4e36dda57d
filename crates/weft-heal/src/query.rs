//! Reading the loop's incidents back from the store, for `weft incidents
//! list|show`: listings, one incident with its full timeline and the
//! outcome of each action, as text or JSON.

use std::fmt::Write as _;

use serde::Serialize;
use weft_store::{IncidentFilter, IncidentId, IncidentStatus, IncidentSummary, PageRequest, Store};

use crate::incident::Incident;

/// Most incidents one listing returns.
pub const MAX_LIST: u32 = 1000;

/// Why incidents could not be read.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The store failed or has no such incident.
    #[error("{0}")]
    Store(#[from] weft_store::StoreError),
    /// The stored document could not be read.
    #[error("{0}")]
    Document(String),
    /// A bad argument.
    #[error("{0}")]
    Invalid(String),
}

/// One line of a listing.
#[derive(Debug, Clone, Serialize)]
pub struct ListedIncident {
    /// Its id.
    pub id: String,
    /// Its kind.
    pub kind: String,
    /// `open`, `escalated` or `resolved`.
    pub status: String,
    /// Its severity.
    pub severity: String,
    /// What it is about.
    pub target: String,
    /// When it was detected (RFC 3339).
    pub opened_at: String,
    /// When it was resolved (RFC 3339).
    pub resolved_at: Option<String>,
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

impl From<IncidentSummary> for ListedIncident {
    fn from(s: IncidentSummary) -> Self {
        Self {
            id: s.id.to_string(),
            kind: s.kind,
            status: s.status.as_str().to_owned(),
            severity: s.severity,
            target: s.target,
            opened_at: rfc3339(s.opened_at),
            resolved_at: s.resolved_at.map(rfc3339),
        }
    }
}

/// Parses a status filter: `open`, `escalated`, `resolved`, or
/// `unresolved` (open or escalated).
pub fn filter(status: Option<&str>, kind: Option<&str>) -> Result<IncidentFilter, QueryError> {
    let mut f = IncidentFilter {
        kind: kind.map(str::to_owned),
        ..IncidentFilter::default()
    };
    match status {
        None => {}
        Some("unresolved") => f.unresolved = true,
        Some(s) => {
            f.status = Some(s.parse::<IncidentStatus>().map_err(|_| {
                QueryError::Invalid(format!(
                    "status {s:?} is unknown; use open, escalated, resolved or unresolved"
                ))
            })?);
        }
    }
    Ok(f)
}

/// The newest `limit` incidents matching `filter` (most recently opened
/// first).
pub async fn list<S: Store>(
    store: &S,
    filter: IncidentFilter,
    limit: u32,
) -> Result<Vec<ListedIncident>, QueryError> {
    if limit == 0 || limit > MAX_LIST {
        return Err(QueryError::Invalid(format!(
            "limit {limit} is outside 1..={MAX_LIST}"
        )));
    }
    let mut out = Vec::new();
    let mut page = PageRequest::first(limit.min(200));
    loop {
        let p = store.list_incidents(filter.clone(), page.clone()).await?;
        out.extend(p.items.into_iter().map(ListedIncident::from));
        match p.next {
            Some(next) if (out.len() as u32) < limit => page.after = Some(next),
            _ => break,
        }
    }
    out.truncate(limit as usize);
    Ok(out)
}

/// One incident with its document (elements, evidence, timeline, actions).
pub async fn show<S: Store>(store: &S, id: &str) -> Result<Incident, QueryError> {
    let id: IncidentId = id.parse().map_err(|_| {
        QueryError::Invalid(format!(
            "{id:?} is not an incident id (a UUID, as `weft incidents list` prints)"
        ))
    })?;
    let record = store.get_incident(id).await?;
    Incident::from_record(&record).map_err(QueryError::Document)
}

/// A listing as a table.
pub fn render_list(items: &[ListedIncident]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<36}  {:<20}  {:<9}  {:<8}  {:<25}  TARGET",
        "ID", "KIND", "STATUS", "SEVERITY", "OPENED"
    );
    for i in items {
        let _ = writeln!(
            s,
            "{:<36}  {:<20}  {:<9}  {:<8}  {:<25}  {}",
            i.id, i.kind, i.status, i.severity, i.opened_at, i.target
        );
    }
    if items.is_empty() {
        s.push_str("(no incidents)\n");
    }
    s
}

fn at(t: crate::time::Time) -> String {
    rfc3339(t.to_datetime())
}

/// One incident as text: its header, timeline, actions and evidence.
pub fn render_show(i: &Incident) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "incident   {}", i.id);
    let _ = writeln!(
        s,
        "kind       {} ({}, confidence {:.2})",
        i.kind, i.severity, i.confidence
    );
    let _ = writeln!(s, "target     {}", i.target);
    let _ = writeln!(s, "status     {} ({:?})", i.status.as_str(), i.phase);
    let _ = writeln!(
        s,
        "detected   {} ({} ms after the first symptom)",
        at(i.detected_at),
        i.mttd_ms()
    );
    if let (Some(r), Some(mttr)) = (i.resolved_at, i.mttr_ms()) {
        let _ = writeln!(
            s,
            "resolved   {} ({mttr} ms after the first symptom)",
            at(r)
        );
    }
    if let Some(r) = &i.resolution {
        let _ = writeln!(s, "resolution {r}");
    }
    let _ = writeln!(s, "\ntimeline");
    for e in &i.timeline {
        let action = e.action.map(|a| format!(" {a}")).unwrap_or_default();
        let _ = writeln!(
            s,
            "  {}  {:<13}{action}  {}",
            at(e.at),
            e.step.as_str(),
            e.detail
        );
    }
    if i.timeline_dropped > 0 {
        let _ = writeln!(s, "  ({} entries dropped)", i.timeline_dropped);
    }
    if !i.actions.is_empty() {
        let _ = writeln!(s, "\nactions");
        for a in &i.actions {
            let lv = |x: Option<f64>| x.map_or_else(|| "-".into(), |v| format!("{v:.2}"));
            let _ = writeln!(
                s,
                "  #{} {} on {} ({}): {:?}, level {} -> {}{}  {}",
                a.seq,
                a.action,
                a.target,
                a.policy,
                a.status,
                lv(a.level_before),
                lv(a.level_after),
                if a.rolled_back { ", rolled back" } else { "" },
                a.detail
            );
        }
    }
    if !i.evidence.is_empty() {
        let _ = writeln!(s, "\nevidence");
        for e in &i.evidence {
            let _ = writeln!(
                s,
                "  {}  {} {} {}: value {:.2}, score {:.2}, limit {:.2}",
                at(e.at),
                e.subject,
                e.metric,
                e.detector,
                e.value,
                e.score,
                e.limit
            );
        }
    }
    s
}

/// Opens the store that `weft control up` uses: `db` (`sqlite://PATH`, relative to `data_dir`, or
/// `postgres://…`) or `weft.db` in `data_dir`. A SQLite file that does
/// not exist is an error, not a new empty store.
pub async fn open_store(
    db: Option<&str>,
    data_dir: &std::path::Path,
) -> Result<weft_store::AnyStore, QueryError> {
    let location = match db {
        Some(db) => weft_store::Location::parse(db, data_dir)?,
        None => weft_store::Location::default_in(data_dir),
    };
    if let weft_store::Location::Sqlite(path) = &location
        && !path.exists()
    {
        return Err(QueryError::Invalid(format!(
            "no store at {}: pass the --data-dir of a control plane or --db sqlite://PATH|postgres://…",
            path.display()
        )));
    }
    Ok(weft_store::AnyStore::open(&location, weft_store::StoreConfig::default()).await?)
}
