//! Load-time errors: what the user sees when a project can't be loaded.
//!
//! Every error names the file, and where it knows them the line, column and task, so the CLI
//! can print `file:line:col: task +wf+x: message` and nothing runs. This module only formats;
//! it never decides what is an error.

use std::fmt;

/// A place in a source file (line and column are 1-based).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SourcePos {
    /// The file, relative to the project directory when it is inside it.
    pub file: String,
    pub line: usize,
    pub col: usize,
}

impl fmt::Display for SourcePos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.col)
    }
}

/// One problem found while loading or validating a workflow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadError {
    /// The file, relative to the project directory when it is inside it; empty when unknown.
    pub file: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// 1-based column, when known.
    pub col: Option<usize>,
    /// Full task name (`+wf+group+task`), when the problem belongs to a task.
    pub task: Option<String>,
    pub message: String,
}

impl LoadError {
    pub fn new(file: impl Into<String>, message: impl Into<String>) -> Self {
        LoadError { file: file.into(), line: None, col: None, task: None, message: message.into() }
    }

    pub fn at(pos: &SourcePos, message: impl Into<String>) -> Self {
        LoadError {
            file: pos.file.clone(),
            line: Some(pos.line),
            col: Some(pos.col),
            task: None,
            message: message.into(),
        }
    }

    pub fn with_task(mut self, task: impl Into<String>) -> Self {
        self.task = Some(task.into());
        self
    }

    /// The position, if both line and column are known.
    pub fn pos(&self) -> Option<SourcePos> {
        match (self.line, self.col) {
            (Some(line), Some(col)) => Some(SourcePos { file: self.file.clone(), line, col }),
            _ => None,
        }
    }
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut wrote = false;
        if !self.file.is_empty() {
            f.write_str(&self.file)?;
            if let Some(line) = self.line {
                write!(f, ":{line}")?;
                if let Some(col) = self.col {
                    write!(f, ":{col}")?;
                }
            }
            wrote = true;
        }
        if let Some(task) = &self.task {
            if wrote {
                f.write_str(": ")?;
            }
            write!(f, "task {task}")?;
            wrote = true;
        }
        if wrote {
            f.write_str(": ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for LoadError {}

/// Every problem found in a project (loading goes on after the first one, so the user can fix
/// them all in one go).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadErrors(pub Vec<LoadError>);

impl LoadErrors {
    pub fn single(e: LoadError) -> Self {
        LoadErrors(vec![e])
    }
    pub fn iter(&self) -> std::slice::Iter<'_, LoadError> {
        self.0.iter()
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<LoadError> for LoadErrors {
    fn from(e: LoadError) -> Self {
        LoadErrors(vec![e])
    }
}

/// One error per line (for the error lists of this crate).
pub(crate) fn write_lines<T: fmt::Display>(f: &mut fmt::Formatter<'_>, items: &[T]) -> fmt::Result {
    for (i, e) in items.iter().enumerate() {
        if i > 0 {
            f.write_str("\n")?;
        }
        write!(f, "{e}")?;
    }
    Ok(())
}

impl fmt::Display for LoadErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_lines(f, &self.0)
    }
}

impl std::error::Error for LoadErrors {}

impl IntoIterator for LoadErrors {
    type Item = LoadError;
    type IntoIter = std::vec::IntoIter<LoadError>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_omits_missing_parts() {
        let full = LoadError {
            file: "wf.dig".into(),
            line: Some(3),
            col: Some(5),
            task: Some("+wf+x".into()),
            message: "boom".into(),
        };
        assert_eq!(full.to_string(), "wf.dig:3:5: task +wf+x: boom");
        let no_pos = LoadError { line: None, col: None, ..full.clone() };
        assert_eq!(no_pos.to_string(), "wf.dig: task +wf+x: boom");
        let no_task = LoadError { task: None, ..full.clone() };
        assert_eq!(no_task.to_string(), "wf.dig:3:5: boom");
        let nothing = LoadError::new("", "boom");
        assert_eq!(nothing.to_string(), "boom");
        let task_only = LoadError::new("", "boom").with_task("+wf");
        assert_eq!(task_only.to_string(), "task +wf: boom");
    }
}
