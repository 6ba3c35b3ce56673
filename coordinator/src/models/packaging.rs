//! Building, signing and describing model bundles — the offline half of the registry, used by
//! `outpostctl bundle create|sign|inspect` and `outpostctl key` (so an air-gapped site can keep
//! its signing key off every networked machine).
//!
//! A bundle is only built from a model this runtime can load, whose declared schema becomes
//! the manifest's, and which reproduces its reference outputs (`--reference`, or
//! `<model>.reference.json` beside it) — so a version that cannot serve is never packaged.
//! The baseline dataset is a CSV with a header: every column except `--label`/`--segment`
//! ones is a feature, in the order the model takes them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use outpost_shared::Model;
use outpost_shared::bundle::{
    Baseline, Bundle, Manifest, ModelFile, NanPolicy, TensorSchema, Training, sha256_hex,
};
use outpost_shared::protocol::keys::SigningKey;
use outpost_shared::reference::Reference;

/// Why a bundle cannot be built or a key used.
#[derive(Debug, thiserror::Error)]
pub enum PackagingError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Bundle(#[from] outpost_shared::bundle::BundleError),
}

fn read(path: &Path) -> Result<Vec<u8>, PackagingError> {
    std::fs::read(path).map_err(|source| PackagingError::Read { path: path.to_owned(), source })
}

/// A table read from a CSV file: header names and rows of numbers (empty cell or `nan` = NaN).
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<f64>>,
    /// Raw text of every cell, for non-numeric columns (segments).
    pub text: Vec<Vec<String>>,
    pub sha256: String,
}

impl Table {
    /// Reads a CSV file with a header row. Numbers that do not parse become NaN in `rows`;
    /// callers that need numbers check the columns they use with [`Table::numeric`].
    pub fn read(path: &Path) -> Result<Table, PackagingError> {
        Table::parse(&read(path)?, &path.display().to_string())
    }

    /// Parses CSV bytes; `source` names them in errors.
    pub fn parse(bytes: &[u8], source: &str) -> Result<Table, PackagingError> {
        struct Shown<'a>(&'a str);
        impl Shown<'_> {
            fn display(&self) -> &str {
                self.0
            }
        }
        let path = Shown(source);
        let sha256 = sha256_hex(bytes);
        let mut reader = csv::ReaderBuilder::new().has_headers(true).flexible(true).from_reader(bytes);
        let columns: Vec<String> = reader
            .headers()
            .map_err(|e| PackagingError::Invalid(format!("{}: {e}", path.display())))?
            .iter()
            .map(|h| h.trim().to_owned())
            .collect();
        if columns.is_empty() || columns.iter().any(String::is_empty) {
            return Err(PackagingError::Invalid(format!(
                "{}: the header row names no columns or an empty one",
                path.display()
            )));
        }
        let (mut rows, mut text) = (Vec::new(), Vec::new());
        for (i, record) in reader.records().enumerate() {
            let record = record.map_err(|e| PackagingError::Invalid(format!("{}: {e}", path.display())))?;
            if record.len() != columns.len() {
                return Err(PackagingError::Invalid(format!(
                    "{} line {}: {} cells, the header has {}",
                    path.display(),
                    i + 2,
                    record.len(),
                    columns.len()
                )));
            }
            rows.push(record.iter().map(|c| parse_cell(c).unwrap_or(f64::NAN)).collect());
            text.push(record.iter().map(|c| c.trim().to_owned()).collect());
        }
        if rows.is_empty() {
            return Err(PackagingError::Invalid(format!("{}: no data rows", path.display())));
        }
        Ok(Table { columns, rows, text, sha256 })
    }

    /// The index of a named column.
    pub fn column(&self, name: &str) -> Result<usize, PackagingError> {
        self.columns.iter().position(|c| c == name).ok_or_else(|| {
            PackagingError::Invalid(format!("no column `{name}` (columns: {})", self.columns.join(", ")))
        })
    }

    /// Checks that a column holds only numbers (empty cells and `nan` count as missing).
    pub fn numeric(&self, column: usize) -> Result<(), PackagingError> {
        for (i, row) in self.text.iter().enumerate() {
            if parse_cell(&row[column]).is_none() {
                return Err(PackagingError::Invalid(format!(
                    "column `{}` row {}: `{}` is not a number",
                    self.columns[column],
                    i + 1,
                    row[column]
                )));
            }
        }
        Ok(())
    }

    /// The feature columns: all but `excluded`.
    pub fn features(&self, excluded: &[usize]) -> Vec<usize> {
        (0..self.columns.len()).filter(|i| !excluded.contains(i)).collect()
    }
}

fn parse_cell(cell: &str) -> Option<f64> {
    let cell = cell.trim();
    if cell.is_empty() || cell.eq_ignore_ascii_case("nan") {
        return Some(f64::NAN);
    }
    cell.parse::<f64>().ok()
}

/// The number of features a model's single 2-D float input takes (`[N, F]`).
pub fn feature_count(model: &Model) -> Result<usize, PackagingError> {
    let inputs = &model.signature().inputs;
    match inputs.as_slice() {
        [input] if input.datatype.is_float() && input.shape.len() == 2 => match input.shape[1] {
            outpost_shared::Dim::Fixed(n) => Ok(n),
            _ => Err(PackagingError::Invalid(format!("input `{}` has no fixed feature count", input.name))),
        },
        _ => Err(PackagingError::Invalid(
            "tabular datasets need a model with one 2-D float input [N, features]".into(),
        )),
    }
}

/// What `bundle create` (and `model push`) is given.
#[derive(Debug, Clone, Default)]
pub struct BuildSpec {
    pub model: PathBuf,
    pub name: String,
    pub version: String,
    pub baseline: Option<PathBuf>,
    /// Columns of the baseline file that are not features.
    pub exclude: Vec<String>,
    pub reference: Option<PathBuf>,
    pub card: Option<PathBuf>,
    pub metadata: BTreeMap<String, String>,
    pub hyperparameters: BTreeMap<String, String>,
    pub training_date: Option<String>,
    pub dataset_sha256: Option<String>,
    pub parent_version: Option<String>,
    pub nan_policy: NanPolicy,
}

/// Parses `k=v` pairs.
pub fn parse_pairs(pairs: &[String], what: &str) -> Result<BTreeMap<String, String>, PackagingError> {
    pairs
        .iter()
        .map(|p| {
            p.split_once('=')
                .filter(|(k, _)| !k.trim().is_empty())
                .map(|(k, v)| (k.trim().to_owned(), v.to_owned()))
                .ok_or_else(|| PackagingError::Invalid(format!("{what} `{p}` must look like key=value")))
        })
        .collect()
}

/// Builds an unsigned bundle and says how the model was checked.
pub fn build(spec: &BuildSpec, now_secs: u64) -> Result<(Bundle, String), PackagingError> {
    let bytes = read(&spec.model)?;
    let model = Model::load_bytes(&bytes, None)
        .map_err(|e| PackagingError::Invalid(format!("{}: {e}", spec.model.display())))?;
    let reference_path = spec.reference.clone().or_else(|| {
        let beside = Reference::path_beside(&spec.model);
        beside.is_file().then_some(beside)
    });
    let (reference, evidence) = match reference_path {
        Some(path) => {
            let reference = Reference::load(&path).map_err(|e| PackagingError::Invalid(e.to_string()))?;
            let report = reference.verify(&model).map_err(|e| {
                PackagingError::Invalid(format!("the model does not reproduce {}: {e}", path.display()))
            })?;
            let n: usize = report.outputs.iter().map(|o| o.1).sum();
            (Some(reference), format!("reproduces {n} reference values from {}", path.display()))
        }
        None => (None, "no reference outputs: devices will only check that it runs".to_owned()),
    };
    let baseline = match &spec.baseline {
        None => None,
        Some(path) => {
            let table = Table::read(path)?;
            let excluded = spec.exclude.iter().map(|c| table.column(c)).collect::<Result<Vec<_>, _>>()?;
            let features = table.features(&excluded);
            let expected = feature_count(&model)?;
            if features.len() != expected {
                return Err(PackagingError::Invalid(format!(
                    "{} has {} feature columns but the model takes {expected}; name the other columns with --label/--exclude",
                    path.display(),
                    features.len()
                )));
            }
            for &f in &features {
                table.numeric(f)?;
            }
            let names: Vec<String> = features.iter().map(|&f| table.columns[f].clone()).collect();
            let rows: Vec<Vec<f64>> =
                table.rows.iter().map(|r| features.iter().map(|&f| r[f]).collect()).collect();
            Some(
                Baseline::compute(&names, &rows, &table.sha256)
                    .map_err(|e| PackagingError::Invalid(e.to_string()))?,
            )
        }
    };
    let card = match &spec.card {
        None => None,
        Some(path) => Some(
            String::from_utf8(read(path)?)
                .map_err(|_| PackagingError::Invalid(format!("{} is not UTF-8 text", path.display())))?,
        ),
    };
    let (inputs, outputs) = TensorSchema::of(model.signature());
    if spec.nan_policy == NanPolicy::Allow && !model.signature().inputs.iter().any(|i| i.datatype.is_float())
    {
        return Err(PackagingError::Invalid("--nan-policy allow needs a float input".into()));
    }
    let manifest = Manifest {
        name: spec.name.clone(),
        version: spec.version.clone(),
        created_at: now_secs,
        model: ModelFile { sha256: String::new(), size: 0 },
        inputs,
        outputs,
        nan_policy: spec.nan_policy,
        training: Training {
            date: spec.training_date.clone(),
            dataset_sha256: spec.dataset_sha256.clone(),
            hyperparameters: spec.hyperparameters.clone(),
            parent_version: spec.parent_version.clone(),
        },
        metadata: spec.metadata.clone(),
        baseline,
        reference,
        card,
        encryption: None,
    };
    Ok((Bundle::build(manifest, bytes)?, evidence))
}

/// Reads a PKCS#8 Ed25519 key file.
pub fn read_key(path: &Path) -> Result<SigningKey, PackagingError> {
    let bytes = read(path)?;
    SigningKey::from_pkcs8(&bytes).map_err(|e| PackagingError::Invalid(format!("{}: {e}", path.display())))
}

/// Generates a signing key into `path` (0600); refuses to overwrite.
pub fn generate_key(path: &Path) -> Result<SigningKey, PackagingError> {
    if path.exists() {
        return Err(PackagingError::Invalid(format!(
            "{} exists; refusing to overwrite a key",
            path.display()
        )));
    }
    let (key, pkcs8) = SigningKey::generate().map_err(|e| PackagingError::Invalid(e.to_string()))?;
    outpost_shared::files::write_private(path, &pkcs8)
        .map_err(|source| PackagingError::Write { path: path.to_owned(), source })?;
    Ok(key)
}

/// A human-readable description of a bundle, every manifest field included.
pub fn describe(bundle: &Bundle) -> String {
    use std::fmt::Write;
    let m = &bundle.manifest;
    let mut out = String::new();
    let _ = writeln!(out, "bundle      {} (format {})", m.id(), outpost_shared::bundle::FORMAT_VERSION);
    let _ = writeln!(out, "created     {}", utc(m.created_at));
    let _ = writeln!(out, "model       sha256 {} ({} bytes)", m.model.sha256, m.model.size);
    if let Some(e) = &m.encryption {
        let _ = writeln!(
            out,
            "encrypted   {} to bundle key {} (the clear model: sha256 {}, {} bytes)",
            e.cipher, e.key_id, e.plain.sha256, e.plain.size
        );
    }
    let schema = |t: &TensorSchema| format!("{} {} {:?}", t.name, t.datatype, t.shape);
    for t in &m.inputs {
        let _ = writeln!(out, "input       {}", schema(t));
    }
    for t in &m.outputs {
        let _ = writeln!(out, "output      {}", schema(t));
    }
    let _ = writeln!(out, "nan policy  {:?}", m.nan_policy);
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let _ = writeln!(
        out,
        "training    date {}, dataset sha256 {}, parent {}",
        opt(&m.training.date),
        opt(&m.training.dataset_sha256),
        opt(&m.training.parent_version)
    );
    for (k, v) in &m.training.hyperparameters {
        let _ = writeln!(out, "  param     {k} = {v}");
    }
    for (k, v) in &m.metadata {
        let _ = writeln!(out, "meta        {k} = {v}");
    }
    match &m.baseline {
        Some(b) => {
            let _ = writeln!(
                out,
                "baseline    {} rows (sha256 {}), sample of {} rows",
                b.rows,
                b.source_sha256,
                b.sample.len()
            );
            for f in &b.features {
                let q = |p: usize| f.quantiles.get(p).copied().unwrap_or(f64::NAN);
                let _ = writeln!(
                    out,
                    "  {:<24} mean {:>12.6} std {:>12.6} min {:>12.6} p50 {:>12.6} max {:>12.6} missing {}",
                    f.name,
                    f.mean,
                    f.std,
                    f.min,
                    q(50),
                    f.max,
                    f.missing
                );
            }
        }
        None => {
            let _ = writeln!(out, "baseline    none (no drift detection)");
        }
    }
    match &m.reference {
        Some(r) => {
            let _ = writeln!(
                out,
                "reference   {} inputs, {} outputs from {} (tolerance abs {}, rel {})",
                r.inputs.len(),
                r.outputs.len(),
                r.producer.as_deref().unwrap_or("unknown runtime"),
                r.tolerance.abs,
                r.tolerance.rel
            );
        }
        None => {
            let _ = writeln!(out, "reference   none");
        }
    }
    for s in &bundle.signatures {
        let _ = writeln!(out, "signature   key {}", s.key_id_hex());
    }
    if bundle.signatures.is_empty() {
        let _ = writeln!(out, "signature   none (unsigned)");
    }
    match &m.card {
        Some(card) => {
            let _ = writeln!(out, "card\n{card}");
        }
        None => {
            let _ = writeln!(out, "card        none");
        }
    }
    out
}

/// Unix seconds as `YYYY-MM-DDTHH:MM:SSZ` (proleptic Gregorian, UTC).
pub fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates_are_civil() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_795_660_156), "2026-11-26T02:29:16Z");
    }

    #[test]
    fn csv_tables_name_their_problems() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.csv");
        std::fs::write(&path, "a,b,label\n1,2,x\n3,,y\n").unwrap();
        let t = Table::read(&path).unwrap();
        assert_eq!(t.columns, ["a", "b", "label"]);
        assert!(t.rows[1][1].is_nan());
        t.numeric(1).unwrap();
        assert!(t.numeric(2).unwrap_err().to_string().contains("`x` is not a number"));
        assert_eq!(t.features(&[t.column("label").unwrap()]), [0, 1]);
        assert!(t.column("nope").unwrap_err().to_string().contains("columns: a, b, label"));
        std::fs::write(&path, "a,b\n1\n").unwrap();
        assert!(Table::read(&path).unwrap_err().to_string().contains("line 2"));
        std::fs::write(&path, "a,b\n").unwrap();
        assert!(Table::read(&path).unwrap_err().to_string().contains("no data rows"));
    }

    #[test]
    fn pairs_must_be_key_value() {
        assert_eq!(parse_pairs(&["a=1=2".into()], "meta").unwrap()["a"], "1=2");
        assert!(parse_pairs(&["a".into()], "meta").is_err());
        assert!(parse_pairs(&["=1".into()], "meta").is_err());
    }
}
