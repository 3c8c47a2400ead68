//! [`ListQuery`]: the newest-first, cursor-paged list query that every CRM
//! resource shares, built from whichever filters a request gave.
//!
//! With up to four optional filters per resource, hand-written queries would
//! be sixteen per resource, and the catch-all alternative (`$n IS NULL OR col = $n`) defeats the
//! indexes once PostgreSQL switches a prepared statement to a generic plan.
//! So the WHERE clause carries exactly the filters given, and each distinct
//! shape is prepared once per connection (`prepare_cached`).
//!
//! Invariant: only `&'static str` column and table names from our own code
//! reach the SQL text; every value the client sent is a bind parameter.

use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use axum::http::HeaderMap;

use super::{Auth, Cursor, Scoped, like_pattern, text};
use crate::auth::Permission;
use crate::http::AppState;
use crate::http::error::ApiError;

type Param = Box<dyn ToSql + Sync + Send>;

/// One list request: `SELECT columns FROM table WHERE … ORDER BY created_at
/// DESC, id DESC LIMIT limit + 1` (the extra row says whether a next page exists).
pub struct ListQuery {
    table: &'static str,
    columns: &'static str,
    conditions: Vec<String>,
    params: Vec<Param>,
}

impl ListQuery {
    /// Active (or only archived) rows of `table` older than `cursor`.
    pub fn new(table: &'static str, columns: &'static str, archived: bool, cursor: Cursor) -> Self {
        let mut query = Self {
            table,
            columns,
            conditions: Vec::new(),
            params: Vec::new(),
        };
        let archived = query.bind(archived);
        query
            .conditions
            .push(format!("(archived_at IS NOT NULL) = {archived}"));
        let (created_at, id) = (query.bind(cursor.created_at), query.bind(cursor.id));
        query
            .conditions
            .push(format!("(created_at, id) < ({created_at}, {id})"));
        query
    }

    /// Adds `value` as a parameter and returns its placeholder (`$n`).
    fn bind(&mut self, value: impl ToSql + Sync + Send + 'static) -> String {
        self.params.push(Box::new(value));
        format!("${}", self.params.len())
    }

    /// Keeps rows whose `column` equals `value`, when the request gave one.
    #[must_use]
    pub fn equals<T: ToSql + Sync + Send + 'static>(
        mut self,
        column: &'static str,
        value: Option<T>,
    ) -> Self {
        if let Some(value) = value {
            let placeholder = self.bind(value);
            self.conditions.push(format!("{column} = {placeholder}"));
        }
        self
    }

    /// Keeps rows where any of `columns` contains `q` (case-insensitive);
    /// blank `q` means no search. The columns are trigram-indexed, so the
    /// `ILIKE '%…%'` does not scan the table.
    pub fn search(mut self, columns: &[&'static str], q: Option<&str>) -> Result<Self, ApiError> {
        if let Some(q) = q.map(str::trim).filter(|q| !q.is_empty()) {
            let q = text("q", q, 1, 200)?;
            let placeholder = self.bind(like_pattern(&q));
            let any: Vec<String> = columns
                .iter()
                .map(|c| format!("{c} ILIKE {placeholder}"))
                .collect();
            self.conditions.push(format!("({})", any.join(" OR ")));
        }
        Ok(self)
    }

    fn sql(&self, limit_placeholder: &str) -> String {
        format!(
            "SELECT {} FROM {} WHERE {} ORDER BY created_at DESC, id DESC LIMIT {limit_placeholder}",
            self.columns,
            self.table,
            self.conditions.join(" AND ")
        )
    }

    /// Runs the query for one page of `limit` rows, plus one to tell whether
    /// there is a next page (see [`super::page`]), as one round-trip read
    /// ([`Scoped::read`]) with the read permission.
    pub async fn fetch(
        mut self,
        state: &AppState,
        auth: Auth,
        headers: &HeaderMap,
        limit: i64,
    ) -> Result<Vec<Row>, ApiError> {
        let limit = self.bind(limit + 1);
        let sql = self.sql(&limit);
        let params: Vec<&(dyn ToSql + Sync)> = self
            .params
            .iter()
            .map(|p| &**p as &(dyn ToSql + Sync))
            .collect();
        Scoped::read(state, auth, Permission::CrmRead, headers, &sql, &params).await
    }
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;

    #[track_caller]
    fn check(query: &ListQuery, expected_where: &str, params: usize) {
        let sql = query.sql("$99");
        assert_eq!(
            sql,
            format!(
                "SELECT id FROM t.t WHERE {expected_where} ORDER BY created_at DESC, id DESC LIMIT $99"
            )
        );
        assert_eq!(query.params.len(), params);
    }

    const BASE: &str = "(archived_at IS NOT NULL) = $1 AND (created_at, id) < ($2, $3)";

    fn base() -> ListQuery {
        ListQuery::new("t.t", "id", false, Cursor::start())
    }

    #[test]
    fn no_filters_is_just_the_page() {
        check(&base(), BASE, 3);
    }

    #[test]
    fn absent_filters_add_nothing() {
        let query = base()
            .equals::<Uuid>("customer_id", None)
            .search(&["name"], Some("  "))
            .expect("blank search is no search");
        check(&query, BASE, 3);
    }

    #[test]
    fn filters_bind_values_and_search_reuses_one_parameter() {
        let query = base()
            .equals("customer_id", Some(Uuid::nil()))
            .equals("done", Some(true))
            .search(&["name", "email"], Some("ana"))
            .expect("search");
        check(
            &query,
            &format!(
                "{BASE} AND customer_id = $4 AND done = $5 AND (name ILIKE $6 OR email ILIKE $6)"
            ),
            6,
        );
    }

    #[test]
    fn an_oversized_search_is_a_validation_error() {
        let result = base().search(&["name"], Some(&"x".repeat(201)));
        assert!(matches!(result, Err(ApiError::Validation { .. })));
    }
}
