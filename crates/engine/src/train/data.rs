//! Training and evaluation files: one (query, positive, hard negatives) triple per row, in JSONL,
//! CSV or TSV.
//!
//! Column names: `query` (or sentence-transformers' `anchor`), `positive`, and optionally
//! `negatives` (a list; in CSV and TSV a JSON array) or `negative` (one text, or in JSONL also a
//! list); further `negative_*` columns each add one. Every other column is ignored. A bad row
//! is an error naming the file, the line and the field.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, Result};

/// One training or evaluation example.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pair {
    /// The query (or anchor) text.
    pub query: String,
    /// The passage that answers it.
    pub positive: String,
    /// Passages that do not (hard negatives); may be empty.
    pub negatives: Vec<String>,
}

/// The file formats [`read_pairs`] knows, by extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PairFormat {
    /// One JSON object per line.
    Jsonl,
    /// Comma-separated, with a header row.
    Csv,
    /// Tab-separated, with a header row.
    Tsv,
}

impl PairFormat {
    /// From the file's extension (`.jsonl`, `.ndjson`, `.json`, `.csv`, `.tsv`).
    pub fn detect(path: &Path) -> Result<Self> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("")
            .to_ascii_lowercase();
        match ext.as_str() {
            "jsonl" | "ndjson" | "json" => Ok(PairFormat::Jsonl),
            "csv" => Ok(PairFormat::Csv),
            "tsv" | "tab" => Ok(PairFormat::Tsv),
            _ => Err(bad(
                path,
                0,
                format!("unknown format {ext:?}: use .jsonl, .csv or .tsv"),
            )),
        }
    }
}

/// Reads every row of `path`; an empty file is an error.
pub fn read_pairs(path: &Path) -> Result<Vec<Pair>> {
    let pairs = match PairFormat::detect(path)? {
        PairFormat::Jsonl => read_jsonl(path)?,
        PairFormat::Csv => read_delimited(path, b',')?,
        PairFormat::Tsv => read_delimited(path, b'\t')?,
    };
    if pairs.is_empty() {
        return Err(bad(path, 0, "the file holds no rows".into()));
    }
    Ok(pairs)
}

fn bad(path: &Path, line: usize, message: String) -> Error {
    Error::TrainingData {
        path: path.to_path_buf(),
        line,
        message,
    }
}

fn read_jsonl(path: &Path) -> Result<Vec<Pair>> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut pairs = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let at = Row {
            path,
            line: index + 1,
        };
        if line.trim().is_empty() {
            continue;
        }
        let value: Value =
            serde_json::from_str(line).map_err(|e| at.error(format!("not a JSON object: {e}")))?;
        let Value::Object(fields) = value else {
            return Err(at.error("not a JSON object".into()));
        };
        let query = at.text(&fields, &["query", "anchor"])?;
        let positive = at.text(&fields, &["positive"])?;
        let mut negatives = Vec::new();
        for (name, value) in &fields {
            if is_negative_column(name) {
                at.negatives(name, value, &mut negatives)?;
            }
        }
        pairs.push(Pair {
            query,
            positive,
            negatives,
        });
    }
    Ok(pairs)
}

fn read_delimited(path: &Path, delimiter: u8) -> Result<Vec<Pair>> {
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .flexible(false)
        .from_path(path)
        .map_err(|e| bad(path, 0, e.to_string()))?;
    let headers = reader
        .headers()
        .map_err(|e| bad(path, 1, e.to_string()))?
        .clone();
    let column = |names: &[&str]| headers.iter().position(|h| names.contains(&h.trim()));
    let header_row = Row { path, line: 1 };
    let query = column(&["query", "anchor"])
        .ok_or_else(|| header_row.error("no column `query` (or `anchor`)".into()))?;
    let positive =
        column(&["positive"]).ok_or_else(|| header_row.error("no column `positive`".into()))?;
    let negative_columns: Vec<(usize, String)> = headers
        .iter()
        .enumerate()
        .filter(|(_, h)| is_negative_column(h.trim()))
        .map(|(i, h)| (i, h.trim().to_string()))
        .collect();
    let mut pairs = Vec::new();
    for (index, record) in reader.records().enumerate() {
        // Line 1 is the header.
        let at = Row {
            path,
            line: index + 2,
        };
        let record = record.map_err(|e| at.error(e.to_string()))?;
        let cell = |i: usize, name: &str| -> Result<String> {
            let v = record.get(i).unwrap_or("");
            if v.trim().is_empty() {
                return Err(at.error(format!("field `{name}` is empty")));
            }
            Ok(v.to_string())
        };
        let mut negatives = Vec::new();
        for (i, name) in &negative_columns {
            let v = record.get(*i).unwrap_or("").trim();
            if v.is_empty() {
                continue;
            }
            if name == "negatives" {
                let list: Value = serde_json::from_str(v).map_err(|e| {
                    at.error(format!(
                        "field `negatives` is not a JSON list of texts: {e}"
                    ))
                })?;
                at.negatives(name, &list, &mut negatives)?;
            } else {
                negatives.push(v.to_string());
            }
        }
        pairs.push(Pair {
            query: cell(query, &headers[query])?,
            positive: cell(positive, "positive")?,
            negatives,
        });
    }
    Ok(pairs)
}

/// `negatives`, `negative`, `negative_2`, `negative_b`…
fn is_negative_column(name: &str) -> bool {
    name == "negatives" || name == "negative" || name.starts_with("negative_")
}

/// Where a row is, for its errors.
struct Row<'a> {
    path: &'a Path,
    line: usize,
}

impl Row<'_> {
    fn error(&self, message: String) -> Error {
        Error::TrainingData {
            path: PathBuf::from(self.path),
            line: self.line,
            message,
        }
    }

    /// The first of `names` present, which must be a non-empty string.
    fn text(&self, fields: &serde_json::Map<String, Value>, names: &[&str]) -> Result<String> {
        let Some((name, value)) = names.iter().find_map(|n| fields.get(*n).map(|v| (*n, v))) else {
            let alternatives = names
                .iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(" or ");
            return Err(self.error(format!("no field {alternatives}")));
        };
        match value {
            Value::String(s) if !s.trim().is_empty() => Ok(s.clone()),
            Value::String(_) => Err(self.error(format!("field `{name}` is empty"))),
            other => Err(self.error(format!(
                "field `{name}` must be a string, not {}",
                kind(other)
            ))),
        }
    }

    /// Adds a negative column's text or list of texts.
    fn negatives(&self, name: &str, value: &Value, out: &mut Vec<String>) -> Result<()> {
        match value {
            Value::Null => Ok(()),
            Value::String(s) if !s.trim().is_empty() => {
                out.push(s.clone());
                Ok(())
            }
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    match item {
                        Value::String(s) if !s.trim().is_empty() => out.push(s.clone()),
                        other => {
                            return Err(self.error(format!(
                                "field `{name}`[{i}] must be a non-empty string, not {}",
                                kind(other)
                            )))
                        }
                    }
                }
                Ok(())
            }
            other => Err(self.error(format!(
                "field `{name}` must be a string or a list of strings, not {}",
                kind(other)
            ))),
        }
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(s) if s.trim().is_empty() => "an empty string",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("jina-train-data-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn reads_every_format_and_name() {
        let jsonl = write(
            "a.jsonl",
            "{\"anchor\": \"q1\", \"positive\": \"p1\", \"negative\": \"n1\"}\n\n\
             {\"query\": \"q2\", \"positive\": \"p2\", \"negatives\": [\"n2\", \"n3\"]}\n",
        );
        let pairs = read_pairs(&jsonl).unwrap();
        assert_eq!(pairs.len(), 2);
        assert_eq!(pairs[0].negatives, vec!["n1"]);
        assert_eq!(pairs[1].negatives, vec!["n2", "n3"]);
        let csv = write(
            "a.csv",
            "query,positive,negative_1,negative_2\nq,p,\"n, 1\",\n",
        );
        assert_eq!(read_pairs(&csv).unwrap()[0].negatives, vec!["n, 1"]);
        let tsv = write("a.tsv", "anchor\tpositive\tnegatives\nq\tp\t[\"x\"]\n");
        assert_eq!(read_pairs(&tsv).unwrap()[0].negatives, vec!["x"]);
    }

    #[test]
    fn bad_rows_name_file_line_and_field() {
        let cases = [
            (
                "b.jsonl",
                "{\"query\": \"q\", \"positive\": \"p\"}\n{\"query\": \"q\"}\n",
                ":2: no field `positive`",
            ),
            (
                "c.jsonl",
                "{\"query\": 3, \"positive\": \"p\"}\n",
                ":1: field `query` must be a string, not a number",
            ),
            ("d.jsonl", "not json\n", ":1: not a JSON object"),
            (
                "e.jsonl",
                "{\"query\": \"q\", \"positive\": \"p\", \"negatives\": [1]}\n",
                ":1: field `negatives`[0]",
            ),
            ("f.csv", "query,other\nq,p\n", ":1: no column `positive`"),
            (
                "g.csv",
                "query,positive\nq,\n",
                ":2: field `positive` is empty",
            ),
            ("h.jsonl", "\n", ":0: the file holds no rows"),
            ("i.parquet", "", "unknown format \"parquet\""),
        ];
        for (name, text, want) in cases {
            let err = read_pairs(&write(name, text)).unwrap_err().to_string();
            assert!(err.contains(name) && err.contains(want), "{name}: {err}");
        }
    }
}
