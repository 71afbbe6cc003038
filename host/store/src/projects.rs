//! Projects, their revisions and revision archives: what `spade push` stores on a server.
//!
//! An archive is kept once per content (its sha256 is the key), whatever number of
//! revisions or projects point at it. A revision's name is unique within its project:
//! pushing the same name again with the same archive is a no-op (a retried push), with
//! another archive a conflict, so a revision never changes once an attempt may have run it.
//!
//! The statements below run verbatim on both backends (`$1`, `$2`, ... in order of first
//! use bind positionally in SQLite too); the backends only map rows.

use crate::WorkflowDefinition;

/// A project as listed.
#[derive(Clone, Debug, PartialEq)]
pub struct ProjectRecord {
    pub id: i64,
    pub name: String,
    pub created_at_ms: i64,
    /// Its latest revision, if it has one.
    pub latest: Option<RevisionRecord>,
}

impl ProjectRecord {
    /// When the project last changed: its latest revision's creation.
    pub fn updated_at_ms(&self) -> i64 {
        self.latest.as_ref().map_or(self.created_at_ms, |r| r.created_at_ms)
    }
}

/// A revision of a project.
#[derive(Clone, Debug, PartialEq)]
pub struct RevisionRecord {
    pub id: i64,
    pub project_id: i64,
    pub name: String,
    pub created_at_ms: i64,
    /// sha256 of its archive; none for revisions a local `spade run` recorded.
    pub archive_digest: Option<String>,
    pub archive_size: Option<u64>,
}

/// A pushed revision to store.
#[derive(Clone, Debug)]
pub struct NewRevision<'a> {
    pub project: &'a str,
    pub revision: &'a str,
    /// The archive (tar.gz) and its sha256.
    pub archive: &'a [u8],
    pub digest: &'a str,
    pub workflows: &'a [WorkflowDefinition],
}

/// What [`crate::Store::push_revision`] did.
#[derive(Clone, Debug, PartialEq)]
pub struct Pushed {
    pub project: ProjectRecord,
    pub revision: RevisionRecord,
    /// False when the revision existed already with this archive (a retried push).
    pub created: bool,
}

/// Revisions with their archive's size; add `WHERE` and `ORDER BY`.
pub(crate) const REVISION_SELECT: &str = "SELECT r.id, r.project_id, r.name, r.created_at, r.archive_digest, a.size
     FROM revisions r LEFT JOIN archives a ON a.digest = r.archive_digest";

/// A project with its latest revision's columns (NULL when it has none); add `WHERE`.
pub(crate) const PROJECT_SELECT: &str = "SELECT p.id, p.name, p.created_at, r.id, r.project_id, r.name, r.created_at,
        r.archive_digest, a.size
     FROM projects p
     LEFT JOIN revisions r ON r.id = (SELECT max(id) FROM revisions WHERE project_id = p.id)
     LEFT JOIN archives a ON a.digest = r.archive_digest";

pub(crate) const INSERT_ARCHIVE: &str =
    "INSERT INTO archives (digest, size, data, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT (digest) DO NOTHING";

pub(crate) const INSERT_PROJECT: &str =
    "INSERT INTO projects (name, created_at) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING";

pub(crate) const INSERT_REVISION: &str =
    "INSERT INTO revisions (project_id, name, created_at, archive_digest) VALUES ($1, $2, $3, $4)";

pub(crate) const INSERT_DEFINITION: &str =
    "INSERT INTO workflow_definitions (revision_id, name, timezone, config) VALUES ($1, $2, $3, $4)";

pub(crate) const SELECT_DEFINITIONS: &str =
    "SELECT name, timezone, config FROM workflow_definitions WHERE revision_id = $1 ORDER BY name";

pub(crate) const SELECT_ARCHIVE: &str = "SELECT data FROM archives WHERE digest = $1";

pub(crate) const GET_VALUE: &str = "SELECT value FROM project_values WHERE project = $1 AND key = $2";
pub(crate) const SET_VALUE: &str = "INSERT INTO project_values (project, key, value) VALUES ($1, $2, $3)
     ON CONFLICT (project, key) DO UPDATE SET value = excluded.value";
pub(crate) const INSERT_VALUE: &str =
    "INSERT INTO project_values (project, key, value) VALUES ($1, $2, $3) ON CONFLICT (project, key) DO NOTHING";
pub(crate) const SWAP_VALUE: &str =
    "UPDATE project_values SET value = $1 WHERE project = $2 AND key = $3 AND value = $4";

/// Migration 3, the same text on both backends: SQLite gives `BIGINT` integer affinity and
/// stores a blob in a `BYTEA` column as it is.
pub(crate) const MIGRATION_3: &str = r#"
    -- Pushed project archives, kept once per content.
    CREATE TABLE archives (
        digest TEXT PRIMARY KEY,
        size BIGINT NOT NULL,
        data BYTEA NOT NULL,
        created_at BIGINT NOT NULL
    );
    ALTER TABLE revisions ADD COLUMN archive_digest TEXT REFERENCES archives(digest);
    -- Small values of one project (a schedule's next slot, the last session of `spade run`):
    -- keyed by project so two projects' workflows of the same name never share them.
    CREATE TABLE project_values (
        project TEXT NOT NULL,
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (project, key)
    );
    -- Values of a database that held one project were that project's.
    INSERT INTO project_values (project, key, value)
        SELECT p.name, kv.key, kv.value FROM kv CROSS JOIN projects p
        WHERE (SELECT count(*) FROM projects) = 1;
    DROP TABLE kv;
"#;

#[cfg(test)]
mod tests {
    /// SQLite binds `$N` by order of first appearance: every statement must name its
    /// parameters in order, or the two backends would bind different values.
    #[test]
    fn parameters_appear_in_order() {
        use super::*;
        for sql in [
            INSERT_ARCHIVE,
            INSERT_PROJECT,
            INSERT_REVISION,
            INSERT_DEFINITION,
            SELECT_DEFINITIONS,
            SELECT_ARCHIVE,
            GET_VALUE,
            SET_VALUE,
            INSERT_VALUE,
            SWAP_VALUE,
        ] {
            let mut next = 1;
            let mut rest = sql;
            while let Some(i) = rest.find('$') {
                let digits: String = rest[i + 1..].chars().take_while(|c| c.is_ascii_digit()).collect();
                let n: usize = digits.parse().unwrap();
                assert!(n <= next, "{sql}: ${n} before ${next}");
                if n == next {
                    next += 1;
                }
                rest = &rest[i + 1 + digits.len()..];
            }
        }
    }
}
