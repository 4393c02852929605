//! Output sinks of `jina-embed embed`: JSONL, `.npy` and Parquet. Every sink is valid after each
//! [`Sink::commit`] and after [`Sink::finish`], and can be reopened to resume: it reports how many
//! rows it durably holds, and the caller skips that many input rows.
//!
//! * JSONL: one object per line. Resume counts complete lines; a partial last line (a hard kill
//!   in the middle of a write) is cut off.
//! * `.npy`: a 128-byte header whose shape is rewritten after every committed batch, then the
//!   rows. The header only ever counts rows already written, so the file loads with numpy at any
//!   moment, even after a hard kill; resume cuts any bytes past the header's count.
//! * Parquet: rows go to `<out>.parts/part-NNNNN.parquet`, each written to a temporary name and
//!   renamed when complete (every 8192 rows and at every stop). Finishing, Ctrl-C included,
//!   merges the parts into `<out>` (again through a temporary name) and removes the folder. A
//!   resume moves a finished `<out>` back in as part 0, drops an incomplete part, and goes on.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context};
use arrow_array::builder::{
    FixedSizeListBuilder, Float32Builder, Int8Builder, StringBuilder, UInt64Builder, UInt8Builder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use clap::ValueEnum;
use jina_engine::output::{encode, pack_bits};
use jina_engine::{EmbeddingType, Encoded};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// From the file name: .npy, .parquet; anything else (and stdout) is JSONL.
    Auto,
    /// One JSON object per line: {"index", "id" (with --id-field), "embedding"}.
    Jsonl,
    /// A NumPy array: float32 (rows × dimensions), or packed bits as uint8 (ubinary) / int8
    /// (binary) (rows × dimensions/8).
    Npy,
    /// Apache Parquet: columns index (uint64), id (string, with --id-field), embedding
    /// (fixed-size list of float32, uint8 or int8).
    Parquet,
}

impl OutputFormat {
    pub fn detect(self, path: &Path) -> OutputFormat {
        if self != OutputFormat::Auto {
            return self;
        }
        match path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("npy") => OutputFormat::Npy,
            Some("parquet" | "pq") => OutputFormat::Parquet,
            _ => OutputFormat::Jsonl,
        }
    }
}

/// What to do with an output file that already exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Existing {
    /// Refuse (the default: never clobber a file silently).
    Refuse,
    /// Replace it.
    Overwrite,
    /// Keep its rows and append.
    Resume,
}

/// The shape of what is written.
#[derive(Clone, Debug)]
pub struct Spec {
    pub path: PathBuf,
    pub format: OutputFormat,
    pub ty: EmbeddingType,
    /// Values per vector (after `--dimensions`).
    pub dimensions: usize,
    /// Whether rows carry an id.
    pub with_id: bool,
}

/// One embedded row.
pub struct OutRow<'a> {
    pub index: u64,
    pub id: Option<&'a str>,
    pub vector: &'a [f32],
}

pub trait Sink {
    /// Appends rows (not yet durable).
    fn write(&mut self, rows: &[OutRow<'_>]) -> anyhow::Result<()>;
    /// Makes everything written so far durable and the file valid.
    fn commit(&mut self) -> anyhow::Result<()>;
    /// Drops rows after the first `rows` (resume of a document cut by a hard kill).
    fn rewind(&mut self, rows: u64) -> anyhow::Result<()>;
    /// Commits and closes; the output is complete.
    fn finish(self: Box<Self>) -> anyhow::Result<()>;
}

/// Opens the output; returns the sink and the number of rows it already holds (0 unless
/// resuming).
pub fn open(spec: &Spec, existing: Existing) -> anyhow::Result<(Box<dyn Sink>, u64)> {
    let format = spec.format.detect(&spec.path);
    let stdout = spec.path == Path::new("-");
    if stdout && format != OutputFormat::Jsonl {
        bail!("{format:?} output needs a file (--output FILE)");
    }
    if stdout && existing == Existing::Resume {
        bail!("--resume needs an output file (--output FILE), not stdout");
    }
    if format != OutputFormat::Jsonl && spec.ty == EmbeddingType::Base64 {
        bail!("--embedding-type base64 is a text encoding for JSONL; .npy and Parquet store float32 directly: use --embedding-type float");
    }
    if format == OutputFormat::Npy && spec.with_id {
        bail!("a .npy file holds only the vectors (row i = input row i); --id-field needs JSONL or Parquet output");
    }
    if !stdout {
        let parts = parts_dir(&spec.path);
        let present = spec.path.exists() || (format == OutputFormat::Parquet && parts.exists());
        if present && existing == Existing::Refuse {
            bail!(
                "{} already exists; pass --resume to continue it (rows already written are skipped) or --overwrite to replace it",
                spec.path.display()
            );
        }
    }
    match format {
        OutputFormat::Npy => {
            Npy::open(spec, existing).map(|(s, n)| (Box::new(s) as Box<dyn Sink>, n))
        }
        OutputFormat::Parquet => {
            Parquet::open(spec, existing).map(|(s, n)| (Box::new(s) as Box<dyn Sink>, n))
        }
        _ if stdout => Ok((
            Box::new(Jsonl {
                out: Box::new(BufWriter::new(io::stdout())),
                path: None,
                ty: spec.ty,
                rows: 0,
            }),
            0,
        )),
        _ => Jsonl::open(spec, existing).map(|(s, n)| (Box::new(s) as Box<dyn Sink>, n)),
    }
}

// ---------------------------------------------------------------- JSONL

struct Jsonl {
    out: Box<dyn Write>,
    path: Option<PathBuf>,
    ty: EmbeddingType,
    rows: u64,
}

#[derive(Serialize)]
struct Line<'a> {
    index: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    embedding: Encoded,
}

impl Jsonl {
    fn open(spec: &Spec, existing: Existing) -> anyhow::Result<(Jsonl, u64)> {
        let path = &spec.path;
        let rows = if existing == Existing::Resume && path.exists() {
            keep_complete_lines(path, None)?
        } else {
            0
        };
        let file = if rows > 0 || (existing == Existing::Resume && path.exists()) {
            OpenOptions::new().append(true).open(path)
        } else {
            File::create(path)
        }
        .with_context(|| format!("opening {} for writing", path.display()))?;
        Ok((
            Jsonl {
                out: Box::new(BufWriter::new(file)),
                path: Some(path.clone()),
                ty: spec.ty,
                rows,
            },
            rows,
        ))
    }
}

/// Cuts `path` after its last complete line (or after line `limit`), checks that each kept line
/// is JSON, and returns the number of lines kept.
fn keep_complete_lines(path: &Path, limit: Option<u64>) -> anyhow::Result<u64> {
    let mut reader =
        BufReader::new(File::open(path).with_context(|| format!("opening {}", path.display()))?);
    let (mut lines, mut keep, mut line) = (0u64, 0u64, Vec::new());
    loop {
        if limit.is_some_and(|l| lines >= l) {
            break;
        }
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 || line.last() != Some(&b'\n') {
            break;
        }
        let value: serde_json::Value = serde_json::from_slice(&line).with_context(|| {
            format!(
                "cannot resume {}: line {} is not JSON",
                path.display(),
                lines + 1
            )
        })?;
        if value.get("index").and_then(|v| v.as_u64()) != Some(lines) {
            bail!("cannot resume {}: line {} has index {} but {lines} was expected (not an output of this tool, or reordered)", path.display(), lines + 1, value["index"]);
        }
        lines += 1;
        keep += n as u64;
    }
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    file.set_len(keep)
        .with_context(|| format!("truncating {}", path.display()))?;
    Ok(lines)
}

impl Sink for Jsonl {
    fn write(&mut self, rows: &[OutRow<'_>]) -> anyhow::Result<()> {
        for row in rows {
            serde_json::to_writer(
                &mut self.out,
                &Line {
                    index: row.index,
                    id: row.id,
                    embedding: encode(row.vector, self.ty),
                },
            )?;
            self.out.write_all(b"\n")?;
        }
        self.rows += rows.len() as u64;
        Ok(())
    }
    fn commit(&mut self) -> anyhow::Result<()> {
        self.out.flush()?;
        Ok(())
    }
    fn rewind(&mut self, rows: u64) -> anyhow::Result<()> {
        self.out.flush()?;
        let Some(path) = &self.path else {
            bail!("cannot rewind stdout")
        };
        let kept = keep_complete_lines(path, Some(rows))?;
        if kept != rows {
            bail!("{} holds {kept} rows, fewer than {rows}", path.display());
        }
        self.rows = rows;
        Ok(())
    }
    fn finish(mut self: Box<Self>) -> anyhow::Result<()> {
        self.out.flush()?;
        Ok(())
    }
}

// ---------------------------------------------------------------- .npy

/// Total header size (magic, version, length and the padded dict): fixed, so the shape can be
/// rewritten in place.
const NPY_HEADER: usize = 128;

struct Npy {
    path: PathBuf,
    file: BufWriter<File>,
    descr: &'static str,
    row_bytes: usize,
    cols: usize,
    rows: u64,
}

fn npy_layout(spec: &Spec) -> (&'static str, usize) {
    match spec.ty {
        EmbeddingType::Float | EmbeddingType::Base64 => ("<f4", spec.dimensions),
        EmbeddingType::Ubinary => ("|u1", spec.dimensions.div_ceil(8)),
        EmbeddingType::Binary => ("|i1", spec.dimensions.div_ceil(8)),
    }
}

/// The 128-byte `.npy` (version 1.0) header of a C-order 2-D array.
pub fn npy_header(descr: &str, rows: u64, cols: usize) -> Vec<u8> {
    let dict =
        format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': ({rows}, {cols}), }}");
    let mut header = b"\x93NUMPY\x01\x00".to_vec();
    header.extend_from_slice(&((NPY_HEADER - 10) as u16).to_le_bytes());
    header.extend_from_slice(dict.as_bytes());
    header.resize(NPY_HEADER - 1, b' ');
    header.push(b'\n');
    header
}

/// Reads the header written by [`npy_header`]: (descr, rows, cols).
fn parse_npy_header(path: &Path, bytes: &[u8]) -> anyhow::Result<(String, u64, usize)> {
    let bad = |what: &str| {
        anyhow!(
            "cannot resume {}: {what} (not a .npy file written by jina-embed)",
            path.display()
        )
    };
    if bytes.len() < NPY_HEADER || &bytes[..8] != b"\x93NUMPY\x01\x00" {
        return Err(bad("no NumPy 1.0 header"));
    }
    if u16::from_le_bytes([bytes[8], bytes[9]]) as usize != NPY_HEADER - 10 {
        return Err(bad("a header of another length"));
    }
    let dict = std::str::from_utf8(&bytes[10..NPY_HEADER])
        .map_err(|_| bad("a header that is not text"))?;
    let field = |key: &str| -> Option<&str> {
        let start = dict.find(key)? + key.len();
        let rest = &dict[start..];
        Some(&rest[..rest.find(['\'', ')'])?])
    };
    let descr = field("'descr': '")
        .ok_or_else(|| bad("no descr"))?
        .to_string();
    let shape = field("'shape': (").ok_or_else(|| bad("no shape"))?;
    let (rows, cols) = shape
        .split_once(',')
        .ok_or_else(|| bad("a shape that is not 2-D"))?;
    let rows = rows
        .trim()
        .parse()
        .map_err(|_| bad("an unreadable row count"))?;
    let cols = cols
        .trim()
        .parse()
        .map_err(|_| bad("an unreadable column count"))?;
    Ok((descr, rows, cols))
}

impl Npy {
    fn open(spec: &Spec, existing: Existing) -> anyhow::Result<(Npy, u64)> {
        let (descr, cols) = npy_layout(spec);
        let row_bytes = cols * if descr == "<f4" { 4 } else { 1 };
        let path = spec.path.clone();
        let shown = path.display().to_string();
        if existing == Existing::Resume && path.exists() {
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .with_context(|| format!("opening {shown}"))?;
            let mut header = vec![0u8; NPY_HEADER];
            file.read_exact(&mut header)
                .with_context(|| format!("cannot resume {shown}: shorter than a .npy header"))?;
            let (found_descr, rows, found_cols) = parse_npy_header(&path, &header)?;
            if found_descr != descr || found_cols != cols {
                bail!("cannot resume {shown}: it holds {found_descr} rows of {found_cols} values, this run writes {descr} rows of {cols} (check --embedding-type and --dimensions)");
            }
            let len = (NPY_HEADER + rows as usize * row_bytes) as u64;
            if file.metadata()?.len() < len {
                bail!(
                    "cannot resume {shown}: its header counts {rows} rows but the file is shorter"
                );
            }
            file.set_len(len)
                .with_context(|| format!("truncating {shown}"))?;
            file.seek(SeekFrom::End(0))?;
            return Ok((
                Npy {
                    path,
                    file: BufWriter::new(file),
                    descr,
                    row_bytes,
                    cols,
                    rows,
                },
                rows,
            ));
        }
        let mut file = File::create(&path).with_context(|| format!("creating {shown}"))?;
        file.write_all(&npy_header(descr, 0, cols))
            .with_context(|| format!("writing {shown}"))?;
        Ok((
            Npy {
                path,
                file: BufWriter::new(file),
                descr,
                row_bytes,
                cols,
                rows: 0,
            },
            0,
        ))
    }
}

impl Sink for Npy {
    fn write(&mut self, rows: &[OutRow<'_>]) -> anyhow::Result<()> {
        for row in rows {
            let bytes: Vec<u8> = match self.descr {
                "<f4" => row.vector.iter().flat_map(|x| x.to_le_bytes()).collect(),
                "|u1" => pack_bits(row.vector),
                _ => pack_bits(row.vector)
                    .into_iter()
                    .map(|b| (b as i16 - 128) as i8 as u8)
                    .collect(),
            };
            if bytes.len() != self.row_bytes {
                bail!(
                    "row {} has {} bytes, expected {}",
                    row.index,
                    bytes.len(),
                    self.row_bytes
                );
            }
            self.file
                .write_all(&bytes)
                .with_context(|| format!("writing {}", self.path.display()))?;
        }
        self.rows += rows.len() as u64;
        Ok(())
    }
    fn commit(&mut self) -> anyhow::Result<()> {
        // Data first, then the header that counts it.
        self.file
            .flush()
            .with_context(|| format!("writing {}", self.path.display()))?;
        let file = self.file.get_mut();
        file.seek(SeekFrom::Start(0))?;
        file.write_all(&npy_header(self.descr, self.rows, self.cols))?;
        file.seek(SeekFrom::End(0))?;
        Ok(())
    }
    fn rewind(&mut self, rows: u64) -> anyhow::Result<()> {
        self.commit()?;
        self.rows = rows.min(self.rows);
        self.commit()?;
        self.file
            .get_mut()
            .set_len((NPY_HEADER + self.rows as usize * self.row_bytes) as u64)?;
        self.file.get_mut().seek(SeekFrom::End(0))?;
        Ok(())
    }
    fn finish(mut self: Box<Self>) -> anyhow::Result<()> {
        self.commit()?;
        self.file
            .get_mut()
            .sync_all()
            .with_context(|| format!("syncing {}", self.path.display()))?;
        Ok(())
    }
}

// ---------------------------------------------------------------- Parquet

/// Rows per part file.
const PART_ROWS: usize = 8192;

fn parts_dir(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".parts");
    path.with_file_name(name)
}

fn part_name(n: usize) -> String {
    format!("part-{n:05}.parquet")
}

struct Parquet {
    path: PathBuf,
    parts: PathBuf,
    schema: SchemaRef,
    ty: EmbeddingType,
    width: usize,
    next_part: usize,
    buffered: Vec<(u64, Option<String>, Vec<f32>)>,
    durable: u64,
}

fn parquet_schema(spec: &Spec) -> (SchemaRef, usize) {
    let (item, width) = match spec.ty {
        EmbeddingType::Float | EmbeddingType::Base64 => (DataType::Float32, spec.dimensions),
        EmbeddingType::Ubinary => (DataType::UInt8, spec.dimensions.div_ceil(8)),
        EmbeddingType::Binary => (DataType::Int8, spec.dimensions.div_ceil(8)),
    };
    let mut fields = vec![Field::new("index", DataType::UInt64, false)];
    if spec.with_id {
        fields.push(Field::new("id", DataType::Utf8, false));
    }
    let list = DataType::FixedSizeList(Arc::new(Field::new("item", item, true)), width as i32);
    fields.push(Field::new("embedding", list, false));
    (Arc::new(Schema::new(fields)), width)
}

/// Rows of a finished Parquet file, after checking that its columns are `schema`'s.
fn parquet_rows(path: &Path, schema: &SchemaRef) -> anyhow::Result<u64> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .with_context(|| format!("{} is not a complete Parquet file", path.display()))?;
    let found: Vec<(String, DataType)> = builder
        .schema()
        .fields()
        .iter()
        .map(|f| (f.name().clone(), f.data_type().clone()))
        .collect();
    let want: Vec<(String, DataType)> = schema
        .fields()
        .iter()
        .map(|f| (f.name().clone(), f.data_type().clone()))
        .collect();
    if found != want {
        bail!("cannot resume {}: its columns are {found:?}, this run writes {want:?} (check --embedding-type, --dimensions and --id-field)", path.display());
    }
    Ok(builder.metadata().file_metadata().num_rows().max(0) as u64)
}

impl Parquet {
    fn open(spec: &Spec, existing: Existing) -> anyhow::Result<(Parquet, u64)> {
        let (schema, width) = parquet_schema(spec);
        let path = spec.path.clone();
        let parts = parts_dir(&path);
        if existing != Existing::Resume {
            if parts.exists() {
                fs::remove_dir_all(&parts)
                    .with_context(|| format!("removing {}", parts.display()))?;
            }
            if path.exists() {
                fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
            }
        }
        if path.exists() && parts.exists() {
            // A merge finished but the folder was not removed yet: the file holds every part.
            fs::remove_dir_all(&parts).with_context(|| format!("removing {}", parts.display()))?;
        }
        fs::create_dir_all(&parts).with_context(|| format!("creating {}", parts.display()))?;
        if path.exists() {
            parquet_rows(&path, &schema)?;
            fs::rename(&path, parts.join(part_name(0)))
                .with_context(|| format!("moving {} into {}", path.display(), parts.display()))?;
        }
        let mut durable = 0;
        let mut next_part = 0;
        let mut names: Vec<String> = fs::read_dir(&parts)
            .with_context(|| format!("listing {}", parts.display()))?
            .filter_map(|e| e.ok().and_then(|e| e.file_name().into_string().ok()))
            .collect();
        names.sort();
        for name in names {
            let file = parts.join(&name);
            if name == part_name(next_part) {
                durable += parquet_rows(&file, &schema)?;
                next_part += 1;
            } else {
                // Temporary files of an interrupted part, or parts after a gap.
                fs::remove_file(&file).with_context(|| format!("removing {}", file.display()))?;
            }
        }
        Ok((
            Parquet {
                path,
                parts,
                schema,
                ty: spec.ty,
                width,
                next_part,
                buffered: Vec::new(),
                durable,
            },
            durable,
        ))
    }

    fn batch(&self, rows: &[(u64, Option<String>, Vec<f32>)]) -> anyhow::Result<RecordBatch> {
        let mut index = UInt64Builder::with_capacity(rows.len());
        let mut ids = StringBuilder::new();
        for (i, id, _) in rows {
            index.append_value(*i);
            ids.append_value(id.as_deref().unwrap_or_default());
        }
        let embedding: ArrayRef = match self.ty {
            EmbeddingType::Float | EmbeddingType::Base64 => {
                let mut b = FixedSizeListBuilder::with_capacity(
                    Float32Builder::new(),
                    self.width as i32,
                    rows.len(),
                );
                for (_, _, v) in rows {
                    b.values().append_slice(v);
                    b.append(true);
                }
                Arc::new(b.finish())
            }
            EmbeddingType::Ubinary => {
                let mut b = FixedSizeListBuilder::with_capacity(
                    UInt8Builder::new(),
                    self.width as i32,
                    rows.len(),
                );
                for (_, _, v) in rows {
                    b.values().append_slice(&pack_bits(v));
                    b.append(true);
                }
                Arc::new(b.finish())
            }
            EmbeddingType::Binary => {
                let mut b = FixedSizeListBuilder::with_capacity(
                    Int8Builder::new(),
                    self.width as i32,
                    rows.len(),
                );
                for (_, _, v) in rows {
                    let bytes: Vec<i8> = pack_bits(v)
                        .into_iter()
                        .map(|b| (b as i16 - 128) as i8)
                        .collect();
                    b.values().append_slice(&bytes);
                    b.append(true);
                }
                Arc::new(b.finish())
            }
        };
        let mut columns: Vec<ArrayRef> = vec![Arc::new(index.finish())];
        if self.schema.fields().len() == 3 {
            columns.push(Arc::new(ids.finish()));
        }
        columns.push(embedding);
        Ok(RecordBatch::try_new(self.schema.clone(), columns)?)
    }

    /// Writes the buffered rows as the next part (temporary name, then rename).
    fn flush_part(&mut self) -> anyhow::Result<()> {
        if self.buffered.is_empty() {
            return Ok(());
        }
        let batch = self.batch(&self.buffered)?;
        let name = part_name(self.next_part);
        let tmp = self.parts.join(format!("{name}.tmp"));
        let file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let mut writer = ArrowWriter::try_new(file, self.schema.clone(), None)?;
        writer.write(&batch)?;
        writer
            .close()
            .with_context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, self.parts.join(&name))
            .with_context(|| format!("renaming {}", tmp.display()))?;
        self.durable += self.buffered.len() as u64;
        self.buffered.clear();
        self.next_part += 1;
        Ok(())
    }
}

impl Sink for Parquet {
    fn write(&mut self, rows: &[OutRow<'_>]) -> anyhow::Result<()> {
        for row in rows {
            self.buffered
                .push((row.index, row.id.map(str::to_string), row.vector.to_vec()));
        }
        if self.buffered.len() >= PART_ROWS {
            self.flush_part()?;
        }
        Ok(())
    }
    fn commit(&mut self) -> anyhow::Result<()> {
        // Parts are written every PART_ROWS rows; smaller ones only at the end.
        Ok(())
    }
    fn rewind(&mut self, rows: u64) -> anyhow::Result<()> {
        // Parts are cut at batch boundaries, which are document boundaries: nothing to cut.
        if rows != self.durable + self.buffered.len() as u64 {
            bail!("{} cannot be cut back to {rows} rows", self.parts.display());
        }
        Ok(())
    }
    fn finish(mut self: Box<Self>) -> anyhow::Result<()> {
        self.flush_part()?;
        let mut name = self.path.file_name().unwrap_or_default().to_os_string();
        name.push(".tmp");
        let tmp = self.path.with_file_name(name);
        let file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let mut writer = ArrowWriter::try_new(file, self.schema.clone(), None)?;
        for n in 0..self.next_part {
            let part = self.parts.join(part_name(n));
            let reader = ParquetRecordBatchReaderBuilder::try_new(
                File::open(&part).with_context(|| format!("opening {}", part.display()))?,
            )?
            .build()?;
            for batch in reader {
                writer.write(&batch.with_context(|| format!("reading {}", part.display()))?)?;
            }
        }
        writer
            .close()
            .with_context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, &self.path)
            .with_context(|| format!("renaming {} to {}", tmp.display(), self.path.display()))?;
        fs::remove_dir_all(&self.parts)
            .with_context(|| format!("removing {}", self.parts.display()))?;
        Ok(())
    }
}
