//! Input rows of `jina-embed embed`, streamed: text lines, JSONL, CSV/TSV and Parquet. Each row
//! has a text, optionally an id and a document id (for late chunking), and its 1-based record
//! number for error messages.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use arrow_array::{Array, RecordBatch};
use clap::ValueEnum;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum InputFormat {
    /// From the file name: .jsonl/.ndjson, .csv, .tsv, .parquet; anything else (and stdin) is
    /// text.
    Auto,
    /// One text per line.
    Text,
    /// One JSON object per line; the text is in the `--text-field` field.
    Jsonl,
    /// Comma-separated values with a header row; the text is in the `--text-field` column.
    Csv,
    /// Tab-separated values with a header row.
    Tsv,
    /// Apache Parquet; the text is in the `--text-field` column (string).
    Parquet,
}

impl InputFormat {
    /// The format of `path` for `auto`.
    pub fn detect(self, path: &Path) -> InputFormat {
        if self != InputFormat::Auto {
            return self;
        }
        match path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("jsonl" | "ndjson") => InputFormat::Jsonl,
            Some("csv") => InputFormat::Csv,
            Some("tsv" | "tab") => InputFormat::Tsv,
            Some("parquet" | "pq") => InputFormat::Parquet,
            _ => InputFormat::Text,
        }
    }
}

/// Which fields to read.
#[derive(Clone, Debug)]
pub struct Fields {
    pub text: String,
    pub id: Option<String>,
    pub document: Option<String>,
}

/// One input record.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// 1-based record number (line for text and JSONL, data row for CSV/TSV and Parquet).
    pub record: usize,
    pub text: String,
    pub id: Option<String>,
    pub document: Option<String>,
}

pub type Rows = Box<dyn Iterator<Item = anyhow::Result<Row>>>;

/// Opens the input; `-` is stdin (text or JSONL only).
pub fn open(path: &Path, format: InputFormat, fields: &Fields) -> anyhow::Result<Rows> {
    let format = format.detect(path);
    let stdin = path == Path::new("-");
    if format == InputFormat::Text && (fields.id.is_some() || fields.document.is_some()) {
        bail!("--id-field and --document-field need a structured input (--format jsonl, csv, tsv or parquet); {} is read as plain text", shown(path));
    }
    match format {
        InputFormat::Text | InputFormat::Jsonl | InputFormat::Auto => {
            let reader: Box<dyn Read> = if stdin {
                Box::new(io::stdin())
            } else {
                Box::new(File::open(path).with_context(|| format!("opening {}", path.display()))?)
            };
            let lines = BufReader::with_capacity(1 << 16, reader).lines();
            let path = path.to_path_buf();
            if format == InputFormat::Jsonl {
                let fields = fields.clone();
                Ok(Box::new(lines.enumerate().filter_map(move |(n, line)| {
                    jsonl_row(&path, &fields, n + 1, line).transpose()
                })))
            } else {
                Ok(Box::new(lines.enumerate().map(move |(n, line)| {
                    let text = line
                        .with_context(|| format!("reading line {} of {}", n + 1, shown(&path)))?;
                    Ok(Row {
                        record: n + 1,
                        text,
                        id: None,
                        document: None,
                    })
                })))
            }
        }
        InputFormat::Csv | InputFormat::Tsv => {
            if stdin {
                bail!("CSV/TSV input must be a file (--input FILE)");
            }
            csv_rows(
                path,
                if format == InputFormat::Tsv {
                    b'\t'
                } else {
                    b','
                },
                fields,
            )
        }
        InputFormat::Parquet => {
            if stdin {
                bail!("Parquet input must be a file (--input FILE)");
            }
            parquet_rows(path, fields)
        }
    }
}

/// The number of records, for the progress bar; `None` for stdin. A cheap pass over the file
/// (Parquet: its footer).
pub fn count(path: &Path, format: InputFormat) -> anyhow::Result<Option<u64>> {
    if path == Path::new("-") {
        return Ok(None);
    }
    match format.detect(path) {
        InputFormat::Parquet => {
            let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
            let builder = ParquetRecordBatchReaderBuilder::try_new(file)
                .with_context(|| format!("{} is not a readable Parquet file", path.display()))?;
            Ok(Some(
                builder.metadata().file_metadata().num_rows().max(0) as u64
            ))
        }
        InputFormat::Csv | InputFormat::Tsv => {
            let delimiter = if format.detect(path) == InputFormat::Tsv {
                b'\t'
            } else {
                b','
            };
            let mut reader = csv::ReaderBuilder::new()
                .delimiter(delimiter)
                .from_path(path)
                .with_context(|| format!("opening {}", path.display()))?;
            let mut record = csv::ByteRecord::new();
            let mut n = 0;
            while reader.read_byte_record(&mut record).unwrap_or(false) {
                n += 1;
            }
            Ok(Some(n))
        }
        _ => {
            let mut file = BufReader::with_capacity(
                1 << 16,
                File::open(path).with_context(|| format!("opening {}", path.display()))?,
            );
            let (mut lines, mut last) = (0u64, b'\n');
            loop {
                let buf = file
                    .fill_buf()
                    .with_context(|| format!("reading {}", path.display()))?;
                if buf.is_empty() {
                    break;
                }
                lines += buf.iter().filter(|&&b| b == b'\n').count() as u64;
                last = buf[buf.len() - 1];
                let n = buf.len();
                file.consume(n);
            }
            Ok(Some(lines + u64::from(last != b'\n')))
        }
    }
}

fn shown(path: &Path) -> String {
    if path == Path::new("-") {
        "stdin".to_string()
    } else {
        path.display().to_string()
    }
}

fn jsonl_row(
    path: &Path,
    fields: &Fields,
    n: usize,
    line: io::Result<String>,
) -> anyhow::Result<Option<Row>> {
    let line = line.with_context(|| format!("reading line {n} of {}", shown(path)))?;
    if line.trim().is_empty() {
        return Ok(None);
    }
    let value: serde_json::Value = serde_json::from_str(&line)
        .with_context(|| format!("line {n} of {} is not valid JSON", shown(path)))?;
    let text = match value.get(&fields.text) {
        Some(serde_json::Value::String(text)) => text.clone(),
        Some(other) => bail!(
            "line {n} of {}: field {:?} is not a string but {other}",
            shown(path),
            fields.text
        ),
        None => bail!("line {n} of {}: no field {:?}", shown(path), fields.text),
    };
    let key = |field: &Option<String>| -> anyhow::Result<Option<String>> {
        let Some(name) = field else { return Ok(None) };
        match value.get(name) {
            Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
            Some(v @ serde_json::Value::Number(_)) => Ok(Some(v.to_string())),
            Some(other) => bail!(
                "line {n} of {}: field {name:?} must be a string or a number, not {other}",
                shown(path)
            ),
            None => bail!("line {n} of {}: no field {name:?}", shown(path)),
        }
    };
    Ok(Some(Row {
        record: n,
        text,
        id: key(&fields.id)?,
        document: key(&fields.document)?,
    }))
}

fn csv_rows(path: &Path, delimiter: u8, fields: &Fields) -> anyhow::Result<Rows> {
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .flexible(false)
        .from_path(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let headers = reader
        .headers()
        .with_context(|| format!("reading the header row of {}", path.display()))?
        .clone();
    let column = |name: &str| -> anyhow::Result<usize> {
        headers.iter().position(|h| h == name).ok_or_else(|| {
            anyhow!(
                "{} has no column {name:?}; its columns are {:?}",
                path.display(),
                headers.iter().collect::<Vec<_>>()
            )
        })
    };
    let text = column(&fields.text)?;
    let id = fields.id.as_deref().map(column).transpose()?;
    let document = fields.document.as_deref().map(column).transpose()?;
    let path = path.to_path_buf();
    Ok(Box::new(reader.into_records().enumerate().map(
        move |(n, record)| {
            let record = record
                .with_context(|| format!("reading data row {} of {}", n + 1, path.display()))?;
            let get = |i: usize| record.get(i).unwrap_or_default().to_string();
            Ok(Row {
                record: n + 1,
                text: get(text),
                id: id.map(get),
                document: document.map(get),
            })
        },
    )))
}

fn parquet_rows(path: &Path, fields: &Fields) -> anyhow::Result<Rows> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .with_context(|| format!("{} is not a readable Parquet file", path.display()))?;
    let schema = builder.schema().clone();
    let mut wanted = vec![fields.text.clone()];
    wanted.extend(fields.id.iter().cloned());
    wanted.extend(fields.document.iter().cloned());
    for name in &wanted {
        if schema.field_with_name(name).is_err() {
            let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
            bail!(
                "{} has no column {name:?}; its columns are {names:?}",
                path.display()
            );
        }
    }
    // Read only the columns we need.
    let roots: Vec<usize> = wanted
        .iter()
        .filter_map(|n| schema.index_of(n).ok())
        .collect();
    let mask = parquet::arrow::ProjectionMask::roots(builder.parquet_schema(), roots);
    let reader = builder
        .with_projection(mask)
        .with_batch_size(1024)
        .build()?;
    Ok(Box::new(ParquetRows {
        path: path.to_path_buf(),
        fields: fields.clone(),
        reader,
        batch: None,
        next: 0,
        record: 0,
    }))
}

struct ParquetRows {
    path: PathBuf,
    fields: Fields,
    reader: ParquetRecordBatchReader,
    batch: Option<RecordBatch>,
    next: usize,
    record: usize,
}

impl ParquetRows {
    fn cell(
        &self,
        batch: &RecordBatch,
        name: &str,
        row: usize,
        text: bool,
    ) -> anyhow::Result<Option<String>> {
        use arrow_array::cast::AsArray;
        use arrow_schema::DataType;
        let column = batch
            .column_by_name(name)
            .ok_or_else(|| anyhow!("{}: column {name:?} vanished", self.path.display()))?;
        if column.is_null(row) {
            bail!(
                "{} row {}: column {name:?} is null",
                self.path.display(),
                self.record
            );
        }
        let value = match column.data_type() {
            DataType::Utf8 => column.as_string::<i32>().value(row).to_string(),
            DataType::LargeUtf8 => column.as_string::<i64>().value(row).to_string(),
            DataType::Utf8View => column.as_string_view().value(row).to_string(),
            DataType::Int64 if !text => column
                .as_primitive::<arrow_array::types::Int64Type>()
                .value(row)
                .to_string(),
            DataType::Int32 if !text => column
                .as_primitive::<arrow_array::types::Int32Type>()
                .value(row)
                .to_string(),
            DataType::UInt64 if !text => column
                .as_primitive::<arrow_array::types::UInt64Type>()
                .value(row)
                .to_string(),
            DataType::UInt32 if !text => column
                .as_primitive::<arrow_array::types::UInt32Type>()
                .value(row)
                .to_string(),
            other => bail!(
                "{}: column {name:?} has type {other}; expected a string{}",
                self.path.display(),
                if text { "" } else { " or an integer" }
            ),
        };
        Ok(Some(value))
    }

    fn next_row(&mut self) -> anyhow::Result<Option<Row>> {
        loop {
            if let Some(batch) = self.batch.take() {
                if self.next < batch.num_rows() {
                    let i = self.next;
                    self.next += 1;
                    self.record += 1;
                    let text = self
                        .cell(&batch, &self.fields.text, i, true)?
                        .unwrap_or_default();
                    let id = match &self.fields.id {
                        Some(name) => self.cell(&batch, name, i, false)?,
                        None => None,
                    };
                    let document = match &self.fields.document {
                        Some(name) => self.cell(&batch, name, i, false)?,
                        None => None,
                    };
                    self.batch = Some(batch);
                    return Ok(Some(Row {
                        record: self.record,
                        text,
                        id,
                        document,
                    }));
                }
            }
            match self.reader.next() {
                Some(batch) => {
                    self.batch =
                        Some(batch.with_context(|| format!("reading {}", self.path.display()))?);
                    self.next = 0;
                }
                None => return Ok(None),
            }
        }
    }
}

impl Iterator for ParquetRows {
    type Item = anyhow::Result<Row>;
    fn next(&mut self) -> Option<Self::Item> {
        self.next_row().transpose()
    }
}
