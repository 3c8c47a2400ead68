//! [`Resource`]: what the five CRM resources (customers, contacts, deals,
//! activities, payments) have in common — a table, a row shape, a version —
//! and the reads and writes they share through it: get, archive, insert and
//! update with optimistic concurrency. Each resource module keeps only what
//! is its own: its fields, their validation, and its extra rules.
//!
//! Invariant: only `&'static str` table and column names from our own code
//! reach the SQL text; every value a client sent is a bind parameter.

use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::{Auth, Cursor, Scoped, created, if_match, with_etag};
use crate::auth::Permission;
use crate::http::AppState;
use crate::http::error::ApiError;

/// A CRM resource: one row of `TABLE` as the API shows it.
pub trait Resource: serde::Serialize + Sized {
    /// `schema.table`.
    const TABLE: &'static str;
    /// The columns [`Resource::from_row`] reads, in its order.
    const COLUMNS: &'static str;
    /// Its name in messages ("contact not found").
    const WHAT: &'static str;
    /// Its collection's URL (`/api/v1/contacts`).
    const PATH: &'static str;

    fn from_row(row: &Row) -> Self;
    fn id(&self) -> Uuid;
    fn version(&self) -> i32;
    fn created_at(&self) -> time::OffsetDateTime;

    /// Where a newest-first list continues after this row.
    fn cursor(&self) -> Cursor {
        Cursor {
            created_at: self.created_at(),
            id: self.id(),
        }
    }
}

pub(super) type Param = Box<dyn ToSql + Sync + Send>;

/// The columns an insert or update writes, each with its value as a bind
/// parameter.
#[derive(Default)]
pub struct Columns {
    names: Vec<&'static str>,
    params: Vec<Param>,
}

impl Columns {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Writes `value` to `column`.
    #[must_use]
    pub fn set(mut self, column: &'static str, value: impl ToSql + Sync + Send + 'static) -> Self {
        self.names.push(column);
        self.params.push(Box::new(value));
        self
    }

    /// For updates: writes `column` only when the request gave the field.
    /// For a nullable column `T` is an `Option` itself, so `Some(None)`
    /// clears it.
    #[must_use]
    pub fn change<T: ToSql + Sync + Send + 'static>(
        self,
        column: &'static str,
        value: Option<T>,
    ) -> Self {
        match value {
            Some(value) => self.set(column, value),
            None => self,
        }
    }

    /// `$first, $first+1, …` for the values, in order.
    fn placeholders(&self, first: usize) -> impl Iterator<Item = String> + '_ {
        (first..).take(self.names.len()).map(|n| format!("${n}"))
    }

    fn insert_sql<R: Resource>(&self) -> String {
        let values: Vec<String> = self.placeholders(1).collect();
        format!(
            "INSERT INTO {} ({}) VALUES ({}) RETURNING {}",
            R::TABLE,
            self.names.join(", "),
            values.join(", "),
            R::COLUMNS
        )
    }

    /// `$1` is the id and `$2` the expected version; an update that names
    /// no column still checks both (and, changing nothing, keeps the version).
    fn update_sql<R: Resource>(&self) -> String {
        let sets: Vec<String> = if self.names.is_empty() {
            vec!["id = id".to_string()]
        } else {
            self.names
                .iter()
                .zip(self.placeholders(3))
                .map(|(column, placeholder)| format!("{column} = {placeholder}"))
                .collect()
        };
        format!(
            "UPDATE {} SET {} WHERE id = $1 AND version = $2 RETURNING {}",
            R::TABLE,
            sets.join(", "),
            R::COLUMNS
        )
    }

    fn params(&self) -> impl Iterator<Item = &(dyn ToSql + Sync)> {
        self.params.iter().map(|p| &**p as &(dyn ToSql + Sync))
    }
}

impl Scoped {
    /// Inserts a row of `R` (RLS and the column defaults fill in the tenant).
    pub async fn insert<R: Resource>(&self, columns: Columns) -> Result<R, ApiError> {
        let params: Vec<&(dyn ToSql + Sync)> = columns.params().collect();
        let row = self
            .client()
            .query_one(&columns.insert_sql::<R>(), &params)
            .await?;
        Ok(R::from_row(&row))
    }

    /// Updates row `id` of `R` if it is still at `version`: 404 when the
    /// caller cannot see it, 412 when it changed meanwhile.
    pub async fn update<R: Resource>(
        &self,
        id: Uuid,
        version: i32,
        columns: Columns,
    ) -> Result<R, ApiError> {
        let params: Vec<&(dyn ToSql + Sync)> = [&id as &(dyn ToSql + Sync), &version]
            .into_iter()
            .chain(columns.params())
            .collect();
        let row = self
            .client()
            .query_opt(&columns.update_sql::<R>(), &params)
            .await?;
        match row {
            Some(row) => Ok(R::from_row(&row)),
            None => Err(missing_or_stale::<R>(self, id).await),
        }
    }
}

/// After an update matched no row: 404 if the row is not visible, else the
/// version was stale (412).
async fn missing_or_stale<R: Resource>(db: &Scoped, id: Uuid) -> ApiError {
    match db
        .client()
        .query_opt(&format!("SELECT 1 FROM {} WHERE id = $1", R::TABLE), &[&id])
        .await
    {
        Ok(Some(_)) => ApiError::PreconditionFailed,
        Ok(None) => ApiError::NotFound(R::WHAT),
        Err(err) => err.into(),
    }
}

/// `200` with the row and its version as the `ETag`.
pub fn found<R: Resource>(item: R) -> Response {
    with_etag(item.version(), axum::Json(item))
}

/// `201` with the new row, its `Location` and its `ETag`.
pub fn made<R: Resource>(item: R) -> Response {
    let location = format!("{}/{}", R::PATH, item.id());
    created(&location, item.version(), axum::Json(item)).into_response()
}

/// The read every CRM resource shares: the read permission, the row as the
/// tenant sees it (404 otherwise), its version as the `ETag`.
pub async fn get_row<R: Resource>(
    state: &AppState,
    auth: Auth,
    headers: &HeaderMap,
    id: Uuid,
) -> Result<Response, ApiError> {
    let sql = format!("SELECT {} FROM {} WHERE id = $1", R::COLUMNS, R::TABLE);
    let rows = Scoped::read(state, auth, Permission::CrmRead, headers, &sql, &[&id]).await?;
    let row = rows.first().ok_or(ApiError::NotFound(R::WHAT))?;
    Ok(found(R::from_row(row)))
}

/// The archive action every CRM resource shares: `If-Match` required, the
/// archive permission, `archived_at` set once (archiving twice keeps the
/// first time), 404 when the row is not visible and 412 when it is stale.
pub async fn archive_row<R: Resource>(
    state: &AppState,
    auth: Auth,
    headers: &HeaderMap,
    id: Uuid,
) -> Result<Response, ApiError> {
    let expected = if_match(headers)?;
    let db = Scoped::begin(state, auth, Permission::CrmArchive, headers).await?;
    let sql = format!(
        "UPDATE {} SET archived_at = coalesce(archived_at, now()) WHERE id = $1 AND version = $2 RETURNING {}",
        R::TABLE,
        R::COLUMNS
    );
    let row = db.client().query_opt(&sql, &[&id, &expected]).await?;
    let Some(row) = row else {
        return Err(missing_or_stale::<R>(&db, id).await);
    };
    db.commit().await?;
    Ok(found(R::from_row(&row)))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A resource for unit tests of the SQL the shared code writes.
    #[derive(serde::Serialize)]
    pub struct Thing;

    impl Resource for Thing {
        const TABLE: &'static str = "s.things";
        const COLUMNS: &'static str = "id, version";
        const WHAT: &'static str = "thing";
        const PATH: &'static str = "/api/v1/things";
        fn from_row(_: &Row) -> Self {
            Self
        }
        fn id(&self) -> Uuid {
            Uuid::nil()
        }
        fn version(&self) -> i32 {
            1
        }
        fn created_at(&self) -> time::OffsetDateTime {
            time::OffsetDateTime::UNIX_EPOCH
        }
    }

    #[test]
    fn inserts_name_each_column_once_with_its_parameter() {
        let columns = Columns::new().set("name", "x").set("notes", None::<String>);
        assert_eq!(
            columns.insert_sql::<Thing>(),
            "INSERT INTO s.things (name, notes) VALUES ($1, $2) RETURNING id, version"
        );
        assert_eq!(columns.params().count(), 2);
    }

    #[test]
    fn updates_write_only_the_fields_given_after_id_and_version() {
        let columns = Columns::new()
            .change("name", None::<String>)
            .change("email", Some(None::<String>))
            .change("done", Some(true));
        assert_eq!(
            columns.update_sql::<Thing>(),
            "UPDATE s.things SET email = $3, done = $4 WHERE id = $1 AND version = $2 RETURNING id, version"
        );
        assert_eq!(
            Columns::new().update_sql::<Thing>(),
            "UPDATE s.things SET id = id WHERE id = $1 AND version = $2 RETURNING id, version"
        );
    }
}
