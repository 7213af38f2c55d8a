//! The analysts' stream and the aggregate views as Apache Parquet files.
//!
//! Parquet is columnar, typed and compressed: pandas/pyarrow, DuckDB, Spark
//! and Power BI read it far faster than CSV, and without guessing types.
//! Every file written here uses Snappy compression.
//!
//! # The events file
//!
//! [`EventWriter`] streams [`AnalystEvent`]s into one file, one row per
//! event, in row groups of [`DEFAULT_ROW_GROUP_ROWS`] rows (only the current
//! row group is held in memory, so the stream can be of any length). The
//! columns are those of the CSV export ([`crate::CSV_COLUMNS`]), with real
//! types ([`EVENT_SCHEMA`]):
//!
//! | column              | Parquet type                              | null? |
//! |---------------------|-------------------------------------------|-------|
//! | `event_id`          | `BYTE_ARRAY` `STRING` (UUID, hyphenated)  | no    |
//! | `event_type`        | `BYTE_ARRAY` `STRING`                     | no    |
//! | `occurred_at`       | `INT64` `TIMESTAMP(MICROS, UTC)`          | no    |
//! | `recorded_at`       | `INT64` `TIMESTAMP(MICROS, UTC)`          | no    |
//! | `schema_version`    | `INT64`                                   | no    |
//! | `referral_key`      | `BYTE_ARRAY` `STRING` (UUID, hyphenated)  | yes   |
//! | `patient_pseudonym` | `BYTE_ARRAY` `STRING` (64 hex digits)     | yes   |
//! | `age_band`          | `BYTE_ARRAY` `STRING`                     | yes   |
//! | `sex`               | `BYTE_ARRAY` `STRING`                     | yes   |
//! | `ethnicity_code`    | `BYTE_ARRAY` `STRING`                     | yes   |
//! | `imd_decile`        | `INT32` (1 = most deprived)               | yes   |
//! | `practice_ods`      | `BYTE_ARRAY` `STRING`                     | yes   |
//! | `route`             | `BYTE_ARRAY` `STRING`                     | yes   |
//! | `data`              | `BYTE_ARRAY` `JSON` (the analytical fields) | no  |
//!
//! The meaning of each column is that of the field of the same name in
//! [`AnalystEvent`]. Timestamps are instants in UTC with microsecond
//! precision (finer digits, if any, are dropped). The file's key/value
//! metadata carries [`SCHEMA_VERSION_KEY`] = [`ANALYST_SCHEMA_VERSION`].
//!
//! # The view files
//!
//! [`write_table`] writes one aggregate view ([`Table`]) as one file, the
//! columns in the table's order. Each column's type follows its values:
//! whole numbers `INT64`, numbers with a fraction (rates, means, medians)
//! `DOUBLE`, `true`/`false` `BOOLEAN`, text `BYTE_ARRAY` `STRING`. A column
//! that mixes kinds is written as text; a column with no values at all is a
//! text column of nulls. Every column is optional: `null` in the view (a
//! metric with nothing to measure, or suppressed as a small number) is a
//! Parquet null. The key/value metadata carries [`VIEW_KEY`] and
//! [`SPLIT_KEY`].

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parquet::basic::{Compression, LogicalType, Repetition, Type as PhysicalType};
use parquet::data_type::{
    BoolType, ByteArray, ByteArrayType, DataType, DoubleType, Int32Type, Int64Type,
};
use parquet::errors::ParquetError;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use parquet::file::writer::{SerializedFileWriter, SerializedRowGroupWriter};
use parquet::schema::parser::parse_message_type;
use parquet::schema::types::Type;
use serde_json::Value;

use crate::views::Table;
use crate::{ANALYST_SCHEMA_VERSION, AnalystEvent, Error};

/// The Parquet schema of the events file, in the Parquet message syntax.
pub const EVENT_SCHEMA: &str = "message analyst_event {
  required binary event_id (STRING);
  required binary event_type (STRING);
  required int64 occurred_at (TIMESTAMP(MICROS,true));
  required int64 recorded_at (TIMESTAMP(MICROS,true));
  required int64 schema_version;
  optional binary referral_key (STRING);
  optional binary patient_pseudonym (STRING);
  optional binary age_band (STRING);
  optional binary sex (STRING);
  optional binary ethnicity_code (STRING);
  optional int32 imd_decile;
  optional binary practice_ods (STRING);
  optional binary route (STRING);
  required binary data (JSON);
}";

/// Key/value metadata key of the events file: the [`AnalystEvent`] schema
/// version ([`ANALYST_SCHEMA_VERSION`]).
pub const SCHEMA_VERSION_KEY: &str = "mskflow.analyst_schema_version";

/// Key/value metadata key of a view file: the view's code (`waits`, ...).
pub const VIEW_KEY: &str = "mskflow.view";

/// Key/value metadata key of a view file: the split's code (`imd_decile`,
/// ...; `none` when not split).
pub const SPLIT_KEY: &str = "mskflow.split";

/// Rows per row group of the events file unless told otherwise.
pub const DEFAULT_ROW_GROUP_ROWS: usize = 65_536;

type FileWriter = SerializedFileWriter<BufWriter<File>>;

/// The values of one optional column of the current row group, with their
/// definition levels (1 present, 0 null).
#[derive(Debug, Default)]
struct Optional<T> {
    values: Vec<T>,
    levels: Vec<i16>,
}

impl<T> Optional<T> {
    fn push(&mut self, value: Option<T>) {
        match value {
            Some(v) => {
                self.values.push(v);
                self.levels.push(1);
            }
            None => self.levels.push(0),
        }
    }

    fn clear(&mut self) {
        self.values.clear();
        self.levels.clear();
    }
}

/// The current row group of the events file, column by column.
#[derive(Debug, Default)]
struct EventColumns {
    rows: usize,
    event_id: Vec<ByteArray>,
    event_type: Vec<ByteArray>,
    occurred_at: Vec<i64>,
    recorded_at: Vec<i64>,
    schema_version: Vec<i64>,
    referral_key: Optional<ByteArray>,
    patient_pseudonym: Optional<ByteArray>,
    age_band: Optional<ByteArray>,
    sex: Optional<ByteArray>,
    ethnicity_code: Optional<ByteArray>,
    imd_decile: Optional<i32>,
    practice_ods: Optional<ByteArray>,
    route: Optional<ByteArray>,
    data: Vec<ByteArray>,
}

fn text(s: &str) -> ByteArray {
    ByteArray::from(s.as_bytes().to_vec())
}

fn opt_text(s: Option<&String>) -> Option<ByteArray> {
    s.map(|s| text(s))
}

impl EventColumns {
    fn push(&mut self, e: &AnalystEvent) {
        self.event_id.push(text(&e.event_id.to_string()));
        self.event_type.push(text(&e.event_type));
        self.occurred_at.push(e.occurred_at.timestamp_micros());
        self.recorded_at.push(e.recorded_at.timestamp_micros());
        self.schema_version.push(i64::from(e.schema_version));
        self.referral_key
            .push(e.referral_key.map(|k| text(&k.to_string())));
        self.patient_pseudonym
            .push(opt_text(e.patient_pseudonym.as_ref()));
        self.age_band.push(opt_text(e.age_band.as_ref()));
        self.sex.push(opt_text(e.sex.as_ref()));
        self.ethnicity_code
            .push(opt_text(e.ethnicity_code.as_ref()));
        self.imd_decile.push(e.imd_decile.map(i32::from));
        self.practice_ods.push(opt_text(e.practice_ods.as_ref()));
        self.route.push(opt_text(e.route.as_ref()));
        self.data.push(text(&e.data.to_string()));
        self.rows += 1;
    }

    /// Write the buffered rows as one row group, in schema order.
    fn write(&self, file: &mut FileWriter) -> Result<(), ParquetError> {
        let mut group = file.next_row_group()?;
        column::<ByteArrayType>(&mut group, &self.event_id, None)?;
        column::<ByteArrayType>(&mut group, &self.event_type, None)?;
        column::<Int64Type>(&mut group, &self.occurred_at, None)?;
        column::<Int64Type>(&mut group, &self.recorded_at, None)?;
        column::<Int64Type>(&mut group, &self.schema_version, None)?;
        optional::<ByteArrayType>(&mut group, &self.referral_key)?;
        optional::<ByteArrayType>(&mut group, &self.patient_pseudonym)?;
        optional::<ByteArrayType>(&mut group, &self.age_band)?;
        optional::<ByteArrayType>(&mut group, &self.sex)?;
        optional::<ByteArrayType>(&mut group, &self.ethnicity_code)?;
        optional::<Int32Type>(&mut group, &self.imd_decile)?;
        optional::<ByteArrayType>(&mut group, &self.practice_ods)?;
        optional::<ByteArrayType>(&mut group, &self.route)?;
        column::<ByteArrayType>(&mut group, &self.data, None)?;
        group.close()?;
        Ok(())
    }

    /// Empty the buffers, keeping their capacity for the next row group.
    fn clear(&mut self) {
        self.rows = 0;
        self.event_id.clear();
        self.event_type.clear();
        self.occurred_at.clear();
        self.recorded_at.clear();
        self.schema_version.clear();
        self.referral_key.clear();
        self.patient_pseudonym.clear();
        self.age_band.clear();
        self.sex.clear();
        self.ethnicity_code.clear();
        self.imd_decile.clear();
        self.practice_ods.clear();
        self.route.clear();
        self.data.clear();
    }
}

/// Write the next column of a row group. The caller keeps the schema and
/// the column order in step.
fn column<T: DataType>(
    group: &mut SerializedRowGroupWriter<'_, BufWriter<File>>,
    values: &[T::T],
    levels: Option<&[i16]>,
) -> Result<(), ParquetError> {
    let mut writer = group
        .next_column()?
        .ok_or_else(|| ParquetError::General("more columns written than in the schema".into()))?;
    writer.typed::<T>().write_batch(values, levels, None)?;
    writer.close()
}

fn optional<T: DataType>(
    group: &mut SerializedRowGroupWriter<'_, BufWriter<File>>,
    values: &Optional<T::T>,
) -> Result<(), ParquetError> {
    column::<T>(group, &values.values, Some(&values.levels))
}

fn properties(row_group_rows: usize, metadata: Vec<KeyValue>) -> Arc<WriterProperties> {
    Arc::new(
        WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_max_row_group_row_count(Some(row_group_rows.max(1)))
            .set_key_value_metadata(Some(metadata))
            .build(),
    )
}

fn create_file(
    path: &Path,
    schema: Type,
    props: Arc<WriterProperties>,
) -> Result<FileWriter, Error> {
    let file = File::create(path).map_err(|source| Error::ParquetIo {
        path: path.to_owned(),
        source,
    })?;
    SerializedFileWriter::new(BufWriter::new(file), Arc::new(schema), props).map_err(|source| {
        Error::Parquet {
            path: path.to_owned(),
            source,
        }
    })
}

/// Write the footer and flush the file to the operating system.
fn close_file(path: &Path, writer: FileWriter) -> Result<(), Error> {
    let buffered = writer.into_inner().map_err(|source| Error::Parquet {
        path: path.to_owned(),
        source,
    })?;
    let mut file = buffered.into_inner().map_err(|e| Error::ParquetIo {
        path: path.to_owned(),
        source: e.into_error(),
    })?;
    file.flush().map_err(|source| Error::ParquetIo {
        path: path.to_owned(),
        source,
    })
}

/// A streaming writer of the events file (see the [module
/// documentation](self) for its schema).
///
/// Rows are buffered and written a row group at a time, so memory stays
/// bounded by one row group whatever the number of events. Call
/// [`EventWriter::finish`] at the end: a writer dropped without it leaves an
/// incomplete file that readers reject.
#[derive(Debug)]
pub struct EventWriter {
    path: PathBuf,
    writer: FileWriter,
    buffer: EventColumns,
    row_group_rows: usize,
    written: u64,
}

impl EventWriter {
    /// Create (or truncate) the file at `path`, with row groups of
    /// [`DEFAULT_ROW_GROUP_ROWS`] rows.
    pub fn create(path: impl AsRef<Path>) -> Result<Self, Error> {
        Self::with_row_group_rows(path, DEFAULT_ROW_GROUP_ROWS)
    }

    /// As [`EventWriter::create`], with row groups of `row_group_rows` rows
    /// (at least 1).
    pub fn with_row_group_rows(
        path: impl AsRef<Path>,
        row_group_rows: usize,
    ) -> Result<Self, Error> {
        let path = path.as_ref().to_owned();
        let row_group_rows = row_group_rows.max(1);
        let schema = parse_message_type(EVENT_SCHEMA).map_err(|source| Error::Parquet {
            path: path.clone(),
            source,
        })?;
        let props = properties(
            row_group_rows,
            vec![KeyValue::new(
                SCHEMA_VERSION_KEY.to_owned(),
                ANALYST_SCHEMA_VERSION.to_string(),
            )],
        );
        let writer = create_file(&path, schema, props)?;
        Ok(Self {
            path,
            writer,
            buffer: EventColumns::default(),
            row_group_rows,
            written: 0,
        })
    }

    /// The file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Add one event; a full row group is written out.
    pub fn write(&mut self, event: &AnalystEvent) -> Result<(), Error> {
        self.buffer.push(event);
        if self.buffer.rows >= self.row_group_rows {
            self.flush_row_group()?;
        }
        Ok(())
    }

    fn flush_row_group(&mut self) -> Result<(), Error> {
        if self.buffer.rows == 0 {
            return Ok(());
        }
        self.buffer
            .write(&mut self.writer)
            .map_err(|source| Error::Parquet {
                path: self.path.clone(),
                source,
            })?;
        self.written += self.buffer.rows as u64;
        self.buffer.clear();
        Ok(())
    }

    /// Write the last row group and the footer; returns the number of rows
    /// (events) in the file.
    pub fn finish(mut self) -> Result<u64, Error> {
        self.flush_row_group()?;
        close_file(&self.path, self.writer)?;
        Ok(self.written)
    }
}

/// The Parquet type a view column is written as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// No values seen (yet).
    Empty,
    Bool,
    Int,
    Double,
    Text,
}

impl Kind {
    /// The kind of a column holding values of kind `self` and `value`.
    fn with(self, value: &Value) -> Kind {
        let seen = match value {
            Value::Null => return self,
            Value::Bool(_) => Kind::Bool,
            Value::Number(n) if n.is_i64() => Kind::Int,
            Value::Number(_) => Kind::Double,
            Value::String(_) | Value::Array(_) | Value::Object(_) => Kind::Text,
        };
        match (self, seen) {
            (Kind::Empty, k) => k,
            (a, b) if a == b => a,
            (Kind::Int, Kind::Double) | (Kind::Double, Kind::Int) => Kind::Double,
            _ => Kind::Text,
        }
    }

    fn of_column(table: &Table, name: &str) -> Kind {
        table
            .rows
            .iter()
            .filter_map(|row| row.get(name))
            .fold(Kind::Empty, Kind::with)
    }
}

/// The text of a value in a text column: strings as they are, anything else
/// as JSON.
fn value_text(value: &Value) -> ByteArray {
    match value {
        Value::String(s) => text(s),
        other => text(&other.to_string()),
    }
}

/// One view column's values and definition levels, typed.
#[derive(Debug)]
enum ViewColumn {
    Bool(Optional<bool>),
    Int(Optional<i64>),
    Double(Optional<f64>),
    Text(Optional<ByteArray>),
}

impl ViewColumn {
    fn build(table: &Table, name: &str, kind: Kind) -> ViewColumn {
        let cells = table
            .rows
            .iter()
            .map(|row| row.get(name).filter(|v| !v.is_null()));
        match kind {
            Kind::Bool => {
                let mut col = Optional::default();
                cells.for_each(|v| col.push(v.and_then(Value::as_bool)));
                ViewColumn::Bool(col)
            }
            Kind::Int => {
                let mut col = Optional::default();
                cells.for_each(|v| col.push(v.and_then(Value::as_i64)));
                ViewColumn::Int(col)
            }
            Kind::Double => {
                let mut col = Optional::default();
                cells.for_each(|v| col.push(v.and_then(Value::as_f64)));
                ViewColumn::Double(col)
            }
            Kind::Empty | Kind::Text => {
                let mut col = Optional::default();
                cells.for_each(|v| col.push(v.map(value_text)));
                ViewColumn::Text(col)
            }
        }
    }

    fn write(
        &self,
        group: &mut SerializedRowGroupWriter<'_, BufWriter<File>>,
    ) -> Result<(), ParquetError> {
        match self {
            ViewColumn::Bool(c) => optional::<BoolType>(group, c),
            ViewColumn::Int(c) => optional::<Int64Type>(group, c),
            ViewColumn::Double(c) => optional::<DoubleType>(group, c),
            ViewColumn::Text(c) => optional::<ByteArrayType>(group, c),
        }
    }
}

fn view_field(name: &str, kind: Kind) -> Result<Type, ParquetError> {
    let (physical, logical) = match kind {
        Kind::Bool => (PhysicalType::BOOLEAN, None),
        Kind::Int => (PhysicalType::INT64, None),
        Kind::Double => (PhysicalType::DOUBLE, None),
        Kind::Empty | Kind::Text => (PhysicalType::BYTE_ARRAY, Some(LogicalType::String)),
    };
    Type::primitive_type_builder(name, physical)
        .with_repetition(Repetition::OPTIONAL)
        .with_logical_type(logical)
        .build()
}

/// Write one aggregate view as a Parquet file at `path` (created or
/// truncated); returns the number of rows. See the [module
/// documentation](self) for how column types are chosen.
pub fn write_table(path: impl AsRef<Path>, table: &Table) -> Result<u64, Error> {
    let path = path.as_ref();
    let parquet_err = |source| Error::Parquet {
        path: path.to_owned(),
        source,
    };
    let kinds: Vec<Kind> = table
        .columns
        .iter()
        .map(|c| Kind::of_column(table, c))
        .collect();
    let fields = table
        .columns
        .iter()
        .zip(&kinds)
        .map(|(name, kind)| view_field(name, *kind).map(Arc::new))
        .collect::<Result<Vec<_>, _>>()
        .map_err(parquet_err)?;
    let schema = Type::group_type_builder(&table.view)
        .with_fields(fields)
        .build()
        .map_err(parquet_err)?;
    let rows = table.rows.len();
    let props = properties(
        rows.max(1),
        vec![
            KeyValue::new(VIEW_KEY.to_owned(), table.view.clone()),
            KeyValue::new(SPLIT_KEY.to_owned(), table.split.clone()),
        ],
    );
    let mut writer = create_file(path, schema, props)?;
    if rows > 0 {
        let columns: Vec<ViewColumn> = table
            .columns
            .iter()
            .zip(&kinds)
            .map(|(name, kind)| ViewColumn::build(table, name, *kind))
            .collect();
        let mut write_group = || -> Result<(), ParquetError> {
            let mut group = writer.next_row_group()?;
            for c in &columns {
                c.write(&mut group)?;
            }
            group.close()?;
            Ok(())
        };
        write_group().map_err(parquet_err)?;
    }
    close_file(path, writer)?;
    Ok(rows as u64)
}

#[cfg(test)]
#[path = "parquet_file_tests.rs"]
mod tests;
