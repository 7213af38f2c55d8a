#![allow(
    clippy::unwrap_used,
    reason = "tests fail loudly on anything unexpected"
)]

use std::error::Error as _;
use std::fs::File;
use std::path::Path;

use chrono::{DateTime, Duration, TimeZone, Utc};
use parquet::basic::{LogicalType, Repetition, TimeUnit, Type as PhysicalType};
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::*;
use crate::views::Table;

type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

/// A row as the reader returns it: column names and values.
type Row = Vec<(String, Field)>;

const SEXES: &[&str] = &["male", "female", "other", "unknown"];
const BANDS: &[&str] = &["0-15", "16-24", "25-34", "45-54", "85+"];

/// The `i`th generated event: every optional field is absent on some rows,
/// in different patterns so that no two columns have the same nulls.
fn event(i: usize) -> AnalystEvent {
    let n = i as u128;
    let base: DateTime<Utc> = Utc.with_ymd_and_hms(2026, 3, 1, 8, 30, 0).unwrap();
    let occurred_at = base + Duration::microseconds(i as i64 * 7_919_123);
    let some = |every: usize, s: String| (!i.is_multiple_of(every)).then_some(s);
    AnalystEvent {
        event_id: Uuid::from_u128(0x5eed_0000_0000_4000_8000_0000_0000_0000 + n),
        event_type: ["ReferralReceived", "ReferralTriaged", "SlotPublished"][i % 3].to_owned(),
        occurred_at,
        recorded_at: occurred_at + Duration::microseconds(1_500 + i as i64),
        schema_version: 1 + (i % 2) as u32,
        referral_key: (i % 3 != 2).then(|| Uuid::from_u128(0xabc0_0000 + n / 3)),
        patient_pseudonym: some(5, format!("{:064x}", n * 0x9e37_79b9)),
        age_band: some(7, BANDS[i % BANDS.len()].to_owned()),
        sex: some(4, SEXES[i % SEXES.len()].to_owned()),
        ethnicity_code: some(6, ["A", "B", "Z", "S"][i % 4].to_owned()),
        imd_decile: (!i.is_multiple_of(11)).then_some((i % 10) as u8 + 1),
        practice_ods: some(9, format!("Y{:05}", i % 97)),
        route: some(
            3,
            ["process-message", "self-referral", "telephone"][i % 3].to_owned(),
        ),
        data: json!({
            "priority": (["routine", "urgent"][i % 2]),
            "rule_id": format!("R-{i}"),
            "score": i as f64 / 4.0,
            "note": "comma, \"quote\" and ü",
            "list": [i, i + 1],
        }),
    }
}

fn text(s: &str) -> Field {
    Field::Str(s.to_owned())
}

fn opt_text(s: Option<&String>) -> Field {
    s.map_or(Field::Null, |s| text(s))
}

/// The row the reader should return for an event.
fn expected_row(e: &AnalystEvent) -> Row {
    let fields = vec![
        text(&e.event_id.to_string()),
        text(&e.event_type),
        Field::TimestampMicros(e.occurred_at.timestamp_micros()),
        Field::TimestampMicros(e.recorded_at.timestamp_micros()),
        Field::Long(i64::from(e.schema_version)),
        e.referral_key.map_or(Field::Null, |k| text(&k.to_string())),
        opt_text(e.patient_pseudonym.as_ref()),
        opt_text(e.age_band.as_ref()),
        opt_text(e.sex.as_ref()),
        opt_text(e.ethnicity_code.as_ref()),
        e.imd_decile
            .map_or(Field::Null, |d| Field::Int(i32::from(d))),
        opt_text(e.practice_ods.as_ref()),
        opt_text(e.route.as_ref()),
        text(&e.data.to_string()),
    ];
    crate::CSV_COLUMNS
        .iter()
        .map(|c| (*c).to_owned())
        .zip(fields)
        .collect()
}

fn read_rows(path: &Path) -> TestResult<Vec<Row>> {
    let reader = SerializedFileReader::new(File::open(path)?)?;
    let mut rows = Vec::new();
    for row in reader.get_row_iter(None)? {
        let row = row?;
        rows.push(
            row.get_column_iter()
                .map(|(name, field)| (name.clone(), field.clone()))
                .collect(),
        );
    }
    Ok(rows)
}

fn key_value(reader: &SerializedFileReader<File>, key: &str) -> Option<String> {
    reader
        .metadata()
        .file_metadata()
        .key_value_metadata()?
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.clone())
}

#[test]
fn events_round_trip_over_several_row_groups() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("events.parquet");
    let events: Vec<AnalystEvent> = (0..1_000).map(event).collect();
    // Nulls really are exercised in every optional column.
    assert!(events.iter().any(|e| e.referral_key.is_none()));
    assert!(events.iter().any(|e| e.imd_decile.is_none()));
    assert!(events.iter().any(|e| e.practice_ods.is_none()));

    let mut writer = EventWriter::with_row_group_rows(&path, 128)?;
    assert_eq!(writer.path(), path);
    for e in &events {
        writer.write(e)?;
    }
    assert_eq!(writer.finish()?, 1_000);

    let reader = SerializedFileReader::new(File::open(&path)?)?;
    let meta = reader.metadata();
    assert_eq!(meta.file_metadata().num_rows(), 1_000);
    // 7 full groups of 128 and a last one of 104.
    assert_eq!(meta.num_row_groups(), 8);
    assert!((0..7).all(|g| meta.row_group(g).num_rows() == 128));
    assert_eq!(meta.row_group(7).num_rows(), 104);
    assert!(
        meta.row_group(0)
            .columns()
            .iter()
            .all(|c| c.compression() == parquet::basic::Compression::SNAPPY)
    );
    assert_eq!(
        key_value(&reader, SCHEMA_VERSION_KEY),
        Some(ANALYST_SCHEMA_VERSION.to_string())
    );

    let rows = read_rows(&path)?;
    assert_eq!(rows.len(), events.len());
    for (i, (row, e)) in rows.iter().zip(&events).enumerate() {
        assert_eq!(row, &expected_row(e), "row {i}");
    }
    // The JSON column parses back to the same value.
    let Some((_, Field::Str(data))) = rows[10].last() else {
        panic!("data is not text: {:?}", rows[10].last());
    };
    assert_eq!(serde_json::from_str::<Value>(data)?, events[10].data);
    Ok(())
}

#[test]
fn event_schema_has_the_documented_types() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("events.parquet");
    let mut writer = EventWriter::create(&path)?;
    writer.write(&event(1))?;
    assert_eq!(writer.finish()?, 1);

    let reader = SerializedFileReader::new(File::open(&path)?)?;
    let schema = reader.metadata().file_metadata().schema_descr();
    let names: Vec<&str> = schema.columns().iter().map(|c| c.name()).collect();
    assert_eq!(names, crate::CSV_COLUMNS);
    let micros = Some(LogicalType::timestamp(true, TimeUnit::MICROS));
    for (i, name) in crate::CSV_COLUMNS.iter().enumerate() {
        let col = schema.column(i);
        let (physical, logical) = match *name {
            "occurred_at" | "recorded_at" => (PhysicalType::INT64, micros.clone()),
            "schema_version" => (PhysicalType::INT64, None),
            "imd_decile" => (PhysicalType::INT32, None),
            "data" => (PhysicalType::BYTE_ARRAY, Some(LogicalType::Json)),
            _ => (PhysicalType::BYTE_ARRAY, Some(LogicalType::String)),
        };
        assert_eq!(col.physical_type(), physical, "{name}");
        assert_eq!(col.logical_type_ref(), logical.as_ref(), "{name}");
        let required = matches!(
            *name,
            "event_id" | "event_type" | "occurred_at" | "recorded_at" | "schema_version" | "data"
        );
        let repetition = col.self_type().get_basic_info().repetition();
        let expected = if required {
            Repetition::REQUIRED
        } else {
            Repetition::OPTIONAL
        };
        assert_eq!(repetition, expected, "{name}");
    }
    Ok(())
}

#[test]
fn an_empty_stream_is_a_readable_file_with_no_rows() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("none.parquet");
    assert_eq!(EventWriter::create(&path)?.finish()?, 0);
    let reader = SerializedFileReader::new(File::open(&path)?)?;
    assert_eq!(reader.metadata().file_metadata().num_rows(), 0);
    assert_eq!(read_rows(&path)?.len(), 0);
    Ok(())
}

fn row(values: Vec<(&str, Value)>) -> Map<String, Value> {
    values.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

/// A view with one column of each kind, nulls among them.
fn sample_table() -> Table {
    let columns = [
        "pathway",
        "imd_decile",
        "referrals",
        "median_days",
        "dna_rate",
        "suppressed",
        "mixed",
        "nothing",
    ];
    Table {
        view: "waits".to_owned(),
        split: "imd_decile".to_owned(),
        columns: columns.iter().map(|c| (*c).to_owned()).collect(),
        rows: vec![
            row(vec![
                ("pathway", json!("fcp")),
                ("imd_decile", json!("1")),
                ("referrals", json!(12)),
                ("median_days", json!(3)),
                ("dna_rate", json!(0.125)),
                ("suppressed", json!(false)),
                ("mixed", json!(4)),
                ("nothing", Value::Null),
            ]),
            row(vec![
                ("pathway", json!("rehab, group")),
                ("imd_decile", json!("unknown")),
                ("referrals", json!(3)),
                ("median_days", json!(2.5)),
                ("dna_rate", Value::Null),
                ("suppressed", json!(true)),
                ("mixed", json!("x")),
                ("nothing", Value::Null),
            ]),
            // A row missing some columns altogether: nulls.
            row(vec![
                ("pathway", Value::Null),
                ("referrals", json!(-7)),
                ("mixed", json!(true)),
            ]),
        ],
    }
}

#[test]
fn a_view_round_trips_with_types_from_its_values() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("waits.parquet");
    let table = sample_table();
    assert_eq!(write_table(&path, &table)?, 3);

    let reader = SerializedFileReader::new(File::open(&path)?)?;
    assert_eq!(key_value(&reader, VIEW_KEY).as_deref(), Some("waits"));
    assert_eq!(key_value(&reader, SPLIT_KEY).as_deref(), Some("imd_decile"));
    let schema = reader.metadata().file_metadata().schema_descr();
    assert_eq!(schema.name(), "waits");
    let types: Vec<(&str, PhysicalType, Option<&LogicalType>, Repetition)> = schema
        .columns()
        .iter()
        .map(|c| {
            (
                c.name(),
                c.physical_type(),
                c.logical_type_ref(),
                c.self_type().get_basic_info().repetition(),
            )
        })
        .collect();
    let string = Some(&LogicalType::String);
    let o = Repetition::OPTIONAL;
    assert_eq!(
        types,
        vec![
            ("pathway", PhysicalType::BYTE_ARRAY, string, o),
            ("imd_decile", PhysicalType::BYTE_ARRAY, string, o),
            ("referrals", PhysicalType::INT64, None, o),
            ("median_days", PhysicalType::DOUBLE, None, o),
            ("dna_rate", PhysicalType::DOUBLE, None, o),
            ("suppressed", PhysicalType::BOOLEAN, None, o),
            ("mixed", PhysicalType::BYTE_ARRAY, string, o),
            ("nothing", PhysicalType::BYTE_ARRAY, string, o),
        ]
    );

    let rows = read_rows(&path)?;
    let values: Vec<Vec<Field>> = rows
        .into_iter()
        .map(|r| r.into_iter().map(|(_, f)| f).collect())
        .collect();
    assert_eq!(
        values,
        vec![
            vec![
                text("fcp"),
                text("1"),
                Field::Long(12),
                Field::Double(3.0),
                Field::Double(0.125),
                Field::Bool(false),
                text("4"),
                Field::Null,
            ],
            vec![
                text("rehab, group"),
                text("unknown"),
                Field::Long(3),
                Field::Double(2.5),
                Field::Null,
                Field::Bool(true),
                text("x"),
                Field::Null,
            ],
            vec![
                Field::Null,
                Field::Null,
                Field::Long(-7),
                Field::Null,
                Field::Null,
                Field::Null,
                text("true"),
                Field::Null,
            ],
        ]
    );
    Ok(())
}

#[test]
fn a_view_with_no_rows_keeps_its_columns() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("empty.parquet");
    let mut table = sample_table();
    table.rows.clear();
    assert_eq!(write_table(&path, &table)?, 0);
    let reader = SerializedFileReader::new(File::open(&path)?)?;
    let schema = reader.metadata().file_metadata().schema_descr();
    assert_eq!(schema.num_columns(), table.columns.len());
    assert_eq!(reader.metadata().file_metadata().num_rows(), 0);
    Ok(())
}

#[test]
fn a_missing_directory_is_an_error_naming_the_path() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("no-such-dir").join("events.parquet");

    let err = EventWriter::create(&path).unwrap_err();
    assert!(matches!(err, Error::ParquetIo { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(err.source().is_some());

    let err = write_table(&path, &sample_table()).unwrap_err();
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
    assert!(!path.exists());
    Ok(())
}

/// Writes `/tmp/mskflow-parquet-check/{events,waits}.parquet` for checking
/// with other readers (pyarrow, DuckDB):
/// `cargo test -p mskflow-analytics -- --ignored write_files_for_other_readers`.
#[test]
#[ignore = "writes into /tmp for a manual check with other Parquet readers"]
fn write_files_for_other_readers() -> TestResult {
    let dir = std::env::temp_dir().join("mskflow-parquet-check");
    std::fs::create_dir_all(&dir)?;
    let mut writer = EventWriter::with_row_group_rows(dir.join("events.parquet"), 256)?;
    for i in 0..1_000 {
        writer.write(&event(i))?;
    }
    assert_eq!(writer.finish()?, 1_000);
    assert_eq!(write_table(dir.join("waits.parquet"), &sample_table())?, 3);
    Ok(())
}
