//! Statement text Digdag's td> builds around a user's query: `INSERT INTO`/`CREATE TABLE AS`
//! inserted at `-- DIGDAG_INSERT_LINE` or after the header comments, the comment block
//! naming the task, identifier quoting per engine, and the CSV Digdag writes for
//! `download_file` and `preview`.

use serde_json::Value;

/// `db.table` or `table` (Digdag's `TableParam`: split at the first dot).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableRef {
    pub database: Option<String>,
    pub table: String,
}

impl TableRef {
    pub fn parse(text: &str) -> Result<TableRef, String> {
        let text = text.trim();
        let (database, table) = match text.split_once('.') {
            Some((d, t)) => (Some(d.to_string()), t.to_string()),
            None => (None, text.to_string()),
        };
        if table.is_empty() || database.as_deref() == Some("") {
            return Err(format!("'{text}' is not a table name (write `table` or `database.table`)"));
        }
        Ok(TableRef { database, table })
    }

    /// The database: its own, or `default`.
    pub fn database_or<'a>(&'a self, default: &'a str) -> &'a str {
        self.database.as_deref().unwrap_or(default)
    }

    pub fn presto(&self) -> String {
        quoted(self, |s| format!("\"{}\"", s.replace('"', "\"\"")))
    }

    pub fn hive(&self) -> String {
        quoted(self, |s| format!("`{}`", s.replace('`', "``")))
    }
}

impl std::fmt::Display for TableRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.database {
            Some(d) => write!(f, "{d}.{}", self.table),
            None => f.write_str(&self.table),
        }
    }
}

fn quoted(t: &TableRef, quote: impl Fn(&str) -> String) -> String {
    match &t.database {
        Some(d) => format!("{}.{}", quote(d), quote(&t.table)),
        None => quote(&t.table),
    }
}

/// Puts `command` (`INSERT INTO "t"`) into `query` as Digdag does: in place of the first
/// `-- DIGDAG_INSERT_LINE` line; else after the comment lines the query starts with (so a
/// job list shows the comments, not the command); else at the head.
///
/// Digdag's own pattern places the command after header comments only when a single line
/// follows them (its regex lacks DOTALL); here any query keeps its header comments first.
pub fn insert_command(command: &str, query: &str) -> String {
    let mut line_start = 0;
    loop {
        let line_end = query[line_start..].find('\n').map_or(query.len(), |i| line_start + i);
        let line = &query[line_start..line_end];
        if let Some(rest) = line.strip_prefix("--")
            && rest.trim_start().starts_with("DIGDAG_INSERT_LINE")
        {
            return format!("{}{command}{}", &query[..line_start], &query[line_end..]);
        }
        if line_end == query.len() {
            break;
        }
        line_start = line_end + 1;
    }

    let body_start = query.find(|c| !matches!(c, '\r' | '\n' | '\t')).unwrap_or(query.len());
    let mut end = body_start;
    while query[end..].starts_with("--") {
        match query[end..].find('\n') {
            Some(i) => end += i + 1,
            None => {
                end = query.len();
                break;
            }
        }
    }
    if end > body_start {
        let header = query[..end].strip_suffix('\n').unwrap_or(&query[..end]);
        return format!("{header}\n{command}\n{}", &query[end..]);
    }
    format!("{command}\n{query}")
}

/// The comment block Digdag puts before every statement it sends.
pub struct Origin<'a> {
    pub project_id: String,
    pub project_name: &'a str,
    pub workflow_name: &'a str,
    pub session_id: i64,
    pub attempt_id: i64,
    pub task_name: &'a str,
}

pub fn with_origin(origin: &Origin<'_>, statement: &str) -> String {
    format!(
        "-- project_id: {}\n-- project_name: {}\n-- workflow_name: {}\n-- session_id: {}\n-- attempt_id: {}\n-- task_name: {}\n{statement}",
        origin.project_id,
        origin.project_name,
        origin.workflow_name,
        origin.session_id,
        origin.attempt_id,
        origin.task_name
    )
}

/// One value as a CSV field: strings as they are, null as nothing, other JSON as its text.
fn csv_field(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// A header line and the rows, as Digdag's td> writes them (see [`spade_sdk::csv`]).
pub fn csv(columns: &[String], rows: &[Vec<Value>]) -> String {
    let mut out = spade_sdk::csv::line(columns.iter().map(|c| Some(c.as_str())));
    for row in rows {
        let fields: Vec<Option<String>> = row.iter().map(csv_field).collect();
        out.push_str(&spade_sdk::csv::line(fields.iter().map(Option::as_deref)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn command_goes_where_digdag_puts_it() {
        assert_eq!(insert_command("INSERT", "select 1"), "INSERT\nselect 1");
        assert_eq!(
            insert_command("INSERT", "with a as (select 1)\n-- DIGDAG_INSERT_LINE\nselect 1"),
            "with a as (select 1)\nINSERT\nselect 1"
        );
        assert_eq!(
            insert_command("INSERT", "with a as (select 1)\n-- DIGDAG_INSERT_LINE xyz\nselect 1"),
            "with a as (select 1)\nINSERT\nselect 1"
        );
        assert_eq!(
            insert_command("INSERT", "with a as (select 1)\n--DIGDAG_INSERT_LINE\n-- comment\nselect 1"),
            "with a as (select 1)\nINSERT\n-- comment\nselect 1"
        );
        assert_eq!(insert_command("INSERT", "-- comment\nselect 1"), "-- comment\nINSERT\nselect 1");
        assert_eq!(
            insert_command("INSERT", "select 1\n-- comment\nfrom table"),
            "INSERT\nselect 1\n-- comment\nfrom table"
        );
        assert_eq!(insert_command("INSERT", "-- comment\r\nselect 1"), "-- comment\r\nINSERT\nselect 1");
        assert_eq!(
            insert_command("INSERT", "-- comment1\n--comment2\nselect 1"),
            "-- comment1\n--comment2\nINSERT\nselect 1"
        );
        let q = "SELECT\n-- comment1\n1;\n-- comment2\n";
        assert_eq!(insert_command("INSERT", q), format!("INSERT\n{q}"));
        // Several lines after the header comments (Digdag would put the command first).
        assert_eq!(insert_command("INSERT", "-- c\nselect 1\nfrom t"), "-- c\nINSERT\nselect 1\nfrom t");
    }

    #[test]
    fn origin_comments() {
        let o = Origin {
            project_id: "2".into(),
            project_name: "",
            workflow_name: "wf",
            session_id: 5,
            attempt_id: 4,
            task_name: "t",
        };
        assert_eq!(
            with_origin(&o, "-- comment\nselect 1 from test"),
            "-- project_id: 2\n-- project_name: \n-- workflow_name: wf\n-- session_id: 5\n-- attempt_id: 4\n-- task_name: t\n-- comment\nselect 1 from test"
        );
    }

    #[test]
    fn tables_and_quoting() {
        let t = TableRef::parse("db.tbl").unwrap();
        assert_eq!(t.presto(), "\"db\".\"tbl\"");
        assert_eq!(t.hive(), "`db`.`tbl`");
        assert_eq!(TableRef::parse("tbl").unwrap().database_or("d"), "d");
        assert!(TableRef::parse(".x").is_err());
        assert!(TableRef::parse("x.").is_err());
    }

    #[test]
    fn csv_like_digdag() {
        let rows = vec![vec![
            json!("a,b"),
            json!(1),
            Value::Null,
            json!(""),
            json!("say \"hi\""),
            json!("l1\r\nl2"),
            json!(true),
        ]];
        assert_eq!(
            csv(&["c1".into(), "c2".into()], &rows),
            "c1,c2\r\n\"a,b\",1,,\"\",\"say \"\"hi\"\"\",\"l1\nl2\",true\r\n"
        );
    }
}
