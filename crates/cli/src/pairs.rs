//! Pairs files for `train` and `eval`: JSONL, CSV and TSV through the engine's reader, and
//! Parquet here (the engine does not link Arrow), with the same column names and errors that
//! name the file, the row and the column.

use std::fs::File;
use std::path::Path;

use anyhow::{anyhow, bail, Context};
use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef};
use arrow_schema::DataType;
use jina_engine::train::{read_pairs, Pair};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

/// Every pair of `path` (by extension: .jsonl/.ndjson/.json, .csv, .tsv, .parquet/.pq).
pub fn read(path: &Path) -> anyhow::Result<Vec<Pair>> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    if ext.eq_ignore_ascii_case("parquet") || ext.eq_ignore_ascii_case("pq") {
        return read_parquet(path);
    }
    Ok(read_pairs(path)?)
}

fn read_parquet(path: &Path) -> anyhow::Result<Vec<Pair>> {
    let shown = path.display();
    let file = File::open(path).with_context(|| format!("opening {shown}"))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .with_context(|| format!("{shown} is not a readable Parquet file"))?;
    let schema = builder.schema().clone();
    let names: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    let find = |wanted: &[&str]| names.iter().find(|n| wanted.contains(&n.as_str())).cloned();
    let query = find(&["query", "anchor"]).ok_or_else(|| {
        anyhow!("{shown}: no column `query` (or `anchor`); its columns are {names:?}")
    })?;
    let positive = find(&["positive"])
        .ok_or_else(|| anyhow!("{shown}: no column `positive`; its columns are {names:?}"))?;
    let negatives: Vec<String> = names
        .iter()
        .filter(|n| *n == "negatives" || *n == "negative" || n.starts_with("negative_"))
        .cloned()
        .collect();
    let mut pairs = Vec::new();
    for batch in builder.with_batch_size(1024).build()? {
        let batch = batch.with_context(|| format!("reading {shown}"))?;
        let column = |name: &str| batch.column_by_name(name).cloned().expect("in the schema");
        let (q, p) = (column(&query), column(&positive));
        let n: Vec<(String, ArrayRef)> = negatives.iter().map(|c| (c.clone(), column(c))).collect();
        for row in 0..batch.num_rows() {
            let record = pairs.len() + 1;
            let at = |name: &str| format!("{shown} row {record}: column `{name}`");
            let text = |a: &ArrayRef, name: &str| -> anyhow::Result<String> {
                match strings(a, row)
                    .map_err(|e| anyhow!("{}: {e}", at(name)))?
                    .as_slice()
                {
                    [one] if !one.trim().is_empty() => Ok(one.clone()),
                    _ => bail!("{} is empty or null", at(name)),
                }
            };
            let mut pair = Pair {
                query: text(&q, &query)?,
                positive: text(&p, "positive")?,
                negatives: Vec::new(),
            };
            for (name, a) in &n {
                let values = strings(a, row).map_err(|e| anyhow!("{}: {e}", at(name)))?;
                if values.iter().any(|v| v.trim().is_empty()) {
                    bail!("{} holds an empty text", at(name));
                }
                pair.negatives.extend(values);
            }
            pairs.push(pair);
        }
    }
    if pairs.is_empty() {
        bail!("{shown}: the file holds no rows");
    }
    Ok(pairs)
}

/// The texts of one cell: a string (one), a list of strings (each), null (none).
fn strings(a: &ArrayRef, row: usize) -> Result<Vec<String>, String> {
    if a.is_null(row) {
        return Ok(Vec::new());
    }
    let one = |a: &dyn Array, i: usize| -> Result<String, String> {
        Ok(match a.data_type() {
            DataType::Utf8 => a.as_string::<i32>().value(i).to_string(),
            DataType::LargeUtf8 => a.as_string::<i64>().value(i).to_string(),
            DataType::Utf8View => a.as_string_view().value(i).to_string(),
            other => {
                return Err(format!(
                    "has type {other}; expected a string or a list of strings"
                ))
            }
        })
    };
    let list = match a.data_type() {
        DataType::List(_) => a.as_list::<i32>().value(row),
        DataType::LargeList(_) => a.as_list::<i64>().value(row),
        _ => return Ok(vec![one(a.as_ref(), row)?]),
    };
    (0..list.len()).map(|i| one(list.as_ref(), i)).collect()
}
