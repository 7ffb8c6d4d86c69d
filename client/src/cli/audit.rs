//! The audit log: `audit`, read page by page, newest first, as a table, CSV or JSON.

use tally_protocol::{AuditPageQuery, AuditQuery};

use super::failure::{exit, Failure};
use super::output::Output;
use super::values;
use crate::Client;

/// Events asked for per page; the server may send fewer.
const PAGE: u32 = 1000;

/// Events printed when `--limit` is not given.
const DEFAULT_LIMIT: u32 = 1000;

/// The most events one run prints: a JSON document is held in memory until all of it is
/// read. Older events are reached by narrowing the query (`--since`, `--user`, `--feature`).
pub const MAX_LIMIT: u32 = 100_000;

/// `audit`, checked and ready to send.
pub struct Action {
    /// The filters; `limit` is set per page.
    query: AuditQuery,
    /// At most this many events in all.
    limit: u32,
    /// CSV instead of a table or JSON.
    csv: bool,
}

impl Action {
    pub fn new(
        since: Option<String>,
        user: Option<String>,
        feature: Option<String>,
        limit: Option<u32>,
        csv: bool,
        json: bool,
    ) -> Result<Self, Failure> {
        if csv && json {
            return Err(Failure::usage(
                "--csv and --json ask for two formats; give one of them",
            ));
        }
        let since = values::start_opt(since.as_deref())?;
        let feature = values::feature_opt(feature)?;
        let limit = values::limit(
            limit.unwrap_or(DEFAULT_LIMIT),
            MAX_LIMIT,
            "narrow the query with --since, --user or --feature",
        )?;
        Ok(Action {
            query: AuditQuery {
                since,
                user,
                feature,
                limit: None,
            },
            limit,
            csv,
        })
    }

    pub async fn run(self, client: &Client, out: &Output) -> Result<u8, Failure> {
        let Action {
            mut query,
            limit,
            csv,
        } = self;
        let mut remaining = limit;
        let mut printer = out.audit(csv).map_err(Failure::printing)?;
        let mut before = None;
        while remaining > 0 {
            query.limit = Some(remaining.min(PAGE));
            let page = client
                .audit_page(AuditPageQuery {
                    query: query.clone(),
                    before,
                })
                .await?;
            let events = &page.events[..page.events.len().min(remaining as usize)];
            printer.page(events).map_err(Failure::printing)?;
            remaining -= events.len() as u32;
            match page.next {
                Some(next) if !events.is_empty() && Some(next) != before => before = Some(next),
                _ => break,
            }
        }
        printer.finish().map_err(Failure::printing)?;
        Ok(exit::OK)
    }
}
