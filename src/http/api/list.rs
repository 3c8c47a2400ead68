//! [`ListQuery`]: the newest-first, cursor-paged list query that every CRM
//! resource shares, built from whichever filters a request gave.
//!
//! With up to four optional filters per resource, hand-written queries would
//! be sixteen per resource, and the catch-all alternative
//! (`$n IS NULL OR col = $n`) defeats the indexes once PostgreSQL switches a prepared statement to a generic plan.
//! So the WHERE clause carries exactly the filters given, and each distinct
//! shape is prepared once per connection (`prepare_cached`).
//!
//! Invariant: only `&'static str` column and table names from our own code
//! reach the SQL text; every value the client sent is a bind parameter.

use std::marker::PhantomData;

use axum::Json;
use axum::http::HeaderMap;
use tokio_postgres::types::ToSql;

use super::resource::{Param, Resource};
use super::{Auth, Cursor, Page, Scoped, like_pattern, text};
use crate::auth::Permission;
use crate::http::AppState;
use crate::http::error::ApiError;

/// One list request for resource `R`: `SELECT columns FROM table WHERE …
/// ORDER BY created_at DESC, id DESC LIMIT limit + 1` (the extra row says
/// whether a next page exists).
pub struct ListQuery<R> {
    conditions: Vec<String>,
    params: Vec<Param>,
    resource: PhantomData<fn() -> R>,
}

impl<R: Resource> ListQuery<R> {
    /// Active (or only archived) rows older than `cursor` (a `next_cursor`
    /// this API returned; none: from the newest).
    pub fn new(archived: Option<bool>, cursor: Option<&str>) -> Result<Self, ApiError> {
        let cursor = cursor
            .map(Cursor::decode)
            .transpose()?
            .unwrap_or_else(Cursor::start);
        let mut query = Self {
            conditions: Vec::new(),
            params: Vec::new(),
            resource: PhantomData,
        };
        let archived = query.bind(archived.unwrap_or(false));
        query
            .conditions
            .push(format!("(archived_at IS NOT NULL) = {archived}"));
        let (created_at, id) = (query.bind(cursor.created_at), query.bind(cursor.id));
        query
            .conditions
            .push(format!("(created_at, id) < ({created_at}, {id})"));
        Ok(query)
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
            R::COLUMNS,
            R::TABLE,
            self.conditions.join(" AND ")
        )
    }

    /// One page of `limit` rows (default and bounds: [`super::limit`]) as
    /// a one-round-trip read ([`Scoped::read`]) with the read permission,
    /// fetching one row more to tell whether there is a next page.
    pub async fn page(
        mut self,
        state: &AppState,
        auth: Auth,
        headers: &HeaderMap,
        limit: Option<i64>,
    ) -> Result<Json<Page<R>>, ApiError> {
        let limit = super::limit(limit)?;
        let placeholder = self.bind(limit + 1);
        let sql = self.sql(&placeholder);
        let params: Vec<&(dyn ToSql + Sync)> = self
            .params
            .iter()
            .map(|p| &**p as &(dyn ToSql + Sync))
            .collect();
        let rows = Scoped::read(state, auth, Permission::CrmRead, headers, &sql, &params).await?;
        let items = rows.iter().map(R::from_row).collect();
        Ok(Json(super::page(items, limit, R::cursor)))
    }
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;

    use crate::http::api::resource::tests::Thing;

    #[track_caller]
    fn check(query: &ListQuery<Thing>, expected_where: &str, params: usize) {
        let sql = query.sql("$99");
        assert_eq!(
            sql,
            format!(
                "SELECT id, version FROM s.things WHERE {expected_where} ORDER BY created_at DESC, id DESC LIMIT $99"
            )
        );
        assert_eq!(query.params.len(), params);
    }

    const BASE: &str = "(archived_at IS NOT NULL) = $1 AND (created_at, id) < ($2, $3)";

    fn base() -> ListQuery<Thing> {
        ListQuery::new(None, None).expect("the first page")
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
