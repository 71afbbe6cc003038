//! The REST API's resources, with Digdag's field names (`RestProject`, `RestRevision`,
//! `RestWorkflowDefinition`): the server serializes them and clients read them, so the two
//! cannot drift apart. spade's additions are marked.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A project and its latest revision (Digdag's `RestProject`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RestProject {
    pub id: String,
    pub name: String,
    /// The latest revision's name (empty when it has none).
    pub revision: String,
    pub created_at: String,
    pub updated_at: String,
    pub deleted_at: Option<String>,
    /// Where the archive is kept: `db` (the state database).
    pub archive_type: Option<String>,
    /// spade: the latest revision archive's sha256.
    #[serde(default)]
    pub archive_sha256: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RestProjectCollection {
    pub projects: Vec<RestProject>,
}

/// A revision of a project (Digdag's `RestRevision`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RestRevision {
    pub revision: String,
    pub created_at: String,
    pub archive_type: Option<String>,
    #[serde(default)]
    pub user_info: Map<String, Value>,
    /// spade: the archive's sha256 and size in bytes.
    #[serde(default)]
    pub archive_sha256: Option<String>,
    #[serde(default)]
    pub archive_size: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RestRevisionCollection {
    pub revisions: Vec<RestRevision>,
}

/// A resource named by id and name (Digdag's `IdAndName`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IdAndName {
    pub id: String,
    pub name: String,
}

/// A workflow of a revision (Digdag's `RestWorkflowDefinition`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RestWorkflowDefinition {
    pub name: String,
    pub project: IdAndName,
    pub revision: String,
    pub timezone: String,
    pub config: Map<String, Value>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RestWorkflowDefinitionCollection {
    pub workflows: Vec<RestWorkflowDefinition>,
}

/// What the server answers when a request fails.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RestError {
    pub message: String,
    #[serde(default)]
    pub status: u16,
}
