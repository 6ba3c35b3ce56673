//! The tables `outpostctl` prints, all alike: one header row, the name first, each column as
//! wide as its widest cell, numbers right-aligned, the `-o wide` columns only when asked, and
//! control characters in cells shown escaped (cells hold what devices and users sent).

/// One table being filled.
pub(super) struct Table {
    columns: Vec<Column>,
    rows: Vec<Vec<String>>,
}

struct Column {
    name: &'static str,
    /// Right-aligned (numbers).
    right: bool,
    /// Shown only with `-o wide`.
    wide: bool,
}

impl Table {
    pub(super) fn new() -> Table {
        Table { columns: Vec::new(), rows: Vec::new() }
    }

    /// A left-aligned column.
    pub(super) fn col(mut self, name: &'static str) -> Table {
        self.columns.push(Column { name, right: false, wide: false });
        self
    }

    /// A right-aligned column (counts, sizes).
    pub(super) fn num(mut self, name: &'static str) -> Table {
        self.columns.push(Column { name, right: true, wide: false });
        self
    }

    /// A column shown only with `-o wide`.
    pub(super) fn wide(mut self, name: &'static str) -> Table {
        self.columns.push(Column { name, right: false, wide: true });
        self
    }

    /// One row: a cell per column, in the order the columns were added (wide ones included).
    pub(super) fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.columns.len(), "a cell per column");
        self.rows.push(cells.iter().map(|c| printable(c)).collect());
    }

    /// The lines of the table: header first; wide columns only when `wide`.
    pub(super) fn lines(&self, wide: bool) -> Vec<String> {
        let shown: Vec<usize> = (0..self.columns.len()).filter(|&i| wide || !self.columns[i].wide).collect();
        let width = |i: usize| {
            self.rows
                .iter()
                .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
                .chain([self.columns[i].name.len()])
                .max()
                .unwrap_or(0)
        };
        let widths: Vec<usize> = shown.iter().map(|&i| width(i)).collect();
        let line = |cells: Vec<&str>| {
            let mut out = String::new();
            for (n, (&i, cell)) in shown.iter().zip(cells).enumerate() {
                let last = n + 1 == shown.len();
                let pad = widths[n].saturating_sub(cell.chars().count());
                if n > 0 {
                    out.push_str("  ");
                }
                if self.columns[i].right {
                    out.push_str(&" ".repeat(pad));
                    out.push_str(cell);
                } else {
                    out.push_str(cell);
                    if !last {
                        out.push_str(&" ".repeat(pad));
                    }
                }
            }
            out.trim_end().to_owned()
        };
        let mut out = vec![line(shown.iter().map(|&i| self.columns[i].name).collect())];
        for row in &self.rows {
            out.push(line(shown.iter().map(|&i| row.get(i).map_or("", String::as_str)).collect()));
        }
        out
    }

    /// Prints the table (`-o wide` decides the extra columns).
    pub(super) fn print(&self, wide: bool) {
        for line in self.lines(wide) {
            say!("{line}");
        }
    }
}

/// `text` with control characters escaped (`\u{1b}`, `\n`): safe to print on a terminal.
pub(super) fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Table {
        let mut t = Table::new().col("NAME").num("COUNT").wide("HASH").col("NOTE");
        t.row(vec!["a".into(), "7".into(), "abc".into(), "first".into()]);
        t.row(vec!["longer-name".into(), "1234".into(), "d".into(), "x\u{1b}[2Jy".into()]);
        t
    }

    #[test]
    fn columns_fit_their_widest_cell_and_numbers_align_right() {
        assert_eq!(
            sample().lines(false),
            vec![
                "NAME         COUNT  NOTE".to_owned(),
                "a                7  first".to_owned(),
                "longer-name   1234  x\\u{1b}[2Jy".to_owned(),
            ]
        );
    }

    #[test]
    fn wide_columns_show_only_when_asked() {
        let lines = sample().lines(true);
        assert_eq!(lines[0], "NAME         COUNT  HASH  NOTE");
        assert_eq!(lines[1], "a                7  abc   first");
    }

    #[test]
    fn an_empty_table_still_has_its_header() {
        let t = Table::new().col("A").col("B");
        assert_eq!(t.lines(false), vec!["A  B".to_owned()]);
    }
}
